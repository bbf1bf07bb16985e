//! Connection threads: still one thread per live connection, but a thread
//! whose connection ended waits a while for the next one instead of exiting.
//! Creating a thread (stack mapping, TLS, scheduler bookkeeping) is the
//! largest fixed cost of a short connection; reusing idle threads removes it
//! from the accept path. Idle threads are bounded in number and in time.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a connection thread runs: serving one connection.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Idle threads kept at most; more exit when their connection ends.
const MAX_IDLE: usize = 64;
/// How long an idle thread waits for a connection before exiting.
const IDLE_KEEP: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Workers {
    state: Mutex<State>,
    job_ready: Condvar,
    stack_size: usize,
}

#[derive(Default)]
struct State {
    /// Jobs handed to idle threads, not yet picked up.
    queue: VecDeque<Job>,
    /// Idle threads not yet promised a job. Always
    /// `threads waiting in `next_job` - queue.len()`.
    waiting: usize,
    shutdown: bool,
    next_id: u64,
    threads: HashMap<u64, JoinHandle<()>>,
    /// Threads that have left their loop, to be joined.
    exited: Vec<u64>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queued", &self.queue.len())
            .field("waiting", &self.waiting)
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl Workers {
    pub(crate) fn new(stack_size: usize) -> Arc<Workers> {
        Arc::new(Workers {
            state: Mutex::new(State::default()),
            job_ready: Condvar::new(),
            stack_size,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `job` on an idle thread, or on a new one. On error (the OS
    /// refused a thread) `job` has been dropped without running.
    pub(crate) fn run(self: &Arc<Self>, job: Job) -> io::Result<()> {
        let mut state = self.lock();
        if state.waiting > 0 {
            state.waiting -= 1;
            state.queue.push_back(job);
            drop(state);
            self.job_ready.notify_one();
            return Ok(());
        }
        let id = state.next_id;
        state.next_id += 1;
        let exited = std::mem::take(&mut state.exited);
        let to_join = take_handles(&mut state, exited);
        drop(state);
        join(to_join);

        let workers = Arc::clone(self);
        let handle = thread::Builder::new()
            .name("echo-conn".to_owned())
            .stack_size(self.stack_size)
            .spawn(move || workers.work(id, job))?;
        self.lock().threads.insert(id, handle);
        Ok(())
    }

    fn work(&self, id: u64, first: Job) {
        let mut job = first;
        loop {
            job();
            match self.next_job() {
                Some(next) => job = next,
                None => break,
            }
        }
        self.lock().exited.push(id);
    }

    /// Waits for the next job as an idle thread. `None`: exit instead.
    fn next_job(&self) -> Option<Job> {
        let mut state = self.lock();
        if state.shutdown || state.waiting >= MAX_IDLE {
            return None;
        }
        state.waiting += 1;
        let deadline = Instant::now() + IDLE_KEEP;
        loop {
            // A queued job was promised to some waiting thread: `run`
            // already took one off `waiting` for it.
            if let Some(job) = state.queue.pop_front() {
                return Some(job);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.shutdown || left.is_zero() {
                state.waiting -= 1;
                return None;
            }
            state = self
                .job_ready
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Tells idle threads to exit and joins every thread. Call once no more
    /// jobs will be run (the accept loops have ended) and the connections
    /// have drained; busy threads are waited for.
    pub(crate) fn shutdown(&self) {
        let handles: Vec<_> = {
            let mut state = self.lock();
            state.shutdown = true;
            state.exited.clear();
            state.threads.drain().map(|(_, h)| h).collect()
        };
        self.job_ready.notify_all();
        join(handles);
    }
}

/// Removes the handles of `exited` threads. An id whose handle is not
/// recorded yet (its thread ended before `run` stored it) is kept for later.
fn take_handles(state: &mut State, exited: Vec<u64>) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::with_capacity(exited.len());
    for id in exited {
        match state.threads.remove(&id) {
            Some(h) => handles.push(h),
            None => state.exited.push(id),
        }
    }
    handles
}

fn join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        if h.join().is_err() {
            log::error!("a connection thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::mpsc;

    fn thread_count(w: &Workers) -> usize {
        w.lock().threads.len()
    }

    #[test]
    fn an_idle_thread_is_reused_for_the_next_job() {
        let workers = Workers::new(64 * 1024);
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        workers
            .run(Box::new(move || tx.send(thread::current().id()).unwrap()))
            .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        // Wait until the thread is idle, then run another job.
        let start = Instant::now();
        while workers.lock().waiting == 0 {
            assert!(start.elapsed() < Duration::from_secs(30));
            thread::yield_now();
        }
        workers
            .run(Box::new(move || tx2.send(thread::current().id()).unwrap()))
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), first);
        assert_eq!(thread_count(&workers), 1);
        workers.shutdown();
        assert_eq!(thread_count(&workers), 0);
    }

    #[test]
    fn concurrent_jobs_get_one_thread_each_and_shutdown_joins_all() {
        let workers = Workers::new(64 * 1024);
        let running = Arc::new(AtomicUsize::new(0));
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        for _ in 0..8 {
            let (running, release) = (running.clone(), release.clone());
            workers
                .run(Box::new(move || {
                    running.fetch_add(1, SeqCst);
                    let (lock, cv) = &*release;
                    let mut go = lock.lock().unwrap();
                    while !*go {
                        go = cv.wait(go).unwrap();
                    }
                }))
                .unwrap();
        }
        let start = Instant::now();
        while running.load(SeqCst) < 8 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "jobs ran one after another"
            );
            thread::yield_now();
        }
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        workers.shutdown();
        assert_eq!(thread_count(&workers), 0);
    }
}
