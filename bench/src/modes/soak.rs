//! `soak`: a moderate, bounded mix of every kind of client at once, for
//! `--duration`, so that a long run shows whether the server leaks anything
//! (descriptors, threads, memory) under churn. Every echoed byte is checked.
//!
//! Running side by side, on one thread:
//! - **churn**: at most [`Load::churn`] connections at once (`--churn`,
//!   default [`CHURN`]), at most [`Load::churn_rate`] new ones a second
//!   (`--churn-rate`, default [`CHURN_RATE`]), each echoing a few bytes
//!   (now and then up to 64 KiB) and closing, in turn in four ways:
//!   - *plain*: read the whole echo, close;
//!   - *reset*: read the whole echo, close with SO_LINGER 0 (a reset);
//!   - *half-close*: send, shut down writing at once, read the echo and then
//!     the server's end of stream (some send nothing at all);
//!   - *vanish*: send, then neither read nor write: the echo is checked in
//!     the receive queue with `MSG_PEEK` but left unread, and after a short
//!     while the connection is dropped (the unread bytes make the kernel
//!     send a reset).
//! - **bulk**: [`Load::bulk`] streams (`--bulk-streams`, default [`BULK`])
//!   of [`BULK_BYTES`] each, each paced to [`Load::bulk_rate`] bytes a
//!   second (`--bulk-rate`, default [`BULK_RATE`]), read back concurrently;
//!   a finished stream is replaced by a new connection.
//! - **idle**: [`IDLE`] connections opened (with a probe echo) at the start
//!   and held without traffic for the whole run; at the end each echoes one
//!   more message. Any event on one while idle is an error (the server
//!   closed it or sent bytes nobody asked for).
//! - **udp** (with `--udp-addr`): [`UDP_SIZES`]`.len()` sockets, one of each
//!   size, each with one datagram in flight and at most one every
//!   [`UDP_INTERVAL`]; every reply checked as in `udp`. At this rate (well
//!   under the server's default per-source limit) a datagram not answered
//!   within [`UDP_TIMEOUT`] is an error, not just a loss.
//!
//! Every connection ends only after its whole echo was verified (read, or
//! peeked for the vanishing kind), so the server has echoed every byte it
//! received: a server's "bytes received" and "bytes echoed" must both equal
//! `bytes_sent` here, and its accepted connections `tcp_connections`. What
//! the client sent without seeing the echo (only on error paths) is
//! reported as `bytes_abandoned`. `udp_bytes` (the datagram bytes answered)
//! is reported apart, for a server that counts those as echoed too.
//!
//! At the deadline no new connection, stream or datagram starts; bulk
//! streams drain (what was written is still read and checked), churn
//! connections finish, the idle ones echo their last message, and the
//! datagrams in flight are awaited. All of it is bounded by the run's hard
//! cap; what is still open then counts as stalled.
//!
//! The defaults are the moderate mix CI runs for 45 s; the options scale
//! churn and bulk up for a long soak (a million connections in minutes).
//! The vanishing kind holds its connection 20 to 200 ms ([`VANISH_MIN_MS`]
//! plus up to [`VANISH_SPREAD_MS`]), so a quarter of the churn is open for
//! ~0.1 s: a high `--churn-rate` needs a `--churn` of at least
//! about rate / 20 (see [`Load::churn_needed`]) or the slots, not the rate,
//! set the pace.

