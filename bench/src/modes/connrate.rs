//! `connrate`: `--parallel` loops, each connecting, echoing 16 bytes,
//! checking them, closing and starting over, until the deadline.
//!
//! Connects are nonblocking, so one thread keeps all its loops busy. Each
//! attempt sends different bytes (the pattern base depends on loop and
//! attempt). Connections are closed with SO_LINGER 0 (see
//! [`Conn::close_abortive`]) so the client does not run out of ephemeral
//! ports. A loop whose attempt failed waits [`RETRY_DELAY`] before the
//! next one, so a server that refuses connections is not hammered in a
//! tight loop; the failure is counted as an error.

use super::{open, Ctx, EventLoop, Outcome, Tally, SMALL_MESSAGE};
use crate::conn::{Conn, Failure, Step};
use crate::pattern::{stream_base, Pattern};
use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Pause after a failed attempt before the loop tries again.
const RETRY_DELAY: Duration = Duration::from_millis(10);

struct Loop {
    conn: Option<Conn>,
    attempt: u64,
    /// False once the loop has ended (after the deadline).
    running: bool,
}

struct Rate<'a> {
    ctx: &'a Ctx<'a>,
    /// First global loop id of this thread, for distinct pattern bases.
    first_id: usize,
    deadline: Instant,
    loops: Vec<Loop>,
    /// Loops waiting to retry, in the order they became due (the delay is
    /// constant, so this is also the order of their due times).
    retry: VecDeque<(Instant, usize)>,
    tally: Tally,
    made: u64,
    active: usize,
}

pub fn run(ctx: &Ctx, ids: Range<usize>, lp: &mut EventLoop) -> Outcome {
    let t0 = Instant::now();
    let mut rate = Rate {
        ctx,
        first_id: ids.start,
        deadline: ctx.deadline_from(t0),
        loops: ids
            .clone()
            .map(|_| Loop {
                conn: None,
                attempt: 0,
                running: true,
            })
            .collect(),
        retry: VecDeque::new(),
        tally: Tally::default(),
        made: 0,
        active: ids.len(),
    };
    for i in 0..rate.loops.len() {
        rate.start(lp, i, t0);
    }
    while rate.active > 0 {
        let now = Instant::now();
        if now >= ctx.hard_cap {
            rate.abandon(Failure::Stalled);
            break;
        }
        rate.retry_due(lp, now);
        if rate.active == 0 {
            break;
        }
        let until = if now < rate.deadline {
            rate.retry
                .front()
                .map_or(rate.deadline, |&(at, _)| at.min(rate.deadline))
        } else {
            ctx.hard_cap
        };
        if let Err(e) = lp.wait(until) {
            rate.abandon(Failure::Io(e));
            break;
        }
        for k in 0..lp.ready.len() {
            let i = lp.ready[k];
            if i < rate.loops.len() {
                rate.drive(lp, i);
            }
        }
        ctx.progress.count(rate.made);
        ctx.progress.errors(rate.tally.errors);
    }
    ctx.progress.count(rate.made);
    ctx.progress.errors(rate.tally.errors);

    let mut out = Outcome::new(t0);
    out.end = rate.deadline.min(Instant::now());
    out.count = rate.made;
    out.tally = rate.tally;
    out
}

impl Rate<'_> {
    /// Starts loop `i`'s next connection, or schedules a retry if even
    /// starting it fails (out of ports or descriptors, say).
    fn start(&mut self, lp: &EventLoop, i: usize, now: Instant) {
        let slot = &mut self.loops[i];
        slot.attempt += 1;
        let id = ((self.first_id + i) as u64) << 32 | (slot.attempt & 0xffff_ffff);
        let source = self.ctx.cfg.source(self.first_id + i);
        match open(lp, self.ctx.cfg.addr, source, i, stream_base(id)) {
            Ok(conn) => slot.conn = Some(conn),
            Err(failure) => {
                self.tally.fail(failure);
                self.retry.push_back((now + RETRY_DELAY, i));
            }
        }
    }

    /// Restarts loops whose retry delay is over; after the deadline, ends
    /// every waiting loop instead.
    fn retry_due(&mut self, lp: &EventLoop, now: Instant) {
        while let Some(&(at, i)) = self.retry.front() {
            if now >= self.deadline {
                self.retry.pop_front();
                self.finish(i);
            } else if at <= now {
                self.retry.pop_front();
                self.start(lp, i, now);
            } else {
                break;
            }
        }
    }

    fn finish(&mut self, i: usize) {
        if std::mem::replace(&mut self.loops[i].running, false) {
            self.active -= 1;
        }
    }

    /// Handles an event for loop `i`: connect completion, echo progress,
    /// and on completion or failure the close and the next attempt.
    fn drive(&mut self, lp: &mut EventLoop, i: usize) {
        let Some(conn) = self.loops[i].conn.as_mut() else {
            return;
        };
        let result = step(conn, &mut lp.buf, self.ctx.pattern);
        if let Ok(false) = result {
            return;
        }
        if let Some(conn) = self.loops[i].conn.take() {
            conn.close_abortive();
        }
        let now = Instant::now();
        match result {
            Ok(_) => {
                if now < self.deadline {
                    self.made += 1;
                    self.start(lp, i, now);
                } else {
                    self.finish(i);
                }
            }
            Err(failure) => {
                self.tally.fail(failure);
                if now < self.deadline {
                    self.retry.push_back((now + RETRY_DELAY, i));
                } else {
                    self.finish(i);
                }
            }
        }
    }

    /// Ends every loop; connections still open count as `failure`.
    fn abandon(&mut self, failure: Failure) {
        let mut stranded = 0;
        for i in 0..self.loops.len() {
            if let Some(conn) = self.loops[i].conn.take() {
                conn.close_abortive();
                stranded += 1;
            }
            self.finish(i);
        }
        for _ in 0..stranded {
            self.tally.fail(Failure::Stalled);
        }
        if !matches!(failure, Failure::Stalled) {
            self.tally.fail(failure);
        }
    }
}

/// One event's worth of work on a connection: confirm the connect, write
/// the 16 bytes, read what has come back. True once the echo is complete.
fn step(conn: &mut Conn, buf: &mut [u8], pattern: &Pattern) -> Result<bool, Failure> {
    if !conn.established()? {
        return Ok(false);
    }
    conn.write_to(pattern, SMALL_MESSAGE)?;
    Ok(conn.read_to(pattern, buf, SMALL_MESSAGE)? == Step::Done)
}
