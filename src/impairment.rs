//! Seeded impairments of the echo, for testing clients: the reply in pieces
//! of random sizes, a delay before each piece, a bandwidth, a reset, close
//! or stall after so many bytes; for UDP, replies dropped, duplicated,
//! reordered and delayed.
//!
//! Everything here is a value: [`Impairments`] (what was asked for), a
//! [`Plan`] per connection (the decisions, drawn from a generator seeded by
//! the server's seed and the connection's index) and [`SourcePlans`] for
//! UDP sources. The engines only differ in how they wait for a deadline the
//! plan gives: a thread sleeps, an event loop keeps it as a timer. No
//! socket is touched here (std only), so the decisions are unit-tested
//! without one.

use crate::shutdown::Shutdown;
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How the echo is impaired; nothing by default.
///
/// Given to [`ServerBuilder::impair`](crate::ServerBuilder::impair) (or
/// the command line's `--chunk`, `--delay`, ...). Every choice is drawn
/// from a generator seeded by [`seed`](Impairments::seed) and the
/// connection's (or UDP source's) index, so the same seed gives the same
/// pieces, resets and drops, run after run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairments {
    pub(crate) chunk: Option<(usize, usize)>,
    pub(crate) delay: Option<(Duration, Duration)>,
    pub(crate) rate: Option<u64>,
    pub(crate) end: Option<End>,
    pub(crate) drop: f64,
    pub(crate) duplicate: f64,
    pub(crate) reorder: f64,
    pub(crate) seed: Option<u64>,
    pub(crate) ports: Vec<u16>,
}

/// How an impaired connection ends once it has echoed so many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Reset (RST) after a number of bytes drawn from the range.
    Reset(u64, u64),
    /// Closed cleanly (FIN).
    Close(u64),
    /// Neither read nor written again, until a timeout ends it.
    Stall(u64),
}

/// What an impaired connection's echo does instead of going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Reset,
    Close,
    Stall,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ending::Reset => "impairment: reset (--reset-after)",
            Ending::Close => "impairment: closed (--close-after)",
            Ending::Stall => "impairment: stalled (--stall-after)",
        })
    }
}

impl std::error::Error for Ending {}

/// The `Ending` an error of an [`Impaired`] stream stands for, if any.
pub(crate) fn ending(e: &io::Error) -> Option<Ending> {
    e.get_ref()?.downcast_ref::<Ending>().copied()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, msg)
}

fn probability(what: &str, p: f64) -> io::Result<f64> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(invalid(format!("{what} is a probability, 0 to 1, not {p}")))
    }
}

impl Impairments {
    /// No impairment (the default).
    pub fn new() -> Impairments {
        Impairments::default()
    }

    /// The echo goes back in pieces of `min..=max` bytes (drawn for each),
    /// each its own write, with `TCP_NODELAY` so that they leave apart.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for 0 or `min > max`.
    pub fn chunk(mut self, min: usize, max: usize) -> io::Result<Self> {
        if min == 0 || min > max {
            return Err(invalid(format!(
                "a chunk range is 1 or more bytes, MIN <= MAX: not {min}-{max}"
            )));
        }
        self.chunk = Some((min, max));
        Ok(self)
    }

    /// A delay of `min..=max` before each piece (TCP) or reply (UDP).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `min > max`.
    pub fn delay(mut self, min: Duration, max: Duration) -> io::Result<Self> {
        if min > max {
            return Err(invalid(format!(
                "a delay range needs MIN <= MAX: not {}-{} ms",
                min.as_millis(),
                max.as_millis()
            )));
        }
        self.delay = Some((min, max));
        Ok(self)
    }

    /// Each connection's echo is paced to `bytes_per_second`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for 0.
    pub fn rate(mut self, bytes_per_second: u64) -> io::Result<Self> {
        if bytes_per_second == 0 {
            return Err(invalid("a rate is at least 1 byte per second".to_owned()));
        }
        self.rate = Some(bytes_per_second);
        Ok(self)
    }