use super::{connect_all, open, Ctx, EventLoop, Outcome, Tally, PROBE, SMALL_MESSAGE};
use crate::conn::{Conn, Failure, Step};
use crate::datagram::{Fault, Format};
use crate::pattern::{stream_base, Pattern};
use mio::net::UdpSocket;
use mio::{Interest, Token};
use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// Idle connections held for the whole run.
pub const IDLE: usize = 100;
/// Default of `--churn`: churning connections open at once, at most.
pub const CHURN: usize = 48;
/// Default of `--churn-rate`: new churning connections per second, at most.
pub const CHURN_RATE: u32 = 200;
/// Default of `--bulk-streams`: concurrent bulk streams.
pub const BULK: usize = 2;
/// Bytes per bulk stream (after which a new connection takes over).
pub const BULK_BYTES: u64 = 4 << 20;
/// Default of `--bulk-rate`: write rate of each bulk stream, bytes per second.
pub const BULK_RATE: u64 = 16 << 20;
/// What a bulk stream may write at once ahead of its pace.
const BULK_BURST: u64 = 256 << 10;
/// One UDP socket per size (whole datagram, header included).
pub const UDP_SIZES: [usize; 4] = [16, 256, 1472, 4096];
/// Per UDP socket: at most one datagram this often.
pub const UDP_INTERVAL: Duration = Duration::from_millis(25);
/// A datagram not answered within this is lost, and an error.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(1);
/// A churning connection not done within this is stalled.
const CHURN_TIMEOUT: Duration = Duration::from_secs(5);
/// The vanishing kind drops its connection this long (plus up to
/// [`VANISH_SPREAD_MS`]) after connecting, once its echo is queued.
pub const VANISH_MIN_MS: u64 = 20;
pub const VANISH_SPREAD_MS: u64 = 180;
/// Largest message of the vanishing kind: its echo must fit the receive
/// buffer unread.
const VANISH_MAX: u64 = 4096;
/// How often timers are looked at: pacing, vanishing drops, timeouts.
const TICK: Duration = Duration::from_millis(5);

/// Id ranges for pattern bases (idle connections use `0..IDLE`).
const CHURN_IDS: u64 = 1 << 40;
const BULK_IDS: u64 = 2 << 40;

/// Stream offset where an idle connection's final message ends.
const IDLE_END: u64 = PROBE + SMALL_MESSAGE;

/// How much churn and bulk load a soak puts on: `--churn`, `--churn-rate`,
/// `--bulk-streams`, `--bulk-rate` (main bounds each with a clap range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Churning connections open at once, at most.
    pub churn: usize,
    /// New churning connections per second, at most.
    pub churn_rate: u32,
    /// Concurrent bulk streams.
    pub bulk: usize,
    /// Write rate of each bulk stream, bytes per second.
    pub bulk_rate: u64,
}

impl Default for Load {
    /// The CI soak's mix.
    fn default() -> Self {
        Load {
            churn: CHURN,
            churn_rate: CHURN_RATE,
            bulk: BULK,
            bulk_rate: BULK_RATE,
        }
    }
}

impl Load {
    /// Churn slots that keep up with `churn_rate`, roughly: every
    /// connection is open a millisecond or so, and a vanishing one (every
    /// fourth) ~110 ms on average, [`VANISH_MIN_MS`] + [`VANISH_SPREAD_MS`]
    /// at most; twice the average need, for bursts.
    pub fn churn_needed(&self) -> usize {
        let rate = u64::from(self.churn_rate);
        let per_sec_held_ms = rate * (4 + VANISH_MIN_MS + VANISH_SPREAD_MS / 2) / 4;
        (2 * per_sec_held_ms).div_ceil(1000) as usize
    }

    /// Sockets a soak run needs at most (with `udp`: the datagram ones too).
    pub fn units(&self, udp: bool) -> usize {
        self.udp_tokens() + if udp { UDP_SIZES.len() } else { 0 }
    }

    // Token layout: idle `0..IDLE`, then churn, bulk and UDP slots.
    fn churn_tokens(&self) -> usize {
        IDLE
    }

    fn bulk_tokens(&self) -> usize {
        self.churn_tokens() + self.churn
    }

    fn udp_tokens(&self) -> usize {
        self.bulk_tokens() + self.bulk
    }

    /// Which kind of socket a token belongs to, and its index there.
    fn slot(&self, token: usize) -> Slot {
        if token < self.churn_tokens() {
            Slot::Idle(token)
        } else if token < self.bulk_tokens() {
            Slot::Churn(token - self.churn_tokens())
        } else if token < self.udp_tokens() {
            Slot::Bulk(token - self.bulk_tokens())
        } else {
            Slot::Udp(token - self.udp_tokens())
        }
    }

