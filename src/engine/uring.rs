//! The uring engine: a fixed number of loops, each a thread with its own
//! io_uring (Linux), serving many connections by completions rather than
//! readiness.
//!
//! A connection always has exactly one operation of its own in flight
//! while it is served: a receive, which takes a buffer from the loop's ring
//! of provided buffers only when data arrives (an idle connection holds
//! none), or the send of that buffer's bytes back (no copy). The send
//! does not wait (`MSG_DONTWAIT`): when the socket takes less than all of
//! it (a client that reads slowly, or not at all), the rest is copied into
//! memory of the connection's own and the buffer goes back to the ring at
//! once, so that clients that do not read cannot hold the loop's few
//! shared buffers and starve the others; that copy is sent, waiting in the
//! kernel. The buffer (or copy) is freed when the send completes, and only
//! then is the next receive submitted: nothing
//! is received while an echo is unwritten, so the kernel's flow control
//! holds back a client that does not read. The echo core's other rules are
//! kept the same way: end of file after everything is written back closes
//! the connection (`Finished`), an error closes it (`Failed`), and idle and
//! write timeouts are deadlines checked on a tick, as on the event loops.
//!
//! No descriptor is closed while the kernel may still use it: a connection
//! closed with an operation in flight is cancelled and kept (socket open,
//! still in the table) until its last completion arrives.

use super::loops::{Command, Loops, Wake};
use crate::connection::{Connection, Outcome};
use crate::context::Context;
use crate::fault::Point;
use crate::stream::Op;
use crate::sys::uring::{Completion, Ring, Spill, Waker, WAKE};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Submission entries per ring: a connection has at most two entries at a
/// time (its operation and a cancellation); a full queue is submitted and
/// reused, so this bounds a batch, not the connections.
const ENTRIES: u32 = 1024;

/// Provided buffers per loop, and their size: 4 MiB per loop. A buffer is
/// held only from a receive's completion to its echo's, so a few dozen
/// serve thousands of connections; when all are taken, a receive fails
/// with `ENOBUFS` and is tried again once a send gives one back. 64 KiB,
/// the event loops' chunk: with 16 KiB (x 256) a bulk stream took twice
/// the system calls and measured 0.5-0.67 of the event loops' throughput,
/// with 64 KiB 0.7-0.9, small messages the same.
const BUFFERS: u16 = 64;
const BUFFER_SIZE: usize = 64 * 1024;

/// How long a stopping loop waits for its cancelled operations.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// What the low bits of an operation's `user_data` say it was; the rest is
/// the connection's index.
const RECV: u64 = 0;
const SEND: u64 = 1;
const CANCEL: u64 = 2;
const KIND_BITS: u32 = 2;

fn user_data(index: usize, kind: u64) -> u64 {
    ((index as u64) << KIND_BITS) | kind
}

/// The running uring loops and how to reach them.
#[derive(Debug)]
pub(crate) struct UringLoops(Loops<Waker>);

impl Wake for Waker {
    fn wake(&self) -> io::Result<()> {
        Waker::wake(self)
    }
}

impl UringLoops {
    /// Starts `count` loops (at least one). Each ring is set up on its own
    /// thread (a single-issuer ring belongs to the thread that made it); a
    /// ring the kernel refuses fails the start with its error.
    pub(crate) fn start(count: usize, ctx: &Arc<Context>) -> io::Result<UringLoops> {
        let mut loops = Loops::new("a uring loop");
        for _ in 0..count.max(1) {
            // A failure here drops the loops started so far, which stops them.
            loops.add(|end| {
                let (started, start_result) = mpsc::sync_channel(1);
                let loop_ctx = Arc::clone(ctx);
                let thread =
                    thread::Builder::new()
                        .name("echo-uring".to_owned())
                        .spawn(move || {
                            let ring = match Ring::new(ENTRIES, BUFFERS, BUFFER_SIZE) {
                                Ok(ring) => ring,
                                Err(e) => {
                                    let _ = started.send(Err(e));
                                    return;
                                }
                            };
                            log::debug!("uring loop: ring set up ({:?})", ring.setup());
                            let _ = started.send(Ok(ring.waker()));
                            UringLoop::new(ring, end.commands, end.load, loop_ctx).run();
                        })?;
                match start_result.recv() {
                    Ok(Ok(waker)) => Ok((waker, thread)),
                    Ok(Err(e)) => {
                        let _ = thread.join();
                        Err(e)
                    }
                    Err(_) => {
                        let _ = thread.join();
                        Err(io::Error::other("a uring loop ended while starting"))
                    }
                }
            })?;
        }
        Ok(UringLoops(loops))
    }

