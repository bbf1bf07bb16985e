//! The six load patterns and what they share: the per-thread event loop,
//! the paced connect phase, error tallies and merging thread results.
//!
//! Each worker thread owns its own `mio::Poll`, its slice of the
//! connections (or UDP sockets), one read buffer and one latency histogram; threads share
//! only read-only data (configuration, pattern table) and their progress
//! counters, so there are no locks anywhere. Results are merged after the
//! threads are joined.

pub mod bulk;
pub mod connrate;
pub mod hold;
pub mod pingpong;
pub mod soak;
pub mod udp;

use crate::conn::{Conn, Failure, Step};
use crate::pattern::{stream_base, Pattern, MAX_CHUNK};
use crate::progress::{self, Progress, Totals};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, BufRead as _, ErrorKind, IsTerminal as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long past `--duration` a run may take to drain in-flight echoes (or
/// wait for a stalled server) before it gives up and reports what is left
/// as errors.
pub const HARD_CAP_GRACE: Duration = Duration::from_secs(10);

/// The message size of `connrate` and `hold`: small, but long enough that a
/// pattern window is unique per connection.
pub const SMALL_MESSAGE: u64 = 16;

/// The echo every connection does when opened (see [`connect_all`]).
pub const PROBE: u64 = SMALL_MESSAGE;

/// Connections being opened at once, over all threads: a few hundred keeps
/// the server's listen backlog (1024 for echo-server) from overflowing.
const MAX_CONNECTING: usize = 256;

/// Largest latency the histogram tells apart (one hour, in microseconds);
/// larger values are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The benchmark to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Request/response latency: send a message, wait for its echo, repeat.
    Pingpong,
    /// Throughput: stream bytes while reading the echo back concurrently.
    Bulk,
    /// Connection rate: connect, echo 16 bytes, close, repeat.
    Connrate,
    /// Many idle connections: open N, wait, then echo 16 bytes on each.
    Hold,
    /// UDP datagram echo: N sockets with K datagrams in flight each.
    Udp,
    /// Leak hunting: churning, resetting, half-closing and vanishing
    /// clients, bulk streams, idle connections and datagrams, all at once.
    Soak,
}

const MIB: f64 = (1u64 << 20) as f64;

impl Mode {
    /// The progress line after `secs` seconds, from the totals now and a
    /// second ago.
    fn progress_line(self, secs: u64, now: &Totals, last: &Totals) -> String {
        match self {
            Mode::Pingpong => format!(
                "pingpong {secs}s: {} round trips, {}/s",
                now.count,
                now.count.saturating_sub(last.count)
            ),
            Mode::Bulk => format!(
                "bulk {secs}s: {:.1} MiB echoed, {:.1} MiB/s",
                now.bytes as f64 / MIB,
                now.bytes.saturating_sub(last.bytes) as f64 / MIB
            ),
            Mode::Connrate => format!(
                "connrate {secs}s: {} connections, {}/s",
                now.count,
                now.count.saturating_sub(last.count)
            ),
            Mode::Hold => format!("hold {secs}s: {} open, {} held", now.open, now.count),
            Mode::Udp => format!(
                "udp {secs}s: {} answered, {}/s, {} lost",
                now.count,
                now.count.saturating_sub(last.count),
                now.lost
            ),
            Mode::Soak => format!(
                "soak {secs}s: {} connections churned, {:.1} MiB bulk, {} idle, {} datagrams lost",
                now.count,
                now.bytes as f64 / MIB,
                now.open,
                now.lost
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Pingpong => "pingpong",
            Mode::Bulk => "bulk",
            Mode::Connrate => "connrate",
            Mode::Hold => "hold",
            Mode::Udp => "udp",
            Mode::Soak => "soak",
        }
    }
}

/// A validated run configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub addr: SocketAddr,
    pub connections: usize,
    pub size: u64,
    pub bytes: u64,
    pub parallel: usize,
    pub duration: Duration,
    pub threads: usize,
    /// Loopback source addresses to spread connections over: connection
    /// `i` binds to 127.0.0.(1 + i % sources) first; 1 = no bind.
    pub sources: usize,
    /// `hold`: the idle phase also ends early when stdin has a line or is
    /// closed (see [`Shared`]); `duration` still bounds it.
    pub idle_until_stdin: bool,
    /// `udp`: sockets, datagrams in flight per socket, and how long a
    /// datagram may go unanswered before it counts as lost.
    pub sockets: usize,
    pub inflight: usize,
    /// `udp`: send with UDP_SEGMENT where the kernel allows.
    pub gso: bool,
    pub loss_timeout: Duration,
    /// `soak`: the server's UDP address, if datagrams are to be part of it.
    pub udp_addr: Option<SocketAddr>,
    /// `soak`: how much churn and bulk load.
    pub soak: soak::Load,
}