    /// How many churning connections may have been started `elapsed` after
    /// the start (before any catch-up limit).
    fn churn_due(&self, elapsed: Duration) -> u64 {
        (elapsed.as_secs_f64() * f64::from(self.churn_rate)) as u64
    }
}

/// A token's socket: idle, churn, bulk or UDP slot number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Idle(usize),
    Churn(usize),
    Bulk(usize),
    Udp(usize),
}

/// What a soak run counts; every field is in the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub plain: u64,
    pub reset: u64,
    pub half_close: u64,
    pub vanish: u64,
    pub bulk_streams: u64,
    /// Bulk bytes echoed and verified (including partial streams at the end).
    pub bulk_bytes: u64,
    pub idle_opened: u64,
    pub idle_held: u64,
    pub udp_sent: u64,
    pub udp_answered: u64,
    pub udp_lost: u64,
    /// Answers that came after their datagram had been counted lost.
    pub udp_late: u64,
    /// Bytes of the datagrams answered (late ones included): what a server
    /// that counts datagram bytes in its "bytes echoed" adds there.
    pub udp_bytes: u64,
    /// TCP connections established, of every kind.
    pub connections: u64,
    /// TCP stream bytes written, of every kind.
    pub bytes_sent: u64,
    /// TCP bytes whose echo was verified (read, or peeked when vanishing).
    pub bytes_echoed: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.plain += o.plain;
        self.reset += o.reset;
        self.half_close += o.half_close;
        self.vanish += o.vanish;
        self.bulk_streams += o.bulk_streams;
        self.bulk_bytes += o.bulk_bytes;
        self.idle_opened += o.idle_opened;
        self.idle_held += o.idle_held;
        self.udp_sent += o.udp_sent;
        self.udp_answered += o.udp_answered;
        self.udp_lost += o.udp_lost;
        self.udp_late += o.udp_late;
        self.udp_bytes += o.udp_bytes;
        self.connections += o.connections;
        self.bytes_sent += o.bytes_sent;
        self.bytes_echoed += o.bytes_echoed;
    }

    /// Churning connections that completed, of all four kinds.
    pub fn churned(&self) -> u64 {
        self.plain + self.reset + self.half_close + self.vanish
    }

    /// Bytes sent whose echo was never seen (only when something failed).
    pub fn abandoned(&self) -> u64 {
        self.bytes_sent.saturating_sub(self.bytes_echoed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Reset,
    HalfClose,
    Vanish,
}

/// One churning connection.
struct Churn {
    conn: Conn,
    kind: Kind,
    size: u64,
    started: Instant,
    /// Half-close: the FIN has gone out.
    shut: bool,
    /// Vanish: echoed bytes verified in the receive queue, unread.
    peeked: u64,
    /// Vanish: drop the connection from then on (once `peeked == size`).
    drop_at: Instant,
}

/// One bulk stream.
struct Bulk {
    conn: Conn,
    started: Instant,
}

/// One UDP socket with at most one datagram in flight.
struct Dgram {
    io: UdpSocket,
    format: Format,
    id: u32,
    next_seq: u64,
    outstanding: Option<(u64, Instant)>,
    next_send: Instant,
    /// Sequence numbers given up on (rare: each is an error), so a late
    /// answer is told from a duplicate.
    lost: Vec<u64>,
}

struct Soak<'a> {
    ctx: &'a Ctx<'a>,
    pattern: &'a Pattern,
    load: Load,
    t0: Instant,
    deadline: Instant,
    /// The deadline has passed: nothing new starts.
    ending: bool,
    idle: Vec<Option<Conn>>,
    /// Idle connections whose final echo came back, kept open until the end.
    held: Vec<Conn>,
    churn: Vec<Option<Churn>>,
    churn_started: u64,
    bulk: Vec<Option<Bulk>>,
    bulk_started: u64,
    udp: Vec<Dgram>,
    counts: Counts,
    tally: Tally,
}