    /// Hands `conn` to the loop with the fewest connections. Gives it back
    /// if no loop can take it.
    #[allow(clippy::result_large_err)]
    pub(crate) fn serve(&self, mut conn: Connection) -> Result<(), Connection> {
        conn.place_on_uring();
        self.0.serve(conn)
    }

    /// Makes every loop give its waiting connections their receive.
    pub(crate) fn nudge(&self) {
        self.0.nudge();
    }
}

/// One connection on a loop.
struct Served {
    conn: Connection,
    fd: RawFd,
    /// Its operations whose completion has not arrived (its receive or
    /// send, and a cancellation): the socket stays open until this is 0.
    in_flight: u32,
    /// What its echo is being sent from: (where, bytes sent, length).
    sending: Option<(SentFrom, u32, u32)>,
    /// Its receive failed for want of a buffer; it is in `starved`.
    starved: bool,
    /// Being closed: how, once its last completion arrives.
    closing: Option<Outcome>,
    /// Being dropped without a word (the loop is stopping).
    dropping: bool,
    echoed: u64,
    /// When it last made progress, for the timeouts.
    since: Instant,
}

/// Where an echo is sent from: the provided buffer it arrived in, or, once
/// the socket would not take it all at once, a copy of the rest (so that a
/// client that does not read holds no buffer the loop shares).
#[derive(Debug, Clone, Copy)]
enum SentFrom {
    Buffer(u16),
    Spilled(Spill),
}

struct UringLoop {
    ring: Ring,
    commands: Receiver<Command>,
    load: Arc<AtomicUsize>,
    ctx: Arc<Context>,
    /// Indexed by the `user_data` of its operations; `None` slots are in
    /// `free`. A slot is freed only after its last completion, so a
    /// completion never reaches the wrong connection.
    served: Vec<Option<Served>>,
    free: Vec<usize>,
    /// Connections whose echo is out: their next receive is submitted
    /// after this turn's completions, so each connection echoes at most one
    /// chunk per turn and a busy one cannot starve the rest.
    ready: Vec<usize>,
    /// Connections waiting for a free buffer, oldest first.
    starved: VecDeque<usize>,
    /// Buffers given back this turn, for the starved.
    recycled: usize,
    completions: Vec<Completion>,
    woken: bool,
    /// The last wait failed (logged once until one succeeds).
    wait_failing: bool,
}

impl UringLoop {
    fn new(
        ring: Ring,
        commands: Receiver<Command>,
        load: Arc<AtomicUsize>,
        ctx: Arc<Context>,
    ) -> UringLoop {
        UringLoop {
            ring,
            commands,
            load,
            ctx,
            served: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            starved: VecDeque::new(),
            recycled: 0,
            completions: Vec::new(),
            woken: false,
            wait_failing: false,
        }
    }