impl Config {
    /// What is split across threads: connection loops for `connrate`,
    /// sockets for `udp`, connections otherwise.
    pub fn units(&self) -> usize {
        match self.mode {
            Mode::Connrate => self.parallel,
            Mode::Udp => self.sockets,
            Mode::Soak => self.soak.units(self.udp_addr.is_some()),
            _ => self.connections,
        }
    }

    /// Threads actually used: never more than there are units to split
    /// (`soak` runs its whole mix on one).
    pub fn effective_threads(&self) -> usize {
        if self.mode == Mode::Soak {
            return 1;
        }
        self.threads.clamp(1, self.units().max(1))
    }

    /// The source address for connection (or connrate loop) `id`, or
    /// `None` to let the kernel choose.
    pub fn source(&self, id: usize) -> Option<Ipv4Addr> {
        if self.sources <= 1 {
            return None;
        }
        // main caps `sources` at MAX_SOURCES, so this stays in 127.0.0.0/8.
        let host = 1 + (id % self.sources.min(MAX_SOURCES)) as u8;
        Some(Ipv4Addr::new(127, 0, 0, host))
    }
}

/// Most source addresses `--sources` may ask for: 127.0.0.1 to 127.0.0.254.
pub const MAX_SOURCES: usize = 254;

/// How often a `hold` thread that is waiting for the other threads (or for
/// stdin) looks again.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// What the worker threads share besides read-only data: in `hold`, when
/// every thread has finished connecting, so that the final echo on every
/// connection starts only once all connections are open, and whether
/// stdin has released the idle phase.
pub struct Shared {
    threads: usize,
    connected: AtomicUsize,
    open: AtomicU64,
    /// When the last thread finished connecting, from the run's start.
    all_open: OnceLock<Duration>,
    released: Arc<AtomicBool>,
}

impl Shared {
    fn new(threads: usize) -> Self {
        Shared {
            threads,
            connected: AtomicUsize::new(0),
            open: AtomicU64::new(0),
            all_open: OnceLock::new(),
            released: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A thread has finished connecting, with `open` connections open; the
    /// last one notes the time and, in `hold`, says so on stderr (a script
    /// can measure the server while every connection is open and idle).
    pub fn connected(&self, cfg: &Config, run_start: Instant, open: u64) {
        self.open.fetch_add(open, SeqCst);
        if self.connected.fetch_add(1, SeqCst) + 1 == self.threads {
            let after = run_start.elapsed();
            let _ = self.all_open.set(after);
            if cfg.mode == Mode::Hold {
                eprintln!(
                    "echo-bench: hold: {} of {} connections open after {:.3} s",
                    self.open.load(SeqCst),
                    cfg.connections,
                    after.as_secs_f64()
                );
            }
        }
    }

    pub fn all_connected(&self) -> bool {
        self.connected.load(SeqCst) >= self.threads
    }

    pub fn released(&self) -> bool {
        self.released.load(SeqCst)
    }

    /// Sets `released` once stdin has a line or ends (or fails). The
    /// reader is detached: a read cannot be interrupted, and the thread
    /// ends with the process.
    fn watch_stdin(&self) {
        let released = Arc::clone(&self.released);
        let spawned = thread::Builder::new().name("stdin".into()).spawn(move || {
            let mut line = String::new();
            let _ = io::stdin().lock().read_line(&mut line);
            released.store(true, SeqCst);
        });
        if spawned.is_err() {
            // Without the watcher, --duration alone ends the idle phase.
            eprintln!("echo-bench: warning: cannot watch stdin; idling for --duration");
        }
    }
}

/// What one worker thread sees.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub pattern: &'a Pattern,
    pub progress: &'a Progress,
    pub run_start: Instant,
    /// Nothing runs past this, whatever the server does.
    pub hard_cap: Instant,
    /// Connections not open by this time are given up on, so that what
    /// did open still gets measured (or, in `hold`, answered) before the
    /// hard cap: half the grace period before it.
    pub connect_by: Instant,
    pub shared: &'a Shared,
    max_connecting: usize,
    /// `udp`: the run's magic number, in every datagram's header.
    pub udp_magic: u32,
}

impl Ctx<'_> {
    /// End of a measurement window starting at `t0`, never past the hard cap.
    pub fn deadline_from(&self, t0: Instant) -> Instant {
        t0.checked_add(self.cfg.duration)
            .map_or(self.hard_cap, |d| d.min(self.hard_cap))
    }
}