pub fn run(ctx: &Ctx, lp: &mut EventLoop) -> Outcome {
    let mut tally = Tally::default();
    let idle = connect_all(ctx, lp, 0..IDLE, &mut tally);
    let opened = idle.iter().filter(|c| c.is_some()).count() as u64;
    ctx.shared.connected(ctx.cfg, ctx.run_start, opened);
    let t0 = Instant::now();
    let load = ctx.cfg.soak;
    let mut s = Soak {
        ctx,
        pattern: ctx.pattern,
        load,
        t0,
        deadline: ctx.deadline_from(ctx.run_start),
        ending: false,
        idle,
        held: Vec::with_capacity(IDLE),
        churn: (0..load.churn).map(|_| None).collect(),
        churn_started: 0,
        bulk: (0..load.bulk).map(|_| None).collect(),
        bulk_started: 0,
        udp: Vec::new(),
        counts: Counts {
            idle_opened: opened,
            ..Counts::default()
        },
        tally,
    };
    s.open_udp(lp);
    for i in 0..load.bulk {
        s.start_bulk(lp, i);
    }

    let mut next_tick = t0;
    loop {
        let now = Instant::now();
        if now >= ctx.hard_cap {
            s.abandon();
            break;
        }
        if !s.ending && now >= s.deadline {
            s.begin_end(lp);
        }
        if now >= next_tick {
            s.tick(lp, now);
            next_tick = now + TICK;
        }
        if s.ending && s.finished() {
            break;
        }
        s.publish();
        if let Err(e) = lp.wait(next_tick.min(ctx.hard_cap)) {
            s.tally.fail(Failure::Io(e));
            s.abandon();
            break;
        }
        for k in 0..lp.ready.len() {
            let token = lp.ready[k];
            s.dispatch(lp, token);
        }
    }
    // Everything has answered: close what is still open (the held idle
    // connections), counting it.
    for conn in std::mem::take(&mut s.held) {
        s.retire(&conn, conn.echoed());
    }
    s.publish();

    let mut out = Outcome::new(ctx.run_start);
    out.end = s.deadline.min(Instant::now());
    out.count = s.counts.churned();
    out.bytes = s.counts.bulk_bytes;
    out.opened = opened;
    out.soak = s.counts;
    out.tally = s.tally;
    out
}

