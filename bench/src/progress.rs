//! The once-a-second progress line on stderr, shown only on a terminal so
//! logs and scripts capturing stderr never get `\r`-overwritten noise.
//!
//! Workers publish their running totals with relaxed atomic stores into
//! their own cache line after each batch of events; the printer thread only
//! reads. Nothing on the hot path waits for anything.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

/// One worker's running totals. Aligned to its own cache lines so two
/// workers publishing never contend on the same line.
#[repr(align(128))]
#[derive(Default)]
pub struct Progress {
    count: AtomicU64,
    bytes: AtomicU64,
    open: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
}

/// A snapshot of the totals, summed over workers.
#[derive(Default, Clone, Copy)]
pub struct Totals {
    pub count: u64,
    pub bytes: u64,
    pub open: u64,
    pub errors: u64,
    pub lost: u64,
}

impl Progress {
    /// Mode-specific unit count (round trips, connections made, held,
    /// connections churned).
    pub fn count(&self, n: u64) {
        self.count.store(n, Relaxed);
    }

    /// Bytes echoed (bulk, soak's bulk streams).
    pub fn bytes(&self, n: u64) {
        self.bytes.store(n, Relaxed);
    }

    /// Connections currently open (shown while connecting and holding).
    pub fn open(&self, n: u64) {
        self.open.store(n, Relaxed);
    }

    pub fn errors(&self, n: u64) {
        self.errors.store(n, Relaxed);
    }

    /// Datagrams lost so far (udp, soak).
    pub fn lost(&self, n: u64) {
        self.lost.store(n, Relaxed);
    }
}

fn sum(progress: &[Progress]) -> Totals {
    progress.iter().fold(Totals::default(), |t, p| Totals {
        count: t.count + p.count.load(Relaxed),
        bytes: t.bytes + p.bytes.load(Relaxed),
        open: t.open + p.open.load(Relaxed),
        errors: t.errors + p.errors.load(Relaxed),
        lost: t.lost + p.lost.load(Relaxed),
    })
}

/// Starts the printer; it stops (and clears its line) when `done`'s sender
/// is dropped. Returns `None` if the thread cannot be started: progress is
/// a nicety, not worth failing the run for. `describe(seconds, now, a
/// second ago)` words the line: each mode counts something else (the
/// caller, `modes`, knows what), so this module needs nothing of it.
pub fn spawn<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    describe: impl Fn(u64, &Totals, &Totals) -> String + Send + 'scope,
    progress: &'env [Progress],
    done: Receiver<()>,
) -> Option<ScopedJoinHandle<'scope, ()>> {
    thread::Builder::new()
        .name("progress".into())
        .spawn_scoped(scope, move || print_loop(describe, progress, &done))
        .ok()
}

fn print_loop(
    describe: impl Fn(u64, &Totals, &Totals) -> String,
    progress: &[Progress],
    done: &Receiver<()>,
) {
    let start = Instant::now();
    let mut last = Totals::default();
    let mut stderr = std::io::stderr();
    while let Err(RecvTimeoutError::Timeout) = done.recv_timeout(Duration::from_secs(1)) {
        let now = sum(progress);
        let secs = start.elapsed().as_secs();
        let line = describe(secs, &now, &last);
        // `\x1b[K` clears what a longer previous line left behind.
        let _ = write!(stderr, "\r{line}, {} errors\x1b[K", now.errors);
        let _ = stderr.flush();
        last = now;
    }
    let _ = write!(stderr, "\r\x1b[K");
    let _ = stderr.flush();
}