/// Errors counted by one thread, with the first one kept for the report.
#[derive(Debug, Default)]
pub struct Tally {
    pub errors: u64,
    pub verify_errors: u64,
    pub first: Option<String>,
}

impl Tally {
    pub fn fail(&mut self, failure: Failure) {
        self.errors += 1;
        if failure.is_verification() {
            self.verify_errors += 1;
        }
        if self.first.is_none() {
            self.first = Some(failure.to_string());
        }
    }

    /// The run is over because of `failure` (the hard cap passed, or the
    /// poller broke): every connection still open counts as one stalled
    /// error and is closed, and a poller error is counted too.
    pub fn abandon<'a>(
        &mut self,
        open: impl IntoIterator<Item = &'a mut Option<Conn>>,
        failure: Failure,
    ) {
        for conn in open {
            if conn.take().is_some() {
                self.fail(Failure::Stalled);
            }
        }
        if !matches!(failure, Failure::Stalled) {
            self.fail(failure);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.errors += other.errors;
        self.verify_errors += other.verify_errors;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// What one thread measured.
pub struct Outcome {
    /// Start and end of the measurement window.
    pub start: Instant,
    pub end: Instant,
    pub tally: Tally,
    /// Round trips / completed connections / connections made / held.
    pub count: u64,
    /// Bytes echoed (bulk).
    pub bytes: u64,
    /// Connections that did not hold (hold).
    pub failed: u64,
    /// Connections open once connecting was over (hold).
    pub opened: u64,
    /// Round-trip latencies in microseconds (pingpong, udp).
    pub hist: Option<Histogram<u64>>,
    /// Datagram counters (udp).
    pub udp: udp::Counts,
    /// Per-kind counters (soak).
    pub soak: soak::Counts,
}

impl Outcome {
    fn new(start: Instant) -> Self {
        Outcome {
            start,
            end: start,
            tally: Tally::default(),
            count: 0,
            bytes: 0,
            failed: 0,
            opened: 0,
            hist: None,
            udp: udp::Counts::default(),
            soak: soak::Counts::default(),
        }
    }

    /// A thread that could not run at all: all its units failed.
    fn broken(start: Instant, units: usize, failure: Failure) -> Self {
        let mut out = Outcome::new(start);
        out.tally.fail(failure);
        out.failed = units as u64;
        out
    }
}

/// The merged result of a run.
pub struct Summary {
    pub threads: usize,
    pub elapsed: Duration,
    pub tally: Tally,
    pub count: u64,
    pub bytes: u64,
    pub failed: u64,
    /// Connections open at once after connecting (hold).
    pub opened: u64,
    /// Time from the start until every thread had finished connecting.
    pub all_open: Option<Duration>,
    pub hist: Option<Histogram<u64>>,
    pub udp: udp::Counts,
    pub soak: soak::Counts,
}

impl Summary {
    /// Whether the run measured anything at all (a refused connection,
    /// say, measures nothing and must not look like a result).
    pub fn measured(&self, mode: Mode) -> bool {
        match mode {
            Mode::Bulk => self.bytes > 0,
            _ => self.count > 0,
        }
    }
}

/// A fresh latency histogram, or `None` if it cannot be made (it can,
/// with these constant bounds; a `None` just leaves percentiles null).
pub fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).ok()
}