impl Soak<'_> {
    fn publish(&self) {
        let p = self.ctx.progress;
        p.count(self.counts.churned());
        p.bytes(self.counts.bulk_bytes);
        p.open(self.idle.iter().filter(|c| c.is_some()).count() as u64);
        p.lost(self.counts.udp_lost);
        p.errors(self.tally.errors);
    }

    /// Counts a connection that is being closed: `confirmed` of its sent
    /// bytes were seen echoed.
    fn retire(&mut self, conn: &Conn, confirmed: u64) {
        if conn.is_established() {
            self.counts.connections += 1;
        }
        self.counts.bytes_sent += conn.sent();
        self.counts.bytes_echoed += confirmed.min(conn.sent());
    }

    fn finished(&self) -> bool {
        self.idle.iter().all(Option::is_none)
            && self.churn.iter().all(Option::is_none)
            && self.bulk.iter().all(Option::is_none)
            && self.udp.iter().all(|d| d.outstanding.is_none())
    }

    fn dispatch(&mut self, lp: &mut EventLoop, token: usize) {
        match self.load.slot(token) {
            Slot::Idle(i) => self.drive_idle(lp, i),
            Slot::Churn(i) => self.drive_churn(lp, i),
            Slot::Bulk(i) => self.drive_bulk(lp, i, Instant::now()),
            Slot::Udp(i) if i < self.udp.len() => self.receive_udp(lp, i),
            Slot::Udp(_) => {}
        }
    }

    /// Timers: pacing of new connections, streams and datagrams, vanishing
    /// drops and time-outs.
    fn tick(&mut self, lp: &mut EventLoop, now: Instant) {
        if !self.ending {
            // At most churn_rate starts a second, and never a burst of more
            // than `churn` after a stretch with every slot busy.
            let churn = self.load.churn;
            let due = self.load.churn_due(now.duration_since(self.t0));
            self.churn_started = self.churn_started.max(due.saturating_sub(churn as u64));
            for i in 0..churn {
                if self.churn_started >= due {
                    break;
                }
                if self.churn[i].is_none() {
                    self.start_churn(lp, i, now);
                }
            }
        }
        for i in 0..self.load.churn {
            let Some(c) = self.churn[i].as_ref() else {
                continue;
            };
            if c.kind == Kind::Vanish && c.peeked == c.size && now >= c.drop_at {
                self.end_churn(i, Ok(()));
            } else if now.duration_since(c.started) >= CHURN_TIMEOUT {
                self.end_churn(i, Err(Failure::Stalled));
            }
        }
        for i in 0..self.load.bulk {
            // Pacing stops writing short of a full send buffer, so no
            // writable edge follows: the tick writes the next share.
            self.drive_bulk(lp, i, now);
            if self.bulk[i].is_none() && !self.ending {
                self.start_bulk(lp, i);
            }
        }
        for i in 0..self.udp.len() {
            self.tick_udp(i, now);
        }
    }

    /// The deadline: bulk streams drain, idle connections send their final
    /// message; churn and datagrams in flight finish on their own.
    fn begin_end(&mut self, lp: &mut EventLoop) {
        self.ending = true;
        let now = Instant::now();
        for i in 0..self.load.bulk {
            self.drive_bulk(lp, i, now);
        }
        for i in 0..IDLE {
            self.drive_idle(lp, i);
        }
    }

    /// The hard cap passed (or the poller broke): whatever is still open or
    /// in flight counts as stalled.
    fn abandon(&mut self) {
        for i in 0..IDLE {
            if let Some(conn) = self.idle[i].take() {
                self.retire(&conn, conn.echoed());
                self.tally.fail(Failure::Stalled);
            }
        }
        for i in 0..self.load.churn {
            if self.churn[i].is_some() {
                self.end_churn(i, Err(Failure::Stalled));
            }
        }
        for i in 0..self.load.bulk {
            if let Some(b) = self.bulk[i].take() {
                self.counts.bulk_bytes += b.conn.echoed();
                self.retire(&b.conn, b.conn.echoed());
                self.tally.fail(Failure::Stalled);
            }
        }
        for d in self.udp.iter_mut() {
            if let Some((seq, _)) = d.outstanding.take() {
                self.counts.udp_lost += 1;
                self.tally.fail(Failure::Lost { socket: d.id, seq });
            }
        }
    }

    // ---- idle ----

    fn drive_idle(&mut self, lp: &mut EventLoop, i: usize) {
        let Some(conn) = self.idle[i].as_mut() else {
            return;
        };
        let result = if self.ending {
            conn.write_to(self.pattern, IDLE_END)
                .and_then(|_| conn.read_to(self.pattern, &mut lp.buf, IDLE_END))
        } else {
            conn.check_idle(&mut lp.buf).map(|()| Step::Blocked)
        };
        match result {
            Ok(Step::Blocked) => {}
            Ok(Step::Done) => {
                if let Some(conn) = self.idle[i].take() {
                    self.counts.idle_held += 1;
                    self.held.push(conn);
                }
            }
            Err(failure) => {
                if let Some(conn) = self.idle[i].take() {
                    self.retire(&conn, conn.echoed());
                }
                self.tally.fail(failure);
            }
        }
    }

    // ---- churn ----

    fn start_churn(&mut self, lp: &EventLoop, i: usize, now: Instant) {
        let attempt = self.churn_started;
        self.churn_started += 1;
        let h = stream_base(attempt ^ 0x50a4_c4a1);
        let kind =
            [Kind::Plain, Kind::Reset, Kind::HalfClose, Kind::Vanish][(attempt % 4) as usize];
        let mut size = if h.is_multiple_of(8) {
            1 + (h >> 3) % (64 << 10)
        } else {
            1 + (h >> 3) % 512
        };
        match kind {
            Kind::Vanish => size = size.min(VANISH_MAX),
            Kind::HalfClose if h % 16 == 1 => size = 0,
            _ => {}
        }
        let linger = VANISH_MIN_MS + (h >> 20) % VANISH_SPREAD_MS;
        let source = self.ctx.cfg.source(attempt as usize);
        let base = stream_base(CHURN_IDS + attempt);
        let token = self.load.churn_tokens() + i;
        match open(lp, self.ctx.cfg.addr, source, token, base) {
            Ok(conn) => {
                self.churn[i] = Some(Churn {
                    conn,
                    kind,
                    size,
                    started: now,
                    shut: false,
                    peeked: 0,
                    drop_at: now + Duration::from_millis(linger),
                });
            }
            Err(failure) => self.tally.fail(failure),
        }
    }

    fn drive_churn(&mut self, lp: &mut EventLoop, i: usize) {
        let Some(c) = self.churn[i].as_mut() else {
            return;
        };
        match churn_step(c, self.pattern, &mut lp.buf) {
            Ok(false) => {}
            Ok(true) => self.end_churn(i, Ok(())),
            Err(failure) => self.end_churn(i, Err(failure)),
        }
    }

    /// Closes churn slot `i` the way its kind does, and counts it.
    fn end_churn(&mut self, i: usize, result: Result<(), Failure>) {
        let Some(c) = self.churn[i].take() else {
            return;
        };
        let confirmed = match c.kind {
            Kind::Vanish => c.peeked,
            _ => c.conn.echoed(),
        };
        self.retire(&c.conn, confirmed);
        match result {
            Ok(()) => {
                let n = match c.kind {
                    Kind::Plain => &mut self.counts.plain,
                    Kind::Reset => &mut self.counts.reset,
                    Kind::HalfClose => &mut self.counts.half_close,
                    Kind::Vanish => &mut self.counts.vanish,
                };
                *n += 1;
                if c.kind == Kind::Reset {
                    c.conn.close_abortive();
                }
                // The others just close: a FIN, or for the vanishing kind
                // (its echo unread) a reset from the kernel.
            }
            Err(failure) => self.tally.fail(failure),
        }
    }

    // ---- bulk ----

    fn start_bulk(&mut self, lp: &EventLoop, i: usize) {
        let n = self.bulk_started;
        self.bulk_started += 1;
        let source = self.ctx.cfg.source(n as usize);
        match open(
            lp,
            self.ctx.cfg.addr,
            source,
            self.load.bulk_tokens() + i,
            stream_base(BULK_IDS + n),
        ) {
            Ok(conn) => {
                self.bulk[i] = Some(Bulk {
                    conn,
                    started: Instant::now(),
                })
            }
            Err(failure) => self.tally.fail(failure),
        }
    }

    fn drive_bulk(&mut self, lp: &mut EventLoop, i: usize, now: Instant) {
        let Some(b) = self.bulk[i].as_mut() else {
            return;
        };
        let rate = self.load.bulk_rate;
        let result = bulk_step(b, self.pattern, &mut lp.buf, now, rate, self.ending);
        let done = match result {
            Ok(false) => return,
            Ok(true) => Ok(()),
            Err(failure) => Err(failure),
        };
        if let Some(b) = self.bulk[i].take() {
            self.counts.bulk_bytes += b.conn.echoed();
            self.retire(&b.conn, b.conn.echoed());
            match done {
                Ok(()) if b.conn.echoed() == BULK_BYTES => self.counts.bulk_streams += 1,
                Ok(()) => {} // drained at the deadline
                Err(failure) => self.tally.fail(failure),
            }
        }
    }

    // ---- udp ----

    fn open_udp(&mut self, lp: &EventLoop) {
        let Some(addr) = self.ctx.cfg.udp_addr else {
            return;
        };
        for (k, &size) in UDP_SIZES.iter().enumerate() {
            let token = Token(self.load.udp_tokens() + self.udp.len());
            let opened = super::udp::open(addr, 4 * (size + 1024)).and_then(|mut io| {
                lp.poll
                    .registry()
                    .register(&mut io, token, Interest::READABLE)
                    .map(|()| io)
            });
            match opened {
                Ok(io) => self.udp.push(Dgram {
                    io,
                    format: Format {
                        magic: self.ctx.udp_magic,
                        size,
                    },
                    id: k as u32,
                    next_seq: 0,
                    outstanding: None,
                    next_send: self.t0,
                    lost: Vec::new(),
                }),
                Err(e) => self.tally.fail(Failure::Connect(e)),
            }
        }
    }

    fn tick_udp(&mut self, i: usize, now: Instant) {
        let d = &mut self.udp[i];
        if let Some((seq, at)) = d.outstanding {
            if now.duration_since(at) < UDP_TIMEOUT {
                return;
            }
            d.outstanding = None;
            if d.lost.len() < 1024 {
                d.lost.push(seq);
            }
            self.counts.udp_lost += 1;
            self.tally.fail(Failure::Lost { socket: d.id, seq });
        }
        if self.ending || now < d.next_send {
            return;
        }
        let seq = d.next_seq;
        let mut datagram = d.format.header(d.id, seq).to_vec();
        datagram.extend_from_slice(d.format.payload(self.pattern, d.id, seq));
        match d.io.send(&datagram) {
            Ok(_) => {
                d.outstanding = Some((seq, now));
                d.next_seq += 1;
                d.next_send = now + UDP_INTERVAL;
                self.counts.udp_sent += 1;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => {
                // E.g. refused: retried, but only at the datagram pace.
                d.next_send = now + UDP_INTERVAL;
                self.tally.fail(Failure::Io(e));
            }
        }
    }

    fn receive_udp(&mut self, lp: &mut EventLoop, i: usize) {
        let d = &mut self.udp[i];
        // One byte more than expected, so a longer reply shows as such.
        let buf = &mut lp.buf[..d.format.size + 1];
        for _ in 0..1024 {
            let n = match d.io.recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.tally.fail(Failure::Io(e));
                    return;
                }
            };
            let fault = match d
                .format
                .check(self.pattern, d.id, d.next_seq, &buf[..n], false)
            {
                Ok(seq) if d.outstanding.is_some_and(|(s, _)| s == seq) => {
                    d.outstanding = None;
                    self.counts.udp_answered += 1;
                    self.counts.udp_bytes += n as u64;
                    continue;
                }
                Ok(seq) => match d.lost.iter().position(|&s| s == seq) {
                    Some(k) => {
                        d.lost.swap_remove(k);
                        self.counts.udp_late += 1;
                        self.counts.udp_bytes += n as u64;
                        continue;
                    }
                    None => Fault::Duplicate { seq },
                },
                Err(fault) => fault,
            };
            self.tally.fail(Failure::Datagram {
                socket: d.id,
                fault,
            });
        }
    }
}