    fn ending(mut self, end: End) -> io::Result<Self> {
        if self.end.is_some_and(|old| old != end) {
            return Err(invalid(
                "only one of --reset-after, --close-after and --stall-after can be given"
                    .to_owned(),
            ));
        }
        self.end = Some(end);
        Ok(self)
    }

    /// After echoing `min..=max` bytes (drawn per connection) the
    /// connection is reset (RST, not FIN).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `min > max`, or with another ending.
    pub fn reset_after(self, min: u64, max: u64) -> io::Result<Self> {
        if min > max {
            return Err(invalid(format!(
                "a byte range needs MIN <= MAX: not {min}-{max}"
            )));
        }
        self.ending(End::Reset(min, max))
    }

    /// After echoing `bytes` the connection is closed cleanly.
    ///
    /// # Errors
    ///
    /// `InvalidInput` with another ending.
    pub fn close_after(self, bytes: u64) -> io::Result<Self> {
        self.ending(End::Close(bytes))
    }

    /// After echoing `bytes` the server neither reads nor writes the
    /// connection again; its idle (or write) timeout ends it.
    ///
    /// # Errors
    ///
    /// `InvalidInput` with another ending.
    pub fn stall_after(self, bytes: u64) -> io::Result<Self> {
        self.ending(End::Stall(bytes))
    }

    /// UDP: each reply is dropped with probability `p`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `p` outside 0 to 1.
    pub fn drop(mut self, p: f64) -> io::Result<Self> {
        self.drop = probability("--drop", p)?;
        Ok(self)
    }

    /// UDP: each reply is sent twice with probability `p`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `p` outside 0 to 1.
    pub fn duplicate(mut self, p: f64) -> io::Result<Self> {
        self.duplicate = probability("--duplicate", p)?;
        Ok(self)
    }

    /// UDP: each reply is held back with probability `p` and sent after
    /// the next reply to the same source.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `p` outside 0 to 1.
    pub fn reorder(mut self, p: f64) -> io::Result<Self> {
        self.reorder = probability("--reorder", p)?;
        Ok(self)
    }

    /// The seed every choice is drawn from; without one the server draws
    /// one at start-up and logs it.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The seed, as given or drawn.
    pub fn seed_value(&self) -> Option<u64> {
        self.seed
    }

    /// Impair only listeners on these ports (others stay clean); by
    /// default every listener is impaired.
    pub fn ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.ports = ports.into_iter().collect();
        self
    }

    /// Whether anything at all is impaired.
    pub fn is_on(&self) -> bool {
        self.affects_streams() || self.affects_datagrams()
    }

    /// Whether a stream's echo is changed.
    pub(crate) fn affects_streams(&self) -> bool {
        self.chunk.is_some() || self.delay.is_some() || self.rate.is_some() || self.end.is_some()
    }

    /// Whether UDP replies are changed.
    pub(crate) fn affects_datagrams(&self) -> bool {
        self.delay.is_some() || self.drop > 0.0 || self.duplicate > 0.0 || self.reorder > 0.0
    }

    /// Whether a listener on `port` (`None`: a Unix socket) is impaired.
    pub(crate) fn applies_to(&self, port: Option<u16>) -> bool {
        self.ports.is_empty() || port.is_some_and(|p| self.ports.contains(&p))
    }

    /// The seed, drawing one (from the clock and the process, which is
    /// enough to differ between runs) when none was given.
    pub(crate) fn with_seed(mut self) -> Self {
        if self.seed.is_none() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            self.seed = Some(mix(nanos ^ u64::from(std::process::id()).rotate_left(32)));
        }
        self
    }
}