/// Runs `cfg` on its threads and merges what they measured.
pub fn run(cfg: &Config) -> Summary {
    let pattern = Pattern::new();
    let run_start = Instant::now();
    let hard_cap = run_start
        .checked_add(cfg.duration + HARD_CAP_GRACE)
        .unwrap_or(run_start + HARD_CAP_GRACE);
    let units = cfg.units();
    let threads = cfg.effective_threads();
    let progress: Vec<Progress> = (0..threads).map(|_| Progress::default()).collect();
    let shared = Shared::new(threads);
    if cfg.idle_until_stdin && cfg.mode == Mode::Hold {
        shared.watch_stdin();
    }
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let udp_magic = crate::datagram::run_magic();

    let outcomes = thread::scope(|s| {
        let printer = std::io::stderr()
            .is_terminal()
            .then(|| {
                progress::spawn(
                    s,
                    move |secs, now, last| cfg.mode.progress_line(secs, now, last),
                    &progress,
                    done_rx,
                )
            })
            .flatten();
        let mut handles = Vec::with_capacity(threads);
        let mut outcomes = Vec::with_capacity(threads);
        for (t, progress) in progress.iter().enumerate() {
            let ids = units * t / threads..units * (t + 1) / threads;
            let count = ids.len();
            let ctx = Ctx {
                cfg,
                pattern: &pattern,
                progress,
                run_start,
                hard_cap,
                connect_by: hard_cap.checked_sub(HARD_CAP_GRACE / 2).unwrap_or(hard_cap),
                shared: &shared,
                max_connecting: (MAX_CONNECTING / threads).max(1),
                udp_magic,
            };
            let spawned = thread::Builder::new()
                .name(format!("echo-bench-{t}"))
                .spawn_scoped(s, move || worker(&ctx, ids));
            match spawned {
                Ok(handle) => handles.push((handle, count)),
                Err(e) => {
                    // Nobody will wait for a thread that never ran.
                    shared.connected(cfg, run_start, 0);
                    outcomes.push(Outcome::broken(run_start, count, Failure::Io(e)));
                }
            }
        }
        for (handle, count) in handles {
            outcomes.push(handle.join().unwrap_or_else(|_| {
                let panicked = io::Error::other("worker thread panicked");
                Outcome::broken(run_start, count, Failure::Io(panicked))
            }));
        }
        drop(done_tx);
        if let Some(printer) = printer {
            let _ = printer.join();
        }
        outcomes
    });

    let mut summary = merge(threads, outcomes);
    summary.all_open = shared.all_open.get().copied();
    summary
}

fn merge(threads: usize, outcomes: Vec<Outcome>) -> Summary {
    let start = outcomes.iter().map(|o| o.start).min();
    let end = outcomes.iter().map(|o| o.end).max();
    let elapsed = match (start, end) {
        (Some(start), Some(end)) => end.saturating_duration_since(start),
        _ => Duration::ZERO,
    };
    let mut summary = Summary {
        threads,
        elapsed,
        tally: Tally::default(),
        count: 0,
        bytes: 0,
        failed: 0,
        opened: 0,
        all_open: None,
        hist: None,
        udp: udp::Counts::default(),
        soak: soak::Counts::default(),
    };
    for o in outcomes {
        summary.tally.merge(o.tally);
        summary.count += o.count;
        summary.bytes += o.bytes;
        summary.failed += o.failed;
        summary.opened += o.opened;
        summary.udp.add(&o.udp);
        summary.soak.add(&o.soak);
        summary.hist = match (summary.hist.take(), o.hist) {
            (Some(mut all), Some(h)) => {
                // Same bounds everywhere, so adding cannot fail; if it
                // did, the other thread's samples are dropped, not the run.
                let _ = all.add(&h);
                Some(all)
            }
            (all, h) => all.or(h),
        };
    }
    summary
}

fn worker(ctx: &Ctx, ids: Range<usize>) -> Outcome {
    if ctx.cfg.mode == Mode::Udp {
        // Its own loop: datagram sockets, batched I/O, no connections.
        return udp::run(ctx, ids);
    }
    let mut lp = match EventLoop::new() {
        Ok(lp) => lp,
        Err(e) => {
            ctx.shared.connected(ctx.cfg, ctx.run_start, 0);
            return Outcome::broken(Instant::now(), ids.len(), Failure::Io(e));
        }
    };
    match ctx.cfg.mode {
        Mode::Pingpong => pingpong::run(ctx, ids, &mut lp),
        Mode::Bulk => bulk::run(ctx, ids, &mut lp),
        Mode::Connrate => connrate::run(ctx, ids, &mut lp),
        Mode::Hold => hold::run(ctx, ids, &mut lp),
        Mode::Soak => soak::run(ctx, &mut lp),
        Mode::Udp => unreachable!("handled above"),
    }
}

/// One thread's poller, the tokens that are ready, and its read buffer.
pub struct EventLoop {
    poll: Poll,
    events: Events,
    /// Slots (tokens) reported ready by the last [`EventLoop::wait`].
    pub ready: Vec<usize>,
    /// Where every connection of this thread reads into; checked at once.
    pub buf: Vec<u8>,
}