/// One event's worth of work on a churning connection; true once it has
/// done what its kind does and may be closed.
fn churn_step(c: &mut Churn, pattern: &Pattern, buf: &mut [u8]) -> Result<bool, Failure> {
    let conn = &mut c.conn;
    if !conn.established()? {
        return Ok(false);
    }
    let written = conn.write_to(pattern, c.size)? == Step::Done;
    match c.kind {
        Kind::Plain | Kind::Reset => Ok(conn.read_to(pattern, buf, c.size)? == Step::Done),
        Kind::HalfClose => {
            if !written {
                // Read while writing, or a large message deadlocks.
                conn.read_to(pattern, buf, c.size)?;
                return Ok(false);
            }
            if !c.shut {
                conn.shutdown_write()?;
                c.shut = true;
            }
            if conn.read_to(pattern, buf, c.size)? == Step::Blocked {
                return Ok(false);
            }
            Ok(conn.read_eof(buf)? == Step::Done)
        }
        Kind::Vanish => {
            if written && c.peeked < c.size {
                c.peeked = conn.peek_echo(pattern, buf)?;
            }
            // The drop itself waits for the tick (`drop_at`).
            Ok(false)
        }
    }
}

/// Writes a bulk stream's paced share and reads what has come back; true
/// once done: all [`BULK_BYTES`] echoed or, when `ending`, everything
/// written so far. `rate`: bytes a second.
fn bulk_step(
    b: &mut Bulk,
    pattern: &Pattern,
    buf: &mut [u8],
    now: Instant,
    rate: u64,
    ending: bool,
) -> Result<bool, Failure> {
    let conn = &mut b.conn;
    if !conn.established()? {
        return Ok(false);
    }
    let end = if ending { conn.sent() } else { BULK_BYTES };
    conn.write_to(
        pattern,
        end.min(paced(now.saturating_duration_since(b.started), rate)),
    )?;
    Ok(conn.read_to(pattern, buf, end)? == Step::Done)
}