/// SplitMix64's finaliser (Steele, Lea and Flood, "Fast splittable
/// pseudorandom number generators", OOPSLA 2014; the constants of Vigna's
/// reference `splitmix64.c`).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64: a few lines, written here so that the sequence a seed gives
/// is fixed forever, on every platform (rand's `StdRng` and `SmallRng` may
/// change between versions). Not for secrets.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Rng {
    /// The generator of the connection (or source) `index` of a server
    /// seeded with `seed`: the index is mixed in, so that neighbouring
    /// indices give unrelated sequences.
    pub(crate) fn new(seed: u64, index: u64) -> Rng {
        Rng(seed ^ mix(index.wrapping_add(GOLDEN)))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `min..=max` (Lemire's multiply-shift: no modulo).
    pub(crate) fn between(&mut self, min: u64, max: u64) -> u64 {
        let span = u128::from(max - min) + 1;
        min + ((u128::from(self.next_u64()) * span) >> 64) as u64
    }

    /// `true` with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        // 53 random bits: a uniform float in [0, 1).
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn delay(&mut self, range: Option<(Duration, Duration)>) -> Duration {
        range.map_or(Duration::ZERO, |(min, max)| {
            let (min, max) = (min.as_micros() as u64, max.as_micros() as u64);
            Duration::from_micros(self.between(min, max))
        })
    }
}

/// What a stream should do next with the bytes it has to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Write at most this many bytes now.
    Write(usize),
    /// Write nothing before this instant.
    Wait(Instant),
    /// Stop echoing.
    End(Ending),
}

/// One connection's impairments: the next piece, its delay and pacing, and
/// how many bytes are left before the connection ends.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    rng: Rng,
    index: u64,
    chunk: Option<(usize, usize)>,
    delay: Option<(Duration, Duration)>,
    rate: Option<u64>,
    /// Bytes left of the piece being written.
    piece_left: usize,
    /// When the piece being written may start.
    piece_at: Option<Instant>,
    /// Pacing: when the next byte may go.
    paced_until: Option<Instant>,
    /// Bytes to echo before `ending`.
    budget: Option<u64>,
    ending: Option<Ending>,
    /// Ever stalled (counted once).
    stalled: bool,
}

/// Without `--chunk`, a paced piece is what the rate allows in this long:
/// fine enough that the rate holds over a fraction of a second.
const PACING_SLICE: u64 = 50;

impl Plan {
    /// The plan of connection `index` under `imp` (seeded).
    pub(crate) fn new(imp: &Impairments, index: u64) -> Plan {
        let mut rng = Rng::new(imp.seed.unwrap_or(0), index);
        let (budget, ending) = match imp.end {
            None => (None, None),
            Some(End::Reset(min, max)) => (Some(rng.between(min, max)), Some(Ending::Reset)),
            Some(End::Close(n)) => (Some(n), Some(Ending::Close)),
            Some(End::Stall(n)) => (Some(n), Some(Ending::Stall)),
        };
        Plan {
            rng,
            index,
            chunk: imp.chunk,
            delay: imp.delay,
            rate: imp.rate,
            piece_left: 0,
            piece_at: None,
            paced_until: None,
            budget,
            ending,
            stalled: false,
        }
    }

    /// Its index among the server's impaired connections.
    pub(crate) fn index(&self) -> u64 {
        self.index
    }

    /// How it ends now, once its budget is spent.
    pub(crate) fn ended(&self) -> Option<Ending> {
        self.ending.filter(|_| self.budget == Some(0))
    }

    /// What to do with `want` bytes to write, at `now`.
    pub(crate) fn next(&mut self, want: usize, now: Instant) -> Next {
        if let Some(ending) = self.ended() {
            return Next::End(ending);
        }
        if self.piece_left == 0 {
            self.piece_left = match (self.chunk, self.rate) {
                (Some((min, max)), _) => self.rng.between(min as u64, max as u64) as usize,
                (None, Some(rate)) => want.min((rate / (1000 / PACING_SLICE)).max(1) as usize),
                (None, None) => want,
            };
            let delay = self.rng.delay(self.delay);
            let start = self.paced_until.map_or(now, |p| p.max(now));
            self.piece_at = Some(start + delay);
        }
        if let Some(at) = self.piece_at {
            if now < at {
                return Next::Wait(at);
            }
        }
        let mut n = want.min(self.piece_left);
        if let Some(budget) = self.budget {
            n = n.min(usize::try_from(budget).unwrap_or(usize::MAX));
        }
        Next::Write(n)
    }

