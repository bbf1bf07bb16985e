//! The table of live connections, whatever engine serves them: shutdown
//! reaches every connection through it, and `run` waits on it until no
//! connection is left.

use crate::stats::Counters;
use crate::stream::Stream;
use crate::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::collections::HashMap;
use std::net::Shutdown;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Live connections, so that shutdown can reach each one. Holding an `Arc`
/// (not a raw fd) means a socket cannot be closed and its fd reused while
/// shutdown is working on it.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTable {
    streams: Mutex<Table>,
    emptied: Condvar,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    live: HashMap<u64, Entry>,
    /// Threads whose connection has ended, to be joined: joining is what
    /// makes "no connection thread is left" exact once `run` returns.
    finished: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Entry {
    stream: Arc<Stream>,
    thread: Option<JoinHandle<()>>,
    /// Its read side was shut down to free its slot.
    reclaimed: bool,
}

impl ConnectionTable {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Insert and remove leave the map consistent at every step.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, stream: Arc<Stream>, counters: &Counters) -> u64 {
        let mut table = self.lock();
        let id = table.next_id;
        table.next_id += 1;
        table.live.insert(
            id,
            Entry {
                stream,
                thread: None,
                reclaimed: false,
            },
        );
        // Updated under the lock so that `active` is 0 exactly when the table
        // is empty.
        counters.count_listed();
        id
    }

    /// Records the thread serving `id`, so that it can be joined (thread
    /// engine only: an event loop is joined by the server).
    pub(crate) fn attach(&self, id: u64, thread: JoinHandle<()>) {
        let mut table = self.lock();
        match table.live.get_mut(&id) {
            Some(entry) => entry.thread = Some(thread),
            // The connection was over before its thread was recorded.
            None => table.finished.push(thread),
        }
    }

    /// Threads whose connection has ended and that are not joined yet.
    #[cfg(test)]
    pub(crate) fn unjoined(&self) -> usize {
        self.lock().finished.len()
    }

    /// The number of live connections and the `active` counter, read under
    /// one lock: the model checks assert that they agree.
    #[cfg(all(test, shuttle))]
    pub(crate) fn live_and_active(&self, counters: &Counters) -> (usize, u64) {
        let table = self.lock();
        let active = counters.active.load(std::sync::atomic::Ordering::Relaxed);
        (table.live.len(), active)
    }

    pub(crate) fn remove(&self, id: u64, counters: &Counters) {
        let mut table = self.lock();
        if let Some(entry) = table.live.remove(&id) {
            counters.count_closed(None);
            table.finished.extend(entry.thread);
        }
        if table.live.is_empty() {
            self.emptied.notify_all();
        }
    }

    /// Shuts down `how` on every live connection. `Read` makes each blocked
    /// `read` return end of file, so its thread echoes what it already has
    /// and closes; `Both` also fails pending writes.
    pub(crate) fn shutdown_all(&self, how: Shutdown) {
        for entry in self.lock().live.values() {
            // Fails only if the peer is already gone, which is the goal anyway.
            let _ = entry.stream.socket.shutdown(how);
        }
    }

    /// Frees a slot for a waiting client: shuts down the read side of the
    /// connection idle longest, if it has been idle (nothing read, nothing
    /// left to write) for at least `min_idle`. Like shutdown, that makes
    /// its engine see end of file and close it with nothing lost. Returns
    /// whether one was reclaimed.
    ///
    /// While a reclaimed connection is still closing, its slot is on its
    /// way: reclaiming another then would end two connections for one
    /// waiting client (seen when its engine was slow to wake under load).
    pub(crate) fn reclaim_idlest(&self, min_idle: Duration) -> bool {
        let min_ms = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let now = crate::stream::now_ms();
        let mut table = self.lock();
        if table.live.values().any(|e| e.reclaimed) {
            return false;
        }
        let idlest = table
            .live
            .values_mut()
            .filter_map(|e| Some((e.stream.activity.idle_for(now)?, e)))
            .filter(|(idle, _)| *idle >= min_ms)
            .max_by_key(|(idle, _)| *idle);
        match idlest {
            Some((_, entry)) => {
                entry.reclaimed = true;
                let _ = entry.stream.socket.shutdown(Shutdown::Read);
                true
            }
            None => false,
        }
    }

    /// Joins the threads of connections that have ended. Each is past its
    /// last use of shared state, so this waits microseconds at most.
    pub(crate) fn reap(&self) {
        let finished = std::mem::take(&mut self.lock().finished);
        for thread in finished {
            if thread.join().is_err() {
                log::error!("a connection thread panicked");
            }
        }
    }

    /// Waits until no connection is left, at most `timeout`. Returns whether
    /// the table is empty.
    pub(crate) fn wait_until_empty(&self, timeout: Duration) -> bool {
        let deadline = crate::shutdown::deadline(timeout);
        let mut table = self.lock();
        while !table.live.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            table = self
                .emptied
                .wait_timeout(table, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use socket2::Socket;
    use std::os::unix::net::UnixStream;

    /// A live entry and the client end of its socket.
    fn admit(table: &ConnectionTable, counters: &Counters) -> (u64, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let stream = Arc::new(Stream::new(Socket::from(std::os::fd::OwnedFd::from(ours))));
        (table.insert(stream, counters), theirs)
    }

    /// One waiting client, one reclaim: while the reclaimed connection is
    /// still closing, no other is taken, however idle.
    #[test]
    fn one_reclaim_at_a_time() {
        let (table, counters) = (ConnectionTable::default(), Counters::default());
        let (_first, _a) = admit(&table, &counters);
        let (_second, _b) = admit(&table, &counters);
        assert!(table.reclaim_idlest(Duration::ZERO));
        assert!(
            !table.reclaim_idlest(Duration::ZERO),
            "a second connection reclaimed before the first closed"
        );
        // Whichever was taken, it closes; then the other may go.
        let reclaimed = table
            .lock()
            .live
            .iter()
            .find(|(_, e)| e.reclaimed)
            .map(|(&id, _)| id)
            .unwrap();
        table.remove(reclaimed, &counters);
        assert!(table.reclaim_idlest(Duration::ZERO));
    }

    /// Only a connection idle at least `min_idle`, and not one mid-echo.
    #[test]
    fn spares_the_recent_and_the_busy() {
        let (table, counters) = (ConnectionTable::default(), Counters::default());
        let (_id, _client) = admit(&table, &counters);
        assert!(!table.reclaim_idlest(Duration::from_secs(3600)));
        let stream = Arc::clone(&table.lock().live.values().next().unwrap().stream);
        stream.activity.received();
        assert!(!table.reclaim_idlest(Duration::ZERO), "reclaimed mid-echo");
        stream.activity.caught_up();
        assert!(table.reclaim_idlest(Duration::ZERO));
    }
}
