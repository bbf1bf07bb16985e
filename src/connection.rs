//! One connection, one thread: the stream type every stream transport (TCP,
//! Unix) is served through, the thread that serves it, and the table of live
//! connections that shutdown works through.

use crate::escape::escape;
use crate::limit::{Permit, SourceSlot};
use crate::server::Context;
use crate::stats::Counters;
use crate::Progress;
use socket2::{SockAddr, Socket};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Stack size of connection threads. `echo` keeps 1 KiB on the stack and its
/// bulk buffer on the heap, so a connection needs little: the TCP, Unix and
/// CLI suites (debug build, `--log-data` included) pass with 16 KiB, the
/// glibc minimum. 64 KiB leaves room for panic messages and log formatting;
/// untouched pages cost no memory.
pub(crate) const STACK_SIZE: usize = 64 * 1024;

/// `send(2)` flags: never raise SIGPIPE when the client has gone, so a library
/// user that did not ignore SIGPIPE is not killed by a vanished client. (On
/// Apple platforms socket2 sets `SO_NOSIGPIPE` on the socket instead.)
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: i32 = 0;

/// An accepted stream socket, TCP or Unix.
#[derive(Debug)]
pub(crate) struct Stream(Socket);

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_with_flags(buf, SEND_FLAGS)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Who is on the other end, for logs.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    Ip(SocketAddr),
    Local(String),
}

impl Peer {
    pub(crate) fn from_sockaddr(addr: &SockAddr) -> Peer {
        if let Some(ip) = addr.as_socket() {
            return Peer::Ip(ip);
        }
        #[cfg(unix)]
        if let Some(path) = addr.as_pathname() {
            return Peer::Local(path.display().to_string());
        }
        Peer::Local("unix client".to_owned())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(addr) => addr.fmt(f),
            Peer::Local(name) => f.write_str(name),
        }
    }
}

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
}