    fn run(mut self) {
        if let Err(e) = self.ring.watch_wake() {
            log::error!("uring loop: cannot watch its inbox: {e}");
        }
        let tick = super::sweep_tick(&self.ctx.settings);
        let mut next_sweep = tick.map(|_| Instant::now());
        loop {
            let timeout = next_sweep.map(|at| at.saturating_duration_since(Instant::now()));
            // With no tick, still wake now and then: a wake-up lost to a
            // full submission queue must not leave the inbox unread.
            let timeout = timeout.unwrap_or(Duration::from_secs(1));
            self.turn(Some(timeout));
            let now = Instant::now();
            // The inbox is read when the eventfd says so, and on every tick.
            if self.woken || next_sweep.is_some_and(|at| now >= at) || tick.is_none() {
                self.woken = false;
                if !self.read_commands(now) {
                    break;
                }
            }
            if let (Some(at), Some(tick)) = (next_sweep, tick) {
                if now >= at {
                    self.sweep(now);
                    next_sweep = Some(now + tick);
                }
            }
        }
        self.stop();
        // Connections the kernel did not let go of within the wait: the
        // ring goes first (its drop cancels and waits for everything, or
        // leaks the memory), and only then are their sockets closed, as the
        // event loops close theirs.
        let left: Vec<Served> = self.served.drain(..).flatten().collect();
        self.load.fetch_sub(left.len(), Relaxed);
        let UringLoop { ring, .. } = self;
        drop(ring);
        drop(left);
    }

    /// Submits what is queued, waits for completions (at most `timeout`),
    /// handles them, then submits the next receive of each connection
    /// whose echo went out and of the starved, as far as buffers came back.
    fn turn(&mut self, timeout: Option<Duration>) {
        match self.ring.wait(timeout) {
            Ok(()) => self.wait_failing = false,
            Err(e) => {
                // Once per run of failures, not a line per try.
                if !self.wait_failing {
                    log::error!("uring loop: waiting failed: {e}");
                    self.wait_failing = true;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        let now = Instant::now();
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.complete(&mut completions);
        for c in completions.drain(..) {
            self.completed(c, now);
        }
        self.completions = completions;
        for index in std::mem::take(&mut self.ready) {
            self.receive(index, false);
        }
        if self.recycled > 0 {
            // Buffers came back: every connection that found none tries
            // again, polling first. Not rationed one buffer each: a receive
            // fails with ENOBUFS when it is tried with no buffer free, data
            // or not, so the waiting include idle connections, which would
            // use up a ration without taking a buffer while one with data
            // waited behind them for good. Polling first, an idle one
            // waits for data and takes no buffer until it has some; one
            // that loses the race for a buffer waits here again.
            self.recycled = 0;
            self.retry_starved();
        }
    }

    /// Takes the commands waiting in the inbox. Returns `false` on `Stop`.
    fn read_commands(&mut self, now: Instant) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Serve(conn)) => self.add(conn, now),
                Ok(Command::Nudge) => self.retry_starved(),
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn add(&mut self, conn: Connection, now: Instant) {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.served.push(None);
                self.served.len() - 1
            }
        };
        log::debug!("{}: connected", conn.peer);
        let fd = conn.stream.socket.as_raw_fd();
        self.served[index] = Some(Served {
            conn,
            fd,
            in_flight: 0,
            sending: None,
            starved: false,
            closing: None,
            dropping: false,
            echoed: 0,
            since: now,
        });
        self.receive(index, false);
    }

    /// Gives every connection that found no buffer its receive again.
    fn retry_starved(&mut self) {
        for index in std::mem::take(&mut self.starved) {
            if let Some(Some(served)) = self.served.get_mut(index) {
                if served.starved {
                    served.starved = false;
                    self.receive(index, true);
                }
            }
        }
    }

    /// Submits `index`'s next receive (see `Ring::recv` for `poll_first`).
    fn receive(&mut self, index: usize, poll_first: bool) {
        let Some(Some(served)) = self.served.get_mut(index) else {
            return;
        };
        if served.closing.is_some() || served.dropping {
            return;
        }
        match self
            .ring
            .recv(served.fd, poll_first, user_data(index, RECV))
        {
            Ok(()) => served.in_flight += 1,
            Err(e) => self.close(index, Outcome::Failed(e)),
        }
    }