    /// `n` bytes of what [`next`](Plan::next) allowed were written at
    /// `now`. Returns whether a piece was begun with them.
    pub(crate) fn wrote(&mut self, n: usize, now: Instant) -> bool {
        let began = self.piece_at.take().is_some();
        self.piece_left = self.piece_left.saturating_sub(n);
        if let Some(budget) = &mut self.budget {
            *budget = budget.saturating_sub(n as u64);
        }
        if let Some(rate) = self.rate {
            let cost = Duration::from_nanos(
                u64::try_from(n as u128 * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX),
            );
            self.paced_until = Some(self.paced_until.map_or(now, |p| p.max(now)) + cost);
        }
        began
    }

    /// Drops the delays and the pacing from now on (shutdown: what is left
    /// of the echo goes at once); pieces and the ending stay.
    pub(crate) fn hurry(&mut self) {
        self.delay = None;
        self.rate = None;
        // Due now (still counted as a piece when it goes).
        self.piece_at = self.piece_at.map(|_| Instant::now());
        self.paced_until = None;
    }

    /// Whether it has reached its stall (the first time only: counted once).
    pub(crate) fn first_stall(&mut self) -> bool {
        !std::mem::replace(&mut self.stalled, true)
    }

    /// The sizes of the first `n` pieces of a long echo: what a client of
    /// the same seed and index will see (for tests).
    #[cfg(test)]
    pub(crate) fn piece_sizes(&mut self, n: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let now = Instant::now();
        while sizes.len() < n {
            match self.next(usize::MAX, now) {
                Next::Write(k) => {
                    self.wrote(k, now);
                    sizes.push(k);
                }
                _ => break,
            }
        }
        sizes
    }
}

/// A stream whose writes follow a [`Plan`]: at most a piece per write, no
/// write before its time, an error standing for the ending
/// ([`ending`] tells which) once the budget is spent.
///
/// `blocking`: wait by sleeping (a thread of its own), cut short by a
/// shutdown request, after which the plan's delays and pacing are dropped
/// so the drain is not held up by a delay of an hour; otherwise (`None`) a
/// write that must wait says `WouldBlock` and leaves the instant in
/// `wake_at`, for an event loop's timer (which shutdown already reaches).
#[derive(Debug)]
pub(crate) struct Impaired<'a, S> {
    pub(crate) inner: S,
    pub(crate) plan: &'a mut Plan,
    /// Counts the pieces begun.
    pub(crate) pieces: &'a AtomicU64,
    /// Counts the connections stalled.
    pub(crate) stalls: &'a AtomicU64,
    pub(crate) blocking: Option<&'a Shutdown>,
    pub(crate) wake_at: Option<Instant>,
}

impl<S: Read + Write> Read for Impaired<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Once the budget is spent nothing more is read either: a stalled
        // connection leaves the client's bytes in the socket.
        if let Some(ending) = self.plan.ended() {
            return Err(self.end(ending));
        }
        self.inner.read(buf)
    }
}

impl<S: Read + Write> Impaired<'_, S> {
    fn end(&mut self, ending: Ending) -> io::Error {
        if ending == Ending::Stall {
            if self.plan.first_stall() {
                self.stalls.fetch_add(1, Relaxed);
            }
            if self.blocking.is_none() {
                // Nothing more happens: the event loop's sweep ends it at
                // its timeout.
                return ErrorKind::WouldBlock.into();
            }
        }
        io::Error::other(ending)
    }
}