impl ConnectionTable {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Insert and remove leave the map consistent at every step.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, stream: Arc<Stream>, counters: &Counters) -> u64 {
        let mut table = self.lock();
        let id = table.next_id;
        table.next_id += 1;
        table.live.insert(
            id,
            Entry {
                stream,
                thread: None,
            },
        );
        // Updated under the lock so that `active` is 0 exactly when the table
        // is empty.
        Counters::add(&counters.active, 1);
        id
    }

    /// Records the thread serving `id`, so that it can be joined.
    fn attach(&self, id: u64, thread: JoinHandle<()>) {
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

    fn remove(&self, id: u64, counters: &Counters) {
        let mut table = self.lock();
        if let Some(entry) = table.live.remove(&id) {
            counters
                .active
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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
            let _ = entry.stream.0.shutdown(how);
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
        let deadline = Instant::now() + timeout;
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

/// Starts a thread that serves `socket` until the client is done. On error
/// (the OS refused a thread) the connection has been closed and its slot
/// freed.
pub(crate) fn spawn(
    socket: Socket,
    peer: Peer,
    ctx: &Arc<Context>,
    permit: Permit,
    source_slot: Option<SourceSlot>,
) -> io::Result<()> {
    let stream = Arc::new(Stream(socket));
    let id = ctx.table.insert(Arc::clone(&stream), &ctx.counters);
    let slot = Slot {
        id,
        stream: Some(stream),
        ctx: Arc::clone(ctx),
        _source_slot: source_slot,
        _permit: permit,
    };
    let thread = std::thread::Builder::new()
        .name("echo-conn".to_owned())
        .stack_size(STACK_SIZE)
        // If the spawn fails the closure, and with it `slot`, is dropped,
        // which closes the socket and frees the slot.
        .spawn(move || serve(slot, peer))?;
    ctx.table.attach(id, thread);
    Ok(())
}

/// Everything a connection holds, released in order when its thread ends:
/// the socket is closed before the slot is freed, so the connection limit
/// also bounds open file descriptors.
struct Slot {
    id: u64,
    stream: Option<Arc<Stream>>,
    ctx: Arc<Context>,
    _source_slot: Option<SourceSlot>,
    _permit: Permit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.stream.take());
        self.ctx.table.remove(self.id, &self.ctx.counters);
        // `_source_slot` and `_permit` are dropped after this, freeing the
        // slots last.
    }
}

fn serve(slot: Slot, peer: Peer) {
    let Some(stream) = slot.stream.as_deref() else {
        return;
    };
    let ctx = &slot.ctx;
    let timeouts = stream
        .0
        .set_read_timeout(ctx.settings.idle_timeout)
        .and_then(|()| stream.0.set_write_timeout(ctx.settings.write_timeout));
    if let Err(e) = timeouts {
        log::warn!("{peer}: cannot set timeouts: {e}");
        return;
    }
    log::debug!("{peer}: connected");
    let mut metered = Metered {
        stream,
        ctx,
        peer: &peer,
        last_op: Op::Read,
    };
    let result = match crate::echo_until_bulk(&mut metered) {
        Ok(Progress::Done(n)) => Ok(n),
        Ok(Progress::Bulk(n)) => bulk(&mut metered).map(|m| n + m),
        Err(e) => Err(e),
    };
    match result {
        Ok(n) => {
            // Half-close: everything read has been written back; now tell the
            // client we are done too.
            let _ = stream.0.shutdown(Shutdown::Write);
            log::debug!("{peer}: closed after echoing {n} bytes");
        }
        Err(e) if is_timeout(&e) && metered.last_op == Op::Read => {
            Counters::add(&ctx.counters.idle_timeouts, 1);
            log::debug!("{peer}: idle timeout, closing");
        }
        Err(e) if is_timeout(&e) => {
            Counters::add(&ctx.counters.write_timeouts, 1);
            log::debug!("{peer}: not reading its echo (write timeout), closing");
        }
        // Resets and broken pipes are the client's business; not worth more
        // than a debug line.
        Err(e) => log::debug!("{peer}: {e}"),
    }
}

/// `splice` is used only while at most this many connections are open.
/// Measured (echo-bench bulk, 3 alternating rounds): one connection gains
/// about 18% with `splice`, 50 busy connections lose about 20% (more pipes,
/// more page references in flight), so it is kept for the few-streams case.
#[cfg(target_os = "linux")]
const SPLICE_MAX_ACTIVE: u64 = 8;

/// The rest of a connection that sends in bulk: `splice` on Linux when few
/// connections are open, unless disabled or data is being logged (logging
/// needs the bytes in user space); else the portable loop, large buffer.
fn bulk(metered: &mut Metered<'_>) -> io::Result<u64> {
    #[cfg(target_os = "linux")]
    if metered.ctx.settings.splice
        && !metered.ctx.settings.log_data
        && metered
            .ctx
            .counters
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
            <= SPLICE_MAX_ACTIVE
    {
        let counters = &metered.ctx.counters;
        let spliced = crate::splice::echo(&metered.stream.0, |n| {
            Counters::add(&counters.bytes_echoed, n as u64)
        });
        match spliced {
            Ok(n) => return Ok(n),
            // Nothing consumed yet: the portable loop takes over.
            Err((_, e)) if e.kind() == ErrorKind::Unsupported => {}
            Err((side, e)) => {
                metered.last_op = match side {
                    crate::splice::Side::Read => Op::Read,
                    crate::splice::Side::Write => Op::Write,
                };
                return Err(e);
            }
        }
    }
    crate::echo_with_buffer(metered, &mut vec![0u8; crate::DEFAULT_BUFFER_SIZE])
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// The stream as `echo` sees it: counts echoed bytes, logs received data
/// when asked to, and remembers which operation failed last.
struct Metered<'a> {
    stream: &'a Stream,
    ctx: &'a Context,
    peer: &'a Peer,
    last_op: Op,
}

impl Read for Metered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.last_op = Op::Read;
        let n = { self.stream }.read(buf)?;
        if self.ctx.settings.log_data && n > 0 {
            log::info!("{} sent {n} bytes: \"{}\"", self.peer, escape(&buf[..n]));
        }
        Ok(n)
    }
}

impl Write for Metered<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.last_op = Op::Write;
        let n = { self.stream }.write(buf)?;
        Counters::add(&self.ctx.counters.bytes_echoed, n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A library user that never ignored SIGPIPE must not be killed when the
    /// server writes to a connection that can no longer be written to.
    #[test]
    fn writes_never_raise_sigpipe() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let stream = Stream(Socket::from(listener.accept().unwrap().0));
        stream.0.shutdown(Shutdown::Write).unwrap();
        // SAFETY: swaps the process's SIGPIPE action for the default
        // (terminate) and back; every other write in this process passes
        // MSG_NOSIGNAL too, so the window harms no other test.
        let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let result = { &stream }.write(b"x");
        unsafe { libc::signal(libc::SIGPIPE, previous) };
        assert_eq!(result.unwrap_err().kind(), ErrorKind::BrokenPipe);
    }
}