    /// Submits the send of what is left of `index`'s echo.
    fn send(&mut self, index: usize) {
        let Some(Some(served)) = self.served.get_mut(index) else {
            return;
        };
        let Some((from, sent, len)) = served.sending else {
            return;
        };
        if let Some(injected) = served.conn.ctx().faults.take(Point::Send) {
            return self.close(index, Outcome::Failed(injected));
        }
        let submitted = match from {
            SentFrom::Buffer(bid) => {
                self.ring
                    .send(served.fd, bid, sent, len, user_data(index, SEND))
            }
            SentFrom::Spilled(spill) => {
                self.ring
                    .send_spill(served.fd, spill, sent, user_data(index, SEND))
            }
        };
        match submitted {
            Ok(()) => served.in_flight += 1,
            Err(e) => self.close(index, Outcome::Failed(e)),
        }
    }

    fn completed(&mut self, c: Completion, now: Instant) {
        if c.user_data == WAKE {
            self.woken = true;
            if let Err(e) = self.ring.watch_wake() {
                log::error!("uring loop: cannot watch its inbox: {e}");
            }
            return;
        }
        let index = (c.user_data >> KIND_BITS) as usize;
        let kind = c.user_data & ((1 << KIND_BITS) - 1);
        let Some(Some(served)) = self.served.get_mut(index) else {
            // Nothing of ours: give back a buffer it may carry.
            if let Some(bid) = c.buffer {
                self.give_back(bid);
            }
            return;
        };
        served.in_flight = served.in_flight.saturating_sub(1);
        if served.closing.is_some() || served.dropping {
            // Cancelled (or finished anyway): only buffers to give back.
            let sent_from = if kind == SEND {
                served.sending.take().map(|(from, _, _)| from)
            } else {
                None
            };
            if let Some(bid) = c.buffer {
                self.give_back(bid);
            }
            if let Some(from) = sent_from {
                self.release(from);
            }
            self.release_if_done(index);
            return;
        }
        match (kind, c.result) {
            (RECV, n) if n > 0 => {
                let Some(bid) = c.buffer else {
                    return self.close(index, Outcome::Failed(io::Error::other("no buffer")));
                };
                let Some(data) = self.ring.buffer(bid, n as u32) else {
                    self.give_back(bid);
                    return self.close(index, Outcome::Failed(io::Error::other("bad buffer")));
                };
                // Where the echo starts in this buffer: after a PROXY
                // protocol header that ends in it (whatever came before it
                // was header too).
                let mut start = 0;
                if served.conn.preface_deadline().is_some() {
                    match served.conn.feed_preface(data) {
                        Ok(None) => {
                            self.give_back(bid);
                            self.ready.push(index);
                            return;
                        }
                        Ok(Some(rest)) => start = n as u32 - rest.len() as u32,
                        Err(outcome) => {
                            self.give_back(bid);
                            return self.close(index, outcome);
                        }
                    }
                    served.since = now;
                    if start == n as u32 {
                        self.give_back(bid);
                        self.ready.push(index);
                        return;
                    }
                } else {
                    served.conn.metered().received(data);
                }
                served.sending = Some((SentFrom::Buffer(bid), start, n as u32));
                served.since = now;
                self.send(index);
            }
            (RECV, 0) if served.conn.preface_deadline().is_some() => {
                if let Err(outcome) = served.conn.feed_preface(&[]) {
                    self.close(index, outcome);
                }
            }
            (RECV, 0) => {
                let echoed = served.echoed;
                self.close(index, Outcome::Finished(echoed));
            }
            (RECV, e) if -e == libc::ENOBUFS => {
                served.starved = true;
                self.starved.push_back(index);
            }
            (RECV | SEND, e) if -e == libc::EINTR || -e == libc::EAGAIN => {
                if kind == RECV {
                    self.ready.push(index);
                } else {
                    // The socket is full: the rest waits in a copy of its
                    // own, not in the loop's shared buffer.
                    self.spill(index);
                    self.send(index);
                }
            }
            (SEND, n) if n > 0 => {
                let Some((from, sent, len)) = served.sending.as_mut() else {
                    return;
                };
                let mut metered = served.conn.metered();
                metered.sent(n as usize);
                served.echoed += n as u64;
                served.since = now;
                *sent += n as u32;
                if *sent < *len {
                    // A short send: the socket is full, the client slow.
                    self.spill(index);
                    return self.send(index);
                }
                let from = *from;
                served.sending = None;
                // The flush the echo core owes: from here it is idle.
                let _ = metered.flush();
                self.release(from);
                self.ready.push(index);
            }
            (SEND, 0) => {
                let e = io::Error::from(io::ErrorKind::WriteZero);
                self.close(index, Outcome::Failed(e));
            }
            (RECV | SEND, e) => {
                let e = io::Error::from_raw_os_error(-e);
                self.close(index, Outcome::Failed(e));
            }
            // A cancellation that completed without the connection closing.
            _ => {}
        }
    }