impl EventLoop {
    fn new() -> io::Result<Self> {
        Ok(EventLoop {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            buf: vec![0; MAX_CHUNK],
        })
    }

    /// Watches `conn` under token `slot`, for both directions at once:
    /// registering once and never re-registering is what edge triggering
    /// buys (no epoll_ctl per message).
    pub fn register(&self, conn: &mut Conn, slot: usize) -> Result<(), Failure> {
        self.poll
            .registry()
            .register(
                conn.socket(),
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(Failure::Io)
    }

    /// Waits for readiness until `until` at the latest and fills `ready`.
    pub fn wait(&mut self, until: Instant) -> io::Result<()> {
        self.ready.clear();
        let timeout = until.saturating_duration_since(Instant::now());
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        self.ready.extend(self.events.iter().map(|e| e.token().0));
        Ok(())
    }
}

/// Starts a nonblocking connect (from `source`, if given) and registers it.
pub fn open(
    lp: &EventLoop,
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    slot: usize,
    base: u64,
) -> Result<Conn, Failure> {
    let mut conn = Conn::connect(addr, source, base)?;
    lp.register(&mut conn, slot)?;
    Ok(conn)
}

/// Opens one connection per id (slot `i` for id `ids.start + i`) and waits
/// until each is settled: established, and past a [`PROBE`]-byte echo
/// (stream bytes `0..PROBE`; the mode's own traffic follows). Failures are
/// tallied and leave `None`. Bounded by `ctx.connect_by`: connections not
/// settled by then count as stalled.
///
/// At most a few hundred connections are unsettled at once. A connect
/// completes as soon as the kernel queues it for `accept`, so that alone
/// would bound only the SYNs in flight; the probe echo also bounds the
/// connections the server has not yet accepted, so a server that accepts
/// slowly never sees its listen backlog overflow (which would drop SYNs and
/// stall each of those connects for a one-second retransmit). It also
/// means every measurement window starts with every connection served.
pub fn connect_all(
    ctx: &Ctx,
    lp: &mut EventLoop,
    ids: Range<usize>,
    tally: &mut Tally,
) -> Vec<Option<Conn>> {
    let n = ids.len();
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let (mut next, mut unsettled, mut open_count) = (0usize, 0usize, 0u64);
    let settled = |c: &Conn| c.is_established() && c.echoed() >= PROBE;
    loop {
        let stop = if Instant::now() >= ctx.connect_by {
            Some(Failure::Stalled)
        } else {
            while unsettled < ctx.max_connecting && next < n {
                let id = ids.start + next;
                let source = ctx.cfg.source(id);
                match open(lp, ctx.cfg.addr, source, next, stream_base(id as u64)) {
                    Ok(conn) => {
                        conns[next] = Some(conn);
                        unsettled += 1;
                    }
                    Err(f) => tally.fail(f),
                }
                next += 1;
            }
            if unsettled == 0 {
                break; // every id started (max_connecting >= 1) and settled
            }
            lp.wait(ctx.connect_by).err().map(Failure::Io)
        };
        if let Some(failure) = stop {
            // Give up on everything not yet settled.
            for conn in conns.iter_mut() {
                if conn.as_ref().is_some_and(|c| !settled(c)) {
                    *conn = None;
                    tally.fail(Failure::Stalled);
                }
            }
            for _ in next..n {
                tally.fail(Failure::Stalled);
            }
            if !matches!(failure, Failure::Stalled) {
                tally.fail(failure);
            }
            break;
        }
        for k in 0..lp.ready.len() {
            let slot = lp.ready[k];
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if settled(conn) {
                continue;
            }
            match settle(conn, ctx.pattern, &mut lp.buf) {
                Ok(true) => {
                    unsettled -= 1;
                    open_count += 1;
                }
                Ok(false) => {}
                Err(f) => {
                    tally.fail(f);
                    conns[slot] = None;
                    unsettled -= 1;
                }
            }
        }
        ctx.progress.open(open_count);
        ctx.progress.errors(tally.errors);
    }
    ctx.progress.open(open_count);
    ctx.progress.errors(tally.errors);
    conns
}

/// One event's worth of progress towards a settled connection; true once
/// it is established and its probe (if any) has been echoed.
fn settle(conn: &mut Conn, pattern: &Pattern, buf: &mut [u8]) -> Result<bool, Failure> {
    if !conn.established()? {
        return Ok(false);
    }
    conn.write_to(pattern, PROBE)?;
    Ok(conn.read_to(pattern, buf, PROBE)? == Step::Done)
}
