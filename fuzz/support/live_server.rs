//! What the live-server fuzz targets (`server`, `server_udp`) share: a real
//! server run in the background for the whole process, and the script of
//! client actions each input plays against it, bounded so that no input can
//! run long or hang.
//!
//! A script is a run of action bytes, each naming a client slot (high
//! nibble `% SLOTS`) and an operation (low nibble, `% ops`), followed by
//! the argument bytes its operation takes; missing ones read as 0.

use std::time::Duration;

/// Every socket operation's timeout: a hang fails, saying what waited.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the counters get to settle once a script has played.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients one script drives at once.
pub const SLOTS: usize = 4;
/// Actions played per input at most.
pub const MAX_ACTIONS: usize = 64;
/// One pause at most, and all of an input's pauses together.
const MAX_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE_PER_INPUT: Duration = Duration::from_millis(20);

/// Asserts that each named counter is the same in both snapshots.
macro_rules! assert_unchanged {
    ($name:expr, $before:expr, $after:expr, [$($field:ident),+ $(,)?]) => {
        $(assert_eq!(
            $before.$field,
            $after.$field,
            "{}: {} changed: before {:?}, after {:?}",
            $name,
            stringify!($field),
            $before,
            $after
        );)+
    };
}

/// Runs `server` on a thread of its own for the rest of the process (a
/// server that stops is a failure) and returns its handle.
pub fn serve_forever(name: &'static str, server: echo_server::Server) -> echo_server::ServerHandle {
    let handle = server.handle();
    std::thread::Builder::new()
        .name(format!("server-{name}"))
        .spawn(move || match server.run() {
            Ok(stats) => panic!("{name}: the server stopped on its own: {stats}"),
            Err(e) => panic!("{name}: the server failed: {e}"),
        })
        .expect("a server thread");
    handle
}

/// Byte `offset` of the stream keyed `key`: what clients send, so that a
/// byte echoed out of order or to the wrong client shows.
pub fn pattern(key: u64, offset: u64) -> u8 {
    let mut x = key ^ (offset >> 3);
    // splitmix64's finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> ((offset & 7) * 8)) as u8
}

/// The actions left of an input.
pub struct Script<'a> {
    bytes: &'a [u8],
    played: usize,
    paused: Duration,
}

/// One action: which client slot, which operation, and its index in the
/// script (for failure messages).
pub struct Action {
    pub index: usize,
    pub slot: usize,
    pub op: u8,
}

impl<'a> Script<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Script {
            bytes,
            played: 0,
            paused: Duration::ZERO,
        }
    }

    /// The next action, of `ops` operations; `None` at the end of the input
    /// or after [`MAX_ACTIONS`].
    pub fn next_action(&mut self, ops: u8) -> Option<Action> {
        if self.played == MAX_ACTIONS {
            return None;
        }
        let action = self.byte_or_end()?;
        self.played += 1;
        Some(Action {
            index: self.played - 1,
            slot: usize::from(action >> 4) % SLOTS,
            op: (action & 0x0f) % ops,
        })
    }

    /// An argument byte.
    pub fn byte(&mut self) -> u8 {
        self.byte_or_end().unwrap_or(0)
    }

    /// A two-byte argument, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// Sleeps `units × 20 µs`, within the per-pause and per-input bounds.
    pub fn pause(&mut self, units: u8) {
        let want = (Duration::from_micros(20) * u32::from(units)).min(MAX_PAUSE);
        let d = want.min(MAX_PAUSE_PER_INPUT.saturating_sub(self.paused));
        if !d.is_zero() {
            std::thread::sleep(d);
            self.paused += d;
        }
    }

    fn byte_or_end(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }
}