    fn give_back(&mut self, bid: u16) {
        self.ring.recycle(bid);
        self.recycled += 1;
    }

    /// Frees what an echo was sent from, once no send from it is in flight.
    fn release(&mut self, from: SentFrom) {
        match from {
            SentFrom::Buffer(bid) => self.give_back(bid),
            SentFrom::Spilled(spill) => self.ring.drop_spill(spill),
        }
    }

    /// Moves what is left of `index`'s echo out of its provided buffer into
    /// a copy of its own, giving the buffer back (at a completion: no send
    /// from it is in flight). Already spilled: nothing to do.
    fn spill(&mut self, index: usize) {
        let Some(Some(served)) = self.served.get_mut(index) else {
            return;
        };
        let Some((SentFrom::Buffer(bid), sent, len)) = served.sending else {
            return;
        };
        match self.ring.spill(bid, sent, len) {
            Some(spill) => {
                served.sending = Some((SentFrom::Spilled(spill), 0, len - sent));
                // A buffer came back: the starved may have it.
                self.recycled += 1;
            }
            None => self.close(index, Outcome::Failed(io::Error::other("bad buffer"))),
        }
    }

    /// Closes `index` now if the kernel has nothing of it in flight, else
    /// cancels what is and closes it on the last completion.
    fn close(&mut self, index: usize, outcome: Outcome) {
        let Some(Some(served)) = self.served.get_mut(index) else {
            return;
        };
        if served.closing.is_some() {
            return;
        }
        if served.in_flight == 0 {
            served.closing = Some(outcome);
            if let Some((from, _, _)) = served.sending.take() {
                self.release(from);
            }
            return self.release_if_done(index);
        }
        served.closing = Some(outcome);
        self.cancel(index);
    }