/// Bytes a bulk stream may have written `elapsed` into it at `rate` bytes a
/// second: its share so far plus [`BULK_BURST`].
fn paced(elapsed: Duration, rate: u64) -> u64 {
    BULK_BURST.saturating_add((elapsed.as_secs_f64() * rate as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_load_is_the_ci_mix() {
        let d = Load::default();
        assert_eq!((d.churn, d.churn_rate, d.bulk), (48, 200, 2));
        assert_eq!(d.bulk_rate, 16 << 20);
        // 100 idle + 48 churn + 2 bulk, and 4 UDP sockets.
        assert_eq!(d.units(false), 150);
        assert_eq!(d.units(true), 154);
    }

    #[test]
    fn tokens_follow_the_runtime_counts() {
        let l = Load {
            churn: 500,
            churn_rate: 5000,
            bulk: 3,
            bulk_rate: 1 << 20,
        };
        assert_eq!(l.slot(0), Slot::Idle(0));
        assert_eq!(l.slot(IDLE - 1), Slot::Idle(IDLE - 1));
        assert_eq!(l.slot(IDLE), Slot::Churn(0));
        assert_eq!(l.slot(IDLE + 499), Slot::Churn(499));
        assert_eq!(l.slot(IDLE + 500), Slot::Bulk(0));
        assert_eq!(l.slot(IDLE + 502), Slot::Bulk(2));
        assert_eq!(l.slot(IDLE + 503), Slot::Udp(0));
        assert_eq!(l.units(true), IDLE + 503 + UDP_SIZES.len());
        // Every token of every kind maps back to itself.
        for t in 0..l.units(true) {
            let back = match l.slot(t) {
                Slot::Idle(i) => i,
                Slot::Churn(i) => l.churn_tokens() + i,
                Slot::Bulk(i) => l.bulk_tokens() + i,
                Slot::Udp(i) => l.udp_tokens() + i,
            };
            assert_eq!(back, t);
        }
    }

    #[test]
    fn churn_pace_and_the_slots_it_needs() {
        let l = Load {
            churn_rate: 4000,
            ..Load::default()
        };
        assert_eq!(l.churn_due(Duration::ZERO), 0);
        assert_eq!(l.churn_due(Duration::from_millis(250)), 1000);
        assert_eq!(l.churn_due(Duration::from_secs(300)), 1_200_000);
        // A quarter of 4000/s held ~110 ms is ~110 at once; twice that.
        assert_eq!(l.churn_needed(), 228);
        assert!(Load::default().churn_needed() <= CHURN);
    }

    #[test]
    fn bulk_pace_is_burst_plus_rate() {
        assert_eq!(paced(Duration::ZERO, BULK_RATE), BULK_BURST);
        assert_eq!(
            paced(Duration::from_millis(500), BULK_RATE),
            BULK_BURST + (8 << 20)
        );
        assert_eq!(
            paced(Duration::from_secs(1), 64 << 20),
            BULK_BURST + (64 << 20)
        );
        assert_eq!(paced(Duration::MAX, u64::MAX), u64::MAX);
    }
}