impl<S: Read + Write> Write for Impaired<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let now = Instant::now();
            match self.plan.next(buf.len(), now) {
                Next::End(ending) => {
                    // What was echoed goes out before the reset or close:
                    // over TLS it may still be records in the session.
                    // Best effort: an error here is the connection's end
                    // anyway, and the ending follows.
                    let _ = self.inner.flush();
                    return Err(self.end(ending));
                }
                Next::Wait(at) => {
                    if let Some(shutdown) = self.blocking {
                        if shutdown.sleep(at - now) {
                            self.plan.hurry();
                        }
                        continue;
                    }
                    self.wake_at = Some(at);
                    return Err(ErrorKind::WouldBlock.into());
                }
                Next::Write(n) => {
                    let written = self.inner.write(&buf[..n])?;
                    if self.plan.wrote(written, Instant::now()) {
                        self.pieces.fetch_add(1, Relaxed);
                    }
                    // Each piece leaves now, at its time, not at the echo
                    // core's flush after the whole chunk: over TLS a piece
                    // is a record held in the session until flushed. The
                    // bytes are taken either way, so a flush that cannot
                    // finish (a full socket) is not this write's error;
                    // the records go with the next write or flush.
                    let _ = self.inner.flush();
                    return Ok(written);
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()?;
        // The budget just spent: the ending comes now, not at the next
        // read (which a client that sent exactly this much never causes).
        if let Some(ending) = self.plan.ended() {
            return Err(self.end(ending));
        }
        Ok(())
    }
}

/// What becomes of one UDP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fate {
    pub(crate) drop: bool,
    pub(crate) duplicate: bool,
    /// Held back, sent after the source's next reply.
    pub(crate) hold: bool,
    pub(crate) delay: Duration,
}

/// At most this many UDP sources are remembered; when full the map starts
/// afresh (and the indices go on from where they were).
const MAX_SOURCES: usize = 65_536;

/// The UDP sources seen, each with its index (first-seen order, over every
/// receive thread of the server) and its generator.
#[derive(Debug)]
pub(crate) struct SourcePlans {
    imp: Impairments,
    sources: HashMap<SocketAddr, (u64, Rng)>,
    next_index: u64,
}

impl SourcePlans {
    pub(crate) fn new(imp: &Impairments) -> SourcePlans {
        SourcePlans {
            imp: imp.clone(),
            sources: HashMap::new(),
            next_index: 0,
        }
    }

