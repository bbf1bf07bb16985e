//! `hold`: open `--connections` connections, leave them idle until
//! `--duration` after the start of the run (or, with `--idle-until-stdin`,
//! until stdin has a line), then send 16 distinct bytes on every one and
//! check every echo.
//!
//! This measures whether a server keeps many idle clients alive (and
//! answers all of them afterwards), not speed. Each connection is opened
//! with a 16-byte probe echo (see `connect_all`), which proves the server
//! accepted it and paces the opening so its listen backlog never
//! overflows. When every thread has finished connecting, one line on
//! stderr says how many connections are open; the final echo starts only
//! after that, on every thread, so every connection answers while all of
//! them are open. The final message is the next 16 stream bytes, distinct
//! from the probe and from every other connection's. While idle, an event
//! on a connection can only be bad news (the server closed it, or sent
//! bytes nobody asked for), so it is checked and counted. A connection
//! "holds" if its final echo came back intact before the hard cap.

use super::{connect_all, Ctx, EventLoop, Outcome, Tally, HOLD_POLL, PROBE, SMALL_MESSAGE};
use crate::conn::{Conn, Failure, Step};
use crate::pattern::Pattern;
use std::ops::Range;
use std::time::Instant;

/// Stream offset where the final message ends: it follows the probe.
const FINAL_END: u64 = PROBE + SMALL_MESSAGE;

pub fn run(ctx: &Ctx, ids: Range<usize>, lp: &mut EventLoop) -> Outcome {
    let n = ids.len() as u64;
    let mut tally = Tally::default();
    let mut conns = connect_all(ctx, lp, ids, &mut tally);
    let mut open = conns.iter().filter(|c| c.is_some()).count() as u64;
    let opened = open;
    ctx.shared.connected(ctx.cfg, ctx.run_start, open);
    // Every thread sends at the same moment, counted from the run's start
    // so the run stays bounded however long connecting took, and not
    // before every thread has finished connecting (which `connect_by`
    // bounds).
    let go = ctx.deadline_from(ctx.run_start);
    let by_stdin = ctx.cfg.idle_until_stdin;

    // Idle: only watch for connections the server drops.
    loop {
        ctx.progress.open(open);
        ctx.progress.errors(tally.errors);
        let now = Instant::now();
        let everyone = ctx.shared.all_connected() || now >= ctx.connect_by;
        let released = now >= go || (by_stdin && ctx.shared.released());
        if open == 0 || (everyone && released) {
            break;
        }
        // Past `go` only while waiting for other threads: poll for them.
        let until = if everyone && !by_stdin {
            go
        } else if now < go {
            go.min(now + HOLD_POLL)
        } else {
            now + HOLD_POLL
        };
        if let Err(e) = lp.wait(until) {
            tally.fail(Failure::Io(e));
            break;
        }
        for k in 0..lp.ready.len() {
            let Some(slot) = conns.get_mut(lp.ready[k]) else {
                continue;
            };
            let Some(conn) = slot.as_mut() else {
                continue;
            };
            if let Err(failure) = conn.check_idle(&mut lp.buf) {
                tally.fail(failure);
                *slot = None;
                open -= 1;
            }
        }
    }

    // Echo: one message on every connection, then wait for all answers.
    // Connections that answered are kept open until the end, so all of
    // them are held at once right up to the last answer.
    let mut held: Vec<Conn> = Vec::with_capacity(conns.len());
    let mut waiting = open;
    for slot in conns.iter_mut() {
        if settle(slot, &mut lp.buf, ctx.pattern, &mut tally, &mut held) {
            waiting -= 1;
        }
    }
    while waiting > 0 {
        let waited = if Instant::now() >= ctx.hard_cap {
            Err(Failure::Stalled)
        } else {
            lp.wait(ctx.hard_cap).map_err(Failure::Io)
        };
        if let Err(failure) = waited {
            tally.abandon(conns.iter_mut(), failure);
            break;
        }
        for k in 0..lp.ready.len() {
            let Some(slot) = conns.get_mut(lp.ready[k]) else {
                continue;
            };
            if settle(slot, &mut lp.buf, ctx.pattern, &mut tally, &mut held) {
                waiting -= 1;
            }
        }
        ctx.progress.count(held.len() as u64);
        ctx.progress.errors(tally.errors);
    }
    ctx.progress.count(held.len() as u64);
    ctx.progress.errors(tally.errors);

    let mut out = Outcome::new(ctx.run_start);
    out.end = Instant::now();
    out.count = held.len() as u64;
    out.failed = n - out.count;
    out.opened = opened;
    out.tally = tally;
    out
}

/// Sends the message and reads its echo as far as possible. Returns true
/// when the slot is settled: moved to `held`, or failed (and counted).
fn settle(
    slot: &mut Option<Conn>,
    buf: &mut [u8],
    pattern: &Pattern,
    tally: &mut Tally,
    held: &mut Vec<Conn>,
) -> bool {
    let Some(conn) = slot.as_mut() else {
        return false;
    };
    let result = conn
        .write_to(pattern, FINAL_END)
        .and_then(|_| conn.read_to(pattern, buf, FINAL_END));
    match result {
        Ok(Step::Blocked) => false,
        Ok(Step::Done) => {
            if let Some(conn) = slot.take() {
                held.push(conn);
            }
            true
        }
        Err(failure) => {
            tally.fail(failure);
            *slot = None;
            true
        }
    }
}