    /// Cancels every operation of `index` on its socket.
    fn cancel(&mut self, index: usize) {
        let Some(Some(served)) = self.served.get_mut(index) else {
            return;
        };
        match self.ring.cancel(served.fd, user_data(index, CANCEL)) {
            Ok(()) => served.in_flight += 1,
            // No room to cancel: shutting the socket down ends its
            // receive (end of file) and its send (an error) all the same.
            Err(_) => {
                let _ = served.conn.stream.socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Drops `index` (closing its socket) once nothing of it is in flight.
    fn release_if_done(&mut self, index: usize) {
        let done = matches!(self.served.get(index), Some(Some(s)) if s.in_flight == 0);
        if !done {
            return;
        }
        let Some(served) = self.served[index].take() else {
            return;
        };
        self.free.push(index);
        self.load.fetch_sub(1, Relaxed);
        match served.closing {
            Some(outcome) if !served.dropping => served.conn.close(outcome),
            _ => drop(served),
        }
    }

    /// Closes the connections that have waited too long.
    fn sweep(&mut self, now: Instant) {
        let (idle, write) = (
            self.ctx.settings.idle_timeout,
            self.ctx.settings.write_timeout,
        );
        for index in 0..self.served.len() {
            let Some(served) = &mut self.served[index] else {
                continue;
            };
            if served.closing.is_some() || served.dropping {
                continue;
            }
            if let Some(deadline) = served.conn.preface_deadline() {
                if now >= deadline {
                    let outcome = served.conn.preface_timed_out();
                    self.close(index, outcome);
                }
                continue;
            }
            let (limit, op) = if served.sending.is_some() {
                (write, Op::Write)
            } else {
                (idle, Op::Read)
            };
            if limit.is_some_and(|limit| now.duration_since(served.since) >= limit) {
                self.close(index, Outcome::TimedOut(op));
            }
        }
    }

    /// Stopped: cancels every connection's operations, waits for their
    /// completions, and drops the connections (whatever is left was already
    /// shut down by the server).
    fn stop(&mut self) {
        for index in 0..self.served.len() {
            let Some(Some(served)) = self.served.get_mut(index) else {
                continue;
            };
            served.dropping = true;
            if served.in_flight > 0 && served.closing.is_none() {
                self.cancel(index);
            }
            self.release_if_done(index);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while self.served.iter().any(Option::is_some) && Instant::now() < deadline {
            self.turn(Some(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Peer;
    use socket2::Socket;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn context() -> Arc<Context> {
        let settings = crate::server::Server::builder().settings().clone();
        Arc::new(Context::new(settings, 32))
    }

    /// A loop driven by the test, one turn at a time, and the client ends
    /// of `n` connections on it.
    fn a_loop(ctx: &Arc<Context>, n: usize) -> (UringLoop, Vec<UnixStream>, mpsc::Sender<Command>) {
        let ring = Ring::new(64, 8, 64).unwrap();
        let (inbox, commands) = mpsc::channel();
        let mut lp = UringLoop::new(
            ring,
            commands,
            Arc::new(AtomicUsize::new(n)),
            Arc::clone(ctx),
        );
        let clients = (0..n).map(|_| connect_to(&mut lp, ctx)).collect();
        (lp, clients, inbox)
    }

    /// A new connection served by `lp`, and its client end (with a read
    /// timeout).
    fn connect_to(lp: &mut UringLoop, ctx: &Arc<Context>) -> UnixStream {
        let (ours, client) = UnixStream::pair().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let permit = ctx.limit.acquire(&ctx.shutdown, || {}).unwrap();
        let conn = Connection::admit(
            Socket::from(std::os::fd::OwnedFd::from(ours)),
            Peer::Local("test".to_owned()),
            ctx,
            permit,
            None,
        );
        lp.add(conn, Instant::now());
        client
    }

    /// A connection whose client sends without pause (its socket always
    /// has a chunk waiting) gets one chunk a turn, and so does the other
    /// connection of the loop: its echo comes back within a few turns, not
    /// after the busy one's backlog.
    #[test]
    fn a_busy_connection_cannot_starve_another_on_its_loop() {
        let ctx = context();
        let (mut lp, mut clients, _inbox) = a_loop(&ctx, 2);
        // 64-byte buffers: 64 KiB waiting is a thousand chunks.
        clients[0].write_all(&vec![b'x'; 64 * 1024]).unwrap();
        clients[1].write_all(b"quiet").unwrap();
        let mut turns = 0;
        let mut back = [0u8; 5];
        clients[1].set_nonblocking(true).unwrap();
        loop {
            lp.turn(Some(Duration::from_millis(100)));
            turns += 1;
            if let Ok(5) = clients[1].read(&mut back) {
                break;
            }
            assert!(turns < 10, "the quiet connection waited {turns} turns");
        }
        assert_eq!(&back, b"quiet");
        // The busy one made progress too, but a chunk a turn at most.
        let mut echoed = vec![0u8; 64 * 1024];
        clients[0].set_nonblocking(true).unwrap();
        let got = clients[0].read(&mut echoed).unwrap_or(0);
        assert!(got > 0 && got <= turns * 64, "{got} bytes in {turns} turns");
    }

    /// Closing a connection whose receive is in flight cancels it and keeps
    /// the socket open (and the connection in the table) until the
    /// cancelled receive's completion and the cancellation's have arrived.
    #[test]
    fn a_connection_is_closed_only_after_its_last_completion() {
        let ctx = context();
        let (mut lp, mut clients, _inbox) = a_loop(&ctx, 1);
        lp.turn(Some(Duration::ZERO));
        assert_eq!(lp.served[0].as_ref().map(|s| s.in_flight), Some(1));
        lp.close(0, Outcome::TimedOut(Op::Read));
        let served = lp.served[0]
            .as_ref()
            .expect("still held: a receive is in flight");
        assert_eq!(served.in_flight, 2, "the receive and its cancellation");
        assert_eq!(
            ctx.counters.active.load(Relaxed),
            1,
            "the socket is still open"
        );
        let mut turns = 0;
        while lp.served[0].is_some() {
            lp.turn(Some(Duration::from_millis(100)));
            turns += 1;
            assert!(turns < 50, "the cancellation never completed");
        }
        assert_eq!(lp.ring.in_flight(), 0);
        assert_eq!(
            ctx.counters.active.load(Relaxed),
            0,
            "closed once both completions came"
        );
        assert_eq!(ctx.counters.idle_timeouts.load(Relaxed), 1);
        let mut buf = [0u8; 1];
        assert_eq!(
            clients[0].read(&mut buf).unwrap(),
            0,
            "the client sees the close"
        );
    }

    /// Every buffer taken, a receive fails with `ENOBUFS`; the connection
    /// waits, and is served once an echo gives a buffer back.
    #[test]
    fn a_connection_without_a_buffer_is_served_once_one_is_free() {
        let ctx = context();
        // 8 buffers of 64 bytes; nine connections hold one each at most.
        let (mut lp, mut clients, _inbox) = a_loop(&ctx, 9);
        for c in &mut clients {
            c.write_all(b"hello").unwrap();
        }
        let mut turns = 0;
        let mut starved = false;
        while ctx.counters.bytes_echoed.load(Relaxed) < 45 {
            lp.turn(Some(Duration::from_millis(50)));
            starved |= !lp.starved.is_empty();
            // The clients read their echoes, so that sends complete.
            for c in &mut clients {
                c.set_nonblocking(true).unwrap();
                let mut back = [0u8; 5];
                let _ = c.read(&mut back);
            }
            turns += 1;
            assert!(turns < 100, "not every connection was served");
        }
        assert!(starved, "one receive found no buffer");
        assert!(lp.starved.is_empty());
        assert_eq!(ctx.counters.bytes_echoed.load(Relaxed), 45);
    }

    /// A receive submitted while every buffer is taken fails with
    /// `ENOBUFS` at once, data or not, so idle connections wait among the
    /// starved too. When buffers come back, each waiting connection is
    /// given its receive again; an idle one takes no buffer, and one whose
    /// data arrives later is still served (an outside attack found the
    /// returned buffers rationed among the waiting, in order: idle ones
    /// used up the ration, and a connection behind them waited forever).
    #[test]
    fn a_connection_that_waited_for_a_buffer_behind_idle_ones_is_served() {
        let ctx = context();
        // 8 buffers: 8 busy connections take them all in one turn.
        let (mut lp, mut busy, _inbox) = a_loop(&ctx, 8);
        for c in &mut busy {
            c.write_all(b"ping").unwrap();
        }
        let mut turns = 0;
        while lp.ring.free_buffers() > 0 {
            lp.turn(Some(Duration::from_millis(50)));
            turns += 1;
            assert!(turns < 50, "the busy connections never took the buffers");
        }
        // Twelve quiet connections arrive while no buffer is free.
        let mut quiet: Vec<UnixStream> = (0..12).map(|_| connect_to(&mut lp, &ctx)).collect();
        for _ in 0..5 {
            lp.turn(Some(Duration::from_millis(20)));
        }
        // The busy ones read their echoes; then the last quiet one speaks.
        for c in &mut busy {
            let mut back = [0u8; 4];
            c.read_exact(&mut back).unwrap();
        }
        let last = quiet.last_mut().unwrap();
        last.write_all(b"late").unwrap();
        last.set_nonblocking(true).unwrap();
        let mut back = [0u8; 4];
        let mut turns = 0;
        loop {
            lp.turn(Some(Duration::from_millis(20)));
            if let Ok(4) = last.read(&mut back) {
                break;
            }
            turns += 1;
            assert!(turns < 100, "the last connection was never served");
        }
        assert_eq!(&back, b"late");
    }

    /// A client that sends and never reads: once the socket will not take
    /// its echo, the rest is spilled into a copy and the provided buffer
    /// given back, so the loop's shared buffers stay free for the others;
    /// when the client reads again, every byte comes back and the copy is
    /// freed.
    #[test]
    fn a_stalled_echo_holds_no_shared_buffer() {
        let ctx = context();
        let (mut lp, mut clients, _inbox) = a_loop(&ctx, 1);
        let client = &mut clients[0];
        client.set_nonblocking(true).unwrap();
        let chunk = [7u8; 4096];
        let mut sent = 0usize;
        let mut turns = 0;
        while lp.ring.spilled() == 0 {
            match client.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            lp.turn(Some(Duration::from_millis(10)));
            turns += 1;
            assert!(turns < 2000, "no echo was spilled ({sent} bytes sent)");
        }
        // Every provided buffer is back with the kernel.
        assert_eq!(lp.ring.free_buffers(), 8);
        // The client reads: everything it sent comes back, the copy goes.
        client.set_nonblocking(false).unwrap();
        let mut back = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while back < sent {
            lp.turn(Some(Duration::from_millis(10)));
            client.set_nonblocking(true).unwrap();
            while let Ok(n) = client.read(&mut buf) {
                assert!(buf[..n].iter().all(|&b| b == 7));
                back += n;
                if n == 0 {
                    break;
                }
            }
            turns += 1;
            assert!(turns < 20_000, "{back} of {sent} bytes back");
        }
        assert_eq!(back, sent);
        lp.turn(Some(Duration::from_millis(10)));
        assert_eq!(lp.ring.spilled(), 0);
    }

    fn accepted(ctx: &Arc<Context>) -> (Connection, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (socket, peer) = listener.accept().unwrap();
        let permit = ctx.limit.acquire(&ctx.shutdown, || {}).unwrap();
        let conn = Connection::admit(Socket::from(socket), Peer::Ip(peer), ctx, permit, None);
        (conn, client)
    }

    /// Stopping the loops (the server's last step) cancels the receive
    /// every idle connection has in flight, waits for it, and closes the
    /// connection: the gauge and the table are empty, the client sees the
    /// close, and it does not take the cancellation wait.
    #[test]
    fn stopping_cancels_what_is_in_flight_and_closes_every_connection() {
        let ctx = context();
        let loops = UringLoops::start(1, &ctx).unwrap();
        let (conn, mut client) = accepted(&ctx);
        assert!(loops.serve(conn).is_ok());
        client.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).unwrap();
        assert_eq!(ctx.counters.active_uring.load(Relaxed), 1);
        let started = Instant::now();
        drop(loops);
        assert!(started.elapsed() < STOP_WAIT, "{:?}", started.elapsed());
        assert_eq!(ctx.counters.active.load(Relaxed), 0);
        assert_eq!(ctx.counters.active_uring.load(Relaxed), 0);
        assert_eq!(ctx.limit.in_use(), 0, "the slot is freed");
        assert_eq!(client.read(&mut back).unwrap(), 0, "closed");
    }

    /// A loop that is no longer running gives a connection handed to it
    /// back, for the server to refuse and count, and its load is as before.
    #[test]
    fn a_loop_that_has_stopped_gives_the_connection_back() {
        let ctx = context();
        let mut loops = UringLoops::start(1, &ctx).unwrap();
        loops.0.stop();
        let (conn, _client) = accepted(&ctx);
        let Err(back) = loops.serve(conn) else {
            panic!("a stopped loop took a connection");
        };
        assert_eq!(loops.0.loads(), [0]);
        drop(back);
        assert_eq!(ctx.limit.in_use(), 0, "the slot is freed");
    }
}