    /// The fate of the next reply to `source`, and the source's index.
    pub(crate) fn decide(&mut self, source: SocketAddr) -> (Fate, u64) {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            self.sources.clear();
        }
        let (seed, next) = (self.imp.seed.unwrap_or(0), &mut self.next_index);
        let (index, rng) = self.sources.entry(source).or_insert_with(|| {
            let index = *next;
            *next += 1;
            log::debug!("{source}: impaired UDP source, index {index}");
            (index, Rng::new(seed, index))
        });
        // Every draw is made whatever the earlier ones said, so that one
        // decision never shifts the sequence of another.
        let fate = Fate {
            drop: rng.chance(self.imp.drop),
            duplicate: rng.chance(self.imp.duplicate),
            hold: rng.chance(self.imp.reorder),
            delay: rng.delay(self.imp.delay),
        };
        (fate, *index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator is SplitMix64 exactly: the first outputs of Vigna's
    /// reference for the state 1234567, and a pinned sequence for a
    /// connection, which must never change (seeds are written in bug
    /// reports).
    #[test]
    fn the_sequence_is_pinned() {
        let mut reference = Rng(1_234_567);
        assert_eq!(
            [
                reference.next_u64(),
                reference.next_u64(),
                reference.next_u64()
            ],
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
        let imp = Impairments::new().chunk(1, 100).unwrap().seed(42);
        let sizes = Plan::new(&imp, 0).piece_sizes(8);
        assert_eq!(sizes, PINNED);
    }

    const PINNED: [usize; 8] = [31, 48, 30, 67, 37, 52, 47, 47];

    #[test]
    fn same_seed_same_pieces_other_seed_or_index_other_pieces() {
        let imp = Impairments::new().chunk(1, 1000).unwrap().seed(7);
        let a = Plan::new(&imp, 3).piece_sizes(50);
        assert_eq!(a, Plan::new(&imp, 3).piece_sizes(50));
        assert_ne!(a, Plan::new(&imp, 4).piece_sizes(50));
        assert_ne!(a, Plan::new(&imp.clone().seed(8), 3).piece_sizes(50));
        assert!(a.iter().all(|&n| (1..=1000).contains(&n)));
    }

    #[test]
    fn between_stays_in_range_and_reaches_both_ends() {
        let mut rng = Rng::new(1, 1);
        let draws: Vec<u64> = (0..1000).map(|_| rng.between(3, 5)).collect();
        assert!(draws.iter().all(|d| (3..=5).contains(d)));
        assert!(draws.contains(&3) && draws.contains(&5));
        assert_eq!(rng.between(9, 9), 9);
        rng.between(0, u64::MAX);
    }

    /// `--drop 0.1` over 10,000 datagrams of one source: within four
    /// standard deviations of the binomial mean (1000 ± 120), for a fixed
    /// seed (so the test cannot flake), and the same drops for the same
    /// seed.
    #[test]
    fn drops_follow_the_binomial_and_the_seed() {
        let imp = Impairments::new().drop(0.1).unwrap().seed(2026);
        let source: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let run = |imp: &Impairments| {
            let mut plans = SourcePlans::new(imp);
            (0..10_000)
                .map(|_| plans.decide(source).0.drop)
                .collect::<Vec<bool>>()
        };
        let drops = run(&imp);
        let dropped = drops.iter().filter(|d| **d).count();
        assert!((880..=1120).contains(&dropped), "{dropped} dropped");
        assert_eq!(drops, run(&imp));
        assert_ne!(drops, run(&imp.clone().seed(2027)));
    }

    #[test]
    fn sources_are_indexed_in_first_seen_order() {
        let mut plans = SourcePlans::new(&Impairments::new().seed(1));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(plans.decide(b).1, 0);
        assert_eq!(plans.decide(a).1, 1);
        assert_eq!(plans.decide(b).1, 0);
    }

    /// The inverse of `mix` (each xor-shift and odd multiplication undone),
    /// to make a generator whose next output is chosen.
    fn unmix(mut z: u64) -> u64 {
        // The inverse of an odd number modulo 2^64 (Newton's iteration).
        let inverse = |c: u64| {
            (0..6).fold(c, |x, _| {
                x.wrapping_mul(2u64.wrapping_sub(c.wrapping_mul(x)))
            })
        };
        z ^= (z >> 31) ^ (z >> 62);
        z = z.wrapping_mul(inverse(0x94D0_49BB_1331_11EB));
        z ^= (z >> 27) ^ (z >> 54);
        z = z.wrapping_mul(inverse(0xBF58_476D_1CE4_E5B9));
        z ^ (z >> 30) ^ (z >> 60)
    }

    /// A generator whose next output is `out`.
    fn about_to_give(out: u64) -> Rng {
        Rng(unmix(out).wrapping_sub(GOLDEN))
    }

    /// `chance(p)` is `true` for a draw u in [0, 1) exactly when u < p:
    /// a draw of exactly 0.5 is not a chance of 0.5, one just below is.
    #[test]
    fn chance_is_below_p_not_at_it() {
        assert_eq!(about_to_give(12345).next_u64(), 12345);
        assert!(!about_to_give(1 << 63).chance(0.5));
        assert!(about_to_give((1 << 63) - (1 << 11)).chance(0.5));
        assert!(about_to_give(u64::MAX).chance(1.0));
        assert!(!about_to_give(0).chance(0.0));
    }

    /// A probability of 0 draws nothing: with `--drop 0` (the default) a
    /// source's other decisions are what they would be without the option,
    /// here its holds exactly the draws of the reorder chance alone.
    #[test]
    fn a_zero_probability_draws_nothing() {
        let source: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let holds = |imp: Impairments| {
            let mut plans = SourcePlans::new(&imp.seed(3));
            (0..16)
                .map(|_| plans.decide(source).0.hold)
                .collect::<Vec<_>>()
        };
        let with_zeros = holds(Impairments::new().reorder(0.5).unwrap().drop(0.0).unwrap());
        let mut rng = Rng::new(3, 0);
        let by_hand: Vec<bool> = (0..16).map(|_| rng.chance(0.5)).collect();
        assert_eq!(with_zeros, by_hand);
    }

    /// When 65,536 sources are remembered, a new one starts the map afresh
    /// (the indices go on); a source already known keeps its index.
    #[test]
    fn the_source_map_is_bounded_and_keeps_known_sources() {
        let mut plans = SourcePlans::new(&Impairments::new().seed(1));
        let addr =
            |i: usize| SocketAddr::from(([127, 0, (i >> 8) as u8, i as u8], 1 + (i >> 16) as u16));
        for i in 0..MAX_SOURCES {
            assert_eq!(plans.decide(addr(i)).1, i as u64);
        }
        // Known: kept, nothing cleared.
        assert_eq!(plans.decide(addr(7)).1, 7);
        assert_eq!(plans.sources.len(), MAX_SOURCES);
        // New: the map starts afresh, the index goes on.
        assert_eq!(plans.decide(addr(MAX_SOURCES)).1, MAX_SOURCES as u64);
        assert_eq!(plans.sources.len(), 1);
    }

    /// A plan knows its index; it counts its stall once; `hurry` (shutdown)
    /// lets a piece waiting out its delay go at once.
    #[test]
    fn index_stall_and_hurry() {
        let imp = Impairments::new()
            .delay(Duration::from_secs(600), Duration::from_secs(600))
            .unwrap()
            .stall_after(100)
            .unwrap();
        let mut plan = Plan::new(&imp, 5);
        assert_eq!(plan.index(), 5);
        assert!(plan.first_stall());
        assert!(!plan.first_stall());
        let now = Instant::now();
        assert!(
            matches!(plan.next(10, now), Next::Wait(at) if at >= now + Duration::from_secs(599))
        );
        plan.hurry();
        assert_eq!(plan.next(10, Instant::now()), Next::Write(10));
    }

    /// An in-memory peer: what is written, and bytes to read.
    struct Peer {
        written: Vec<u8>,
        writes: Vec<usize>,
        flushes: usize,
        to_read: &'static [u8],
    }

    impl Read for Peer {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.to_read.len().min(buf.len());
            buf[..n].copy_from_slice(&self.to_read[..n]);
            self.to_read = &self.to_read[n..];
            Ok(n)
        }
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            self.writes.push(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    fn peer(to_read: &'static [u8]) -> Peer {
        Peer {
            written: Vec::new(),
            writes: Vec::new(),
            flushes: 0,
            to_read,
        }
    }

    /// Through `Impaired`: pieces of the plan's sizes, each flushed as it
    /// goes; reads pass through; once the budget is spent, reads, writes
    /// and the flush all say how the connection ends (a stall on an event
    /// loop: `WouldBlock`, counted once).
    #[test]
    fn an_impaired_stream_writes_pieces_and_then_ends() {
        let imp = Impairments::new()
            .chunk(2, 2)
            .unwrap()
            .reset_after(5, 5)
            .unwrap();
        let mut plan = Plan::new(&imp, 0);
        let (pieces, stalls) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut inner = peer(b"abc");
        let mut stream = Impaired {
            inner: &mut inner,
            plan: &mut plan,
            pieces: &pieces,
            stalls: &stalls,
            blocking: None,
            wake_at: None,
        };
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(stream.write(b"hello world").unwrap(), 2);
        assert_eq!(stream.write(b"llo world").unwrap(), 2);
        assert_eq!(stream.write(b"o world").unwrap(), 1);
        let end = stream.write(b" world").unwrap_err();
        assert_eq!(ending(&end), Some(Ending::Reset));
        assert_eq!(ending(&stream.flush().unwrap_err()), Some(Ending::Reset));
        assert_eq!(
            ending(&stream.read(&mut buf).unwrap_err()),
            Some(Ending::Reset)
        );
        assert_eq!(inner.written, b"hello");
        assert_eq!(inner.writes, [2, 2, 1]);
        // Each piece flushed as it went, and once more before the reset.
        assert!(inner.flushes >= 4, "{} flushes", inner.flushes);
        assert_eq!(pieces.load(Relaxed), 3);

        let imp = Impairments::new().stall_after(1).unwrap();
        let mut plan = Plan::new(&imp, 0);
        let mut inner = peer(b"");
        let mut stream = Impaired {
            inner: &mut inner,
            plan: &mut plan,
            pieces: &pieces,
            stalls: &stalls,
            blocking: None,
            wake_at: None,
        };
        assert_eq!(stream.write(b"xy").unwrap(), 1);
        for _ in 0..3 {
            let e = stream.flush().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::WouldBlock);
        }
        assert_eq!(stalls.load(Relaxed), 1);
        // On a thread of its own the stall is an ending, not a wait.
        let shutdown = Shutdown::default();
        stream.blocking = Some(&shutdown);
        assert_eq!(ending(&stream.flush().unwrap_err()), Some(Ending::Stall));
        assert_eq!(ending(&io::Error::other("other")), None);
        assert_eq!(
            Ending::Stall.to_string(),
            "impairment: stalled (--stall-after)"
        );
    }

    /// An event loop's stream says when to come back instead of sleeping;
    /// a thread's sleeps (here 20 ms) and writes.
    #[test]
    fn a_wait_is_a_deadline_on_a_loop_and_a_sleep_on_a_thread() {
        let d = Duration::from_millis(20);
        let imp = Impairments::new().delay(d, d).unwrap();
        let (pieces, stalls) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut plan = Plan::new(&imp, 0);
        let mut inner = peer(b"");
        let start = Instant::now();
        let mut stream = Impaired {
            inner: &mut inner,
            plan: &mut plan,
            pieces: &pieces,
            stalls: &stalls,
            blocking: None,
            wake_at: None,
        };
        assert_eq!(
            stream.write(b"x").unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        assert!(stream.wake_at.is_some_and(|at| at >= start + d));
        let shutdown = Shutdown::default();
        stream.blocking = Some(&shutdown);
        assert_eq!(stream.write(b"x").unwrap(), 1);
        assert!(start.elapsed() >= d);
    }

    #[test]
    fn the_budget_caps_writes_then_ends() {
        let imp = Impairments::new().reset_after(10, 10).unwrap();
        let mut plan = Plan::new(&imp, 0);
        let now = Instant::now();
        assert_eq!(plan.next(64, now), Next::Write(10));
        plan.wrote(4, now);
        assert_eq!(plan.next(64, now), Next::Write(6));
        plan.wrote(6, now);
        assert_eq!(plan.next(64, now), Next::End(Ending::Reset));
    }

    #[test]
    fn a_delay_and_a_rate_are_deadlines() {
        let imp = Impairments::new()
            .delay(Duration::from_millis(50), Duration::from_millis(50))
            .unwrap()
            .rate(1000)
            .unwrap();
        let mut plan = Plan::new(&imp, 0);
        let now = Instant::now();
        // 1000 B/s: pieces of 50 bytes (50 ms each).
        assert_eq!(
            plan.next(500, now),
            Next::Wait(now + Duration::from_millis(50))
        );
        let later = now + Duration::from_millis(50);
        assert_eq!(plan.next(500, later), Next::Write(50));
        assert!(plan.wrote(50, later));
        // Paced: 50 bytes cost 50 ms, then the next piece's own delay.
        assert_eq!(
            plan.next(450, later),
            Next::Wait(later + Duration::from_millis(100))
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let imp = Impairments::new();
        assert!(imp.clone().chunk(0, 1).is_err());
        assert!(imp.clone().chunk(5, 4).is_err());
        assert!(imp.clone().rate(0).is_err());
        assert!(imp.clone().drop(1.5).is_err());
        assert!(imp.clone().drop(f64::NAN).is_err());
        assert!(imp.clone().reorder(-0.1).is_err());
        assert!(imp
            .clone()
            .delay(Duration::from_millis(5), Duration::from_millis(4))
            .is_err());
        assert!(imp.clone().reset_after(5, 4).is_err());
        assert!(imp
            .clone()
            .reset_after(1, 2)
            .unwrap()
            .close_after(3)
            .is_err());
        assert!(!imp.is_on());
    }
}
