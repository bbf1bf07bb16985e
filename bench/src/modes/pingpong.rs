//! `pingpong`: each connection sends one `--size` message, waits for the
//! whole echo, checks it and records the round trip, then sends the next.
//!
//! Message `k` of a connection is stream bytes `k*size..(k+1)*size` of its
//! pattern (after the opening probe), so every message differs from the one before and from every
//! other connection's. The window starts once all connections are open,
//! so connection setup never counts as latency. At the deadline no new
//! message starts; messages in flight are still read and checked (a
//! stalled one counts as an error at the hard cap) but not counted.

use super::{connect_all, new_histogram, Ctx, EventLoop, Outcome, Tally, PROBE};
use crate::conn::{Conn, Failure, Step};
use crate::pattern::Pattern;
use hdrhistogram::Histogram;
use std::ops::Range;
use std::time::Instant;

/// A connection and the message it has in flight.
struct Slot {
    /// `None` once finished or failed.
    conn: Option<Conn>,
    /// Stream offset where the message in flight ends.
    msg_end: u64,
    /// When the message in flight was started.
    started: Instant,
}

/// What round trips are counted into.
struct Meter<'a> {
    pattern: &'a Pattern,
    size: u64,
    deadline: Instant,
    hist: Option<Histogram<u64>>,
    round_trips: u64,
}

pub fn run(ctx: &Ctx, ids: Range<usize>, lp: &mut EventLoop) -> Outcome {
    let mut tally = Tally::default();
    let conns = connect_all(ctx, lp, ids, &mut tally);
    let t0 = Instant::now();
    let mut meter = Meter {
        pattern: ctx.pattern,
        size: ctx.cfg.size,
        deadline: ctx.deadline_from(t0),
        hist: new_histogram(),
        round_trips: 0,
    };
    let mut slots: Vec<Slot> = conns
        .into_iter()
        .map(|conn| Slot {
            conn,
            msg_end: PROBE + ctx.cfg.size,
            started: t0,
        })
        .collect();
    let mut active = slots.iter().filter(|s| s.conn.is_some()).count();

    // The connect consumed the writable edge, so the first message is
    // written now rather than awaited.
    for slot in slots.iter_mut() {
        slot.started = Instant::now();
        if drive(slot, &mut lp.buf, &mut meter, &mut tally) {
            active -= 1;
        }
    }
    while active > 0 {
        let now = Instant::now();
        let waited = if now >= ctx.hard_cap {
            Err(Failure::Stalled)
        } else {
            let until = if now < meter.deadline {
                meter.deadline
            } else {
                ctx.hard_cap
            };
            lp.wait(until).map_err(Failure::Io)
        };
        if let Err(failure) = waited {
            // Each message still unanswered is an error.
            tally.abandon(slots.iter_mut().map(|s| &mut s.conn), failure);
            break;
        }
        for k in 0..lp.ready.len() {
            let Some(slot) = slots.get_mut(lp.ready[k]) else {
                continue;
            };
            if drive(slot, &mut lp.buf, &mut meter, &mut tally) {
                active -= 1;
            }
        }
        ctx.progress.count(meter.round_trips);
        ctx.progress.errors(tally.errors);
    }
    ctx.progress.count(meter.round_trips);
    ctx.progress.errors(tally.errors);

    let mut out = Outcome::new(t0);
    out.end = meter.deadline.min(Instant::now());
    out.tally = tally;
    out.count = meter.round_trips;
    out.hist = meter.hist;
    out
}

/// Advances one slot on an event; returns true when it just finished (its
/// connection is closed then).
fn drive(slot: &mut Slot, buf: &mut [u8], meter: &mut Meter, tally: &mut Tally) -> bool {
    let Some(conn) = slot.conn.as_mut() else {
        return false;
    };
    match step(conn, &mut slot.msg_end, &mut slot.started, buf, meter) {
        Ok(false) => false,
        Ok(true) => {
            slot.conn = None;
            true
        }
        Err(failure) => {
            tally.fail(failure);
            slot.conn = None;
            true
        }
    }
}

/// Writes what is left of the message, reads what has come back; on a
/// complete echo records it and starts the next message right away (the
/// socket is known writable, so no event is awaited). Returns true once the
/// connection is done: its last message completed after the deadline.
fn step(
    conn: &mut Conn,
    msg_end: &mut u64,
    started: &mut Instant,
    buf: &mut [u8],
    meter: &mut Meter,
) -> Result<bool, Failure> {
    loop {
        // Blocked is fine here: a large message is echoed while it is
        // still being written, so reading must go on regardless.
        conn.write_to(meter.pattern, *msg_end)?;
        if conn.read_to(meter.pattern, buf, *msg_end)? == Step::Blocked {
            return Ok(false);
        }
        let now = Instant::now();
        if now >= meter.deadline {
            return Ok(true);
        }
        meter.round_trips += 1;
        if let Some(hist) = meter.hist.as_mut() {
            let us = u64::try_from(now.duration_since(*started).as_micros()).unwrap_or(u64::MAX);
            hist.saturating_record(us);
        }
        *msg_end += meter.size;
        *started = now;
    }
}
