//! `bulk`: each connection streams `--bytes` pattern bytes while reading
//! the echo back concurrently and checking it.
//!
//! Writing and reading happen on every event for the connection: an echo
//! server blocks writing our echo once we stop reading, and then stops
//! reading what we write, so a client that only wrote would deadlock.
//! The window starts once all connections are open and ends when every
//! connection has had all its bytes echoed, or at the deadline; then
//! writing stops, and what is still in flight is read and checked but not
//! counted.

use super::{connect_all, Ctx, EventLoop, Outcome, Tally, PROBE};
use crate::conn::{Conn, Failure, Step};
use crate::pattern::Pattern;
use std::ops::Range;
use std::time::Instant;

struct Meter<'a> {
    pattern: &'a Pattern,
    /// Stream offset where the `--bytes` end (they follow the probe).
    total: u64,
    deadline: Instant,
    /// Bytes echoed and verified before the deadline.
    echoed: u64,
    /// Connections that got all `total` bytes back before the deadline.
    completed: u64,
}

pub fn run(ctx: &Ctx, ids: Range<usize>, lp: &mut EventLoop) -> Outcome {
    let mut tally = Tally::default();
    let mut conns = connect_all(ctx, lp, ids, &mut tally);
    let t0 = Instant::now();
    let mut meter = Meter {
        pattern: ctx.pattern,
        total: PROBE + ctx.cfg.bytes,
        deadline: ctx.deadline_from(t0),
        echoed: 0,
        completed: 0,
    };
    let mut active = conns.iter().filter(|c| c.is_some()).count();

    // Start streaming now: the connect consumed the writable edge.
    for conn in conns.iter_mut() {
        if drive(conn, &mut lp.buf, &mut meter, &mut tally) {
            active -= 1;
        }
    }
    let mut draining = false;
    while active > 0 {
        let now = Instant::now();
        if now >= meter.deadline && !draining {
            // Writing stops; a connection whose echo has caught up with
            // what it wrote gets no further event, so finish it here.
            draining = true;
            for conn in conns.iter_mut() {
                if drive(conn, &mut lp.buf, &mut meter, &mut tally) {
                    active -= 1;
                }
            }
            continue;
        }
        let waited = if now >= ctx.hard_cap {
            Err(Failure::Stalled)
        } else {
            let until = if draining {
                ctx.hard_cap
            } else {
                meter.deadline
            };
            lp.wait(until).map_err(Failure::Io)
        };
        if let Err(failure) = waited {
            tally.abandon(conns.iter_mut(), failure);
            break;
        }
        for k in 0..lp.ready.len() {
            let Some(conn) = conns.get_mut(lp.ready[k]) else {
                continue;
            };
            if drive(conn, &mut lp.buf, &mut meter, &mut tally) {
                active -= 1;
            }
        }
        ctx.progress.bytes(meter.echoed);
        ctx.progress.count(meter.completed);
        ctx.progress.errors(tally.errors);
    }
    ctx.progress.bytes(meter.echoed);
    ctx.progress.errors(tally.errors);

    let mut out = Outcome::new(t0);
    out.end = meter.deadline.min(Instant::now());
    out.tally = tally;
    out.count = meter.completed;
    out.bytes = meter.echoed;
    out
}

/// Advances one connection; returns true when it just finished (and closes
/// it): all bytes echoed, or drained after the deadline, or failed.
fn drive(slot: &mut Option<Conn>, buf: &mut [u8], meter: &mut Meter, tally: &mut Tally) -> bool {
    let Some(conn) = slot.as_mut() else {
        return false;
    };
    match step(conn, buf, meter) {
        Ok(false) => false,
        Ok(true) => {
            *slot = None;
            true
        }
        Err(failure) => {
            tally.fail(failure);
            *slot = None;
            true
        }
    }
}

/// Writes until the send buffer is full, then reads until the receive
/// buffer is empty. Both stop only on `WouldBlock` (or their goal), so the
/// next edge in either direction is guaranteed to be reported.
fn step(conn: &mut Conn, buf: &mut [u8], meter: &mut Meter) -> Result<bool, Failure> {
    let goal = if Instant::now() < meter.deadline {
        meter.total
    } else {
        conn.sent()
    };
    conn.write_to(meter.pattern, goal)?;
    let before = conn.echoed();
    let state = conn.read_to(meter.pattern, buf, goal)?;
    let now = Instant::now();
    if now < meter.deadline {
        meter.echoed += conn.echoed() - before;
        if state == Step::Done && conn.echoed() == meter.total {
            meter.completed += 1;
        }
    }
    Ok(state == Step::Done)
}
