//! The event engine: a fixed number of event loops, each a thread waiting on
//! the OS's readiness API through `mio` (epoll on Linux, kqueue on the
//! BSDs and macOS) and serving many non-blocking connections through the
//! resumable echo core.
//!
//! Each loop lends one scratch buffer to whichever connection is ready; a
//! connection keeps bytes of its own only while an echo is partly written,
//! and is not read again until that echo is out, so the kernel's flow
//! control holds back a client that does not read. Idle and write timeouts
//! are deadlines each loop checks on a tick.

use super::loops::{Command, Loops, Wake};
use crate::connection::{Connection, Outcome};
use crate::context::Context;
use crate::echo::{Echo, Step, DEFAULT_BUFFER_SIZE};
use crate::impairment::{Impaired, Plan};
use crate::stream::Op;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The loop's own token: its inbox has something.
const INBOX: Token = Token(usize::MAX);

/// Chunks one connection may echo before the loop serves the others: a bulk
/// client that keeps its socket full must not starve the rest.
const CHUNKS_PER_TURN: u32 = 16;

/// The running event loops and how to reach them.
#[derive(Debug)]
pub(crate) struct EventLoops(Loops<Arc<Waker>>);

impl Wake for Arc<Waker> {
    fn wake(&self) -> io::Result<()> {
        Waker::wake(self)
    }
}

impl EventLoops {
    /// Starts `count` event loops (at least one).
    pub(crate) fn start(count: usize, ctx: &Arc<Context>) -> io::Result<EventLoops> {
        let mut loops = Loops::new("an event loop");
        for _ in 0..count.max(1) {
            // A failure here drops the loops started so far, which stops them.
            loops.add(|end| {
                let poll = Poll::new()?;
                let waker = Arc::new(Waker::new(poll.registry(), INBOX)?);
                let mut event_loop = EventLoop {
                    poll,
                    commands: end.commands,
                    load: end.load,
                    ctx: Arc::clone(ctx),
                    served: Vec::new(),
                    free: Vec::new(),
                    again: Vec::new(),
                    timers: BinaryHeap::new(),
                    scratch: vec![0; DEFAULT_BUFFER_SIZE],
                };
                let thread = thread::Builder::new()
                    .name("echo-events".to_owned())
                    .spawn(move || event_loop.run())?;
                Ok((waker, thread))
            })?;
        }
        Ok(EventLoops(loops))
    }

    /// Hands `conn` to the loop with the fewest connections. Gives it back
    /// if no loop can take it.
    #[allow(clippy::result_large_err)]
    pub(crate) fn serve(&self, mut conn: Connection) -> Result<(), Connection> {
        conn.place_on_event_loop();
        self.0.serve(conn)
    }

    /// Makes every loop try each of its connections once.
    pub(crate) fn nudge(&self) {
        self.0.nudge();
    }
}

/// What a connection is watched for. Edge-triggered, both ways at once:
/// what the echo waits for next (reading, or writing an echo that did not
/// fit) is its own business, and re-registering would cost a call. Where
/// the system reports urgent data apart (`EPOLLPRI`), that too, so that a
/// read stopped at the urgent mark is not taken for an empty queue.
fn interest() -> Interest {
    let both = Interest::READABLE | Interest::WRITABLE;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let both = both | Interest::PRIORITY;
    both
}

/// What a short read says about a socket's receive queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Edge-triggered readiness: a read shorter than the buffer emptied the
    /// queue, and anything arriving later raises a new event.
    OnShortRead,
    /// No such promise (no event, or the peer has closed): read until the
    /// stream would block.
    Unknown,
}

/// One connection on a loop.
struct Served {
    conn: Connection,
    echo: Echo,
    /// An impaired connection's plan.
    impair: Option<Box<Plan>>,
    /// When it last made progress (read or wrote), for the timeouts.
    since: Instant,
}

struct EventLoop {
    poll: Poll,
    commands: Receiver<Command>,
    load: Arc<AtomicUsize>,
    ctx: Arc<Context>,
    /// Indexed by token; `None` slots are listed in `free`.
    served: Vec<Option<Served>>,
    free: Vec<usize>,
    /// Connections that used their turn up while still readable.
    again: Vec<usize>,
    /// Impaired connections waiting for a deadline of their own (a
    /// piece's delay, the pacing): when, and which. A stale entry (the
    /// connection closed, its slot reused) costs one needless turn.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    scratch: Vec<u8>,
}

impl EventLoop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let tick = self.tick();
        // The first sweep comes at once (it finds nothing to close) and sets
        // the pace.
        let mut next_sweep = tick.map(|_| Instant::now());
        loop {
            let timeout = if !self.again.is_empty() {
                Some(Duration::ZERO)
            } else {
                let next = match (next_sweep, self.timers.peek()) {
                    (Some(a), Some(Reverse((b, _)))) => Some(a.min(*b)),
                    (a, b) => a.or(b.map(|Reverse((at, _))| *at)),
                };
                // Rounded up: mio's millisecond timeout would wake a
                // deadline up to a millisecond early, then spin.
                next.map(|at| {
                    at.saturating_duration_since(Instant::now())
                        .saturating_add(Duration::from_micros(999))
                })
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("event loop: poll failed: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let now = Instant::now();
            for event in events.iter() {
                if event.token() == INBOX {
                    continue; // read below, whatever the events
                }
                // An end of file that arrived before this event was taken is
                // in its flags; one that arrives later raises a new event.
                // Urgent data (kept inline, `SO_OOBINLINE`) ends a read at
                // its mark however much follows: a short read then says
                // nothing about the queue.
                let drained = if event.is_read_closed() || event.is_error() || event.is_priority() {
                    Drained::Unknown
                } else {
                    Drained::OnShortRead
                };
                self.serve(event.token().0, now, drained);
            }
            for index in std::mem::take(&mut self.again) {
                self.serve(index, now, Drained::Unknown);
            }
            while let Some(&Reverse((at, index))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                self.serve(index, now, Drained::Unknown);
            }
            if !self.read_commands(now) {
                break;
            }
            if let (Some(at), Some(tick)) = (next_sweep, tick) {
                if now >= at {
                    self.sweep(now);
                    next_sweep = Some(now + tick);
                }
            }
        }
        // Stopped: whatever is left was already shut down by the server.
        for index in 0..self.served.len() {
            if let Some(served) = self.served[index].take() {
                self.load.fetch_sub(1, Relaxed);
                drop(served);
            }
        }
    }

    fn tick(&self) -> Option<Duration> {
        super::sweep_tick(&self.ctx.settings)
    }

    /// Takes the commands waiting in the inbox. Returns `false` on `Stop`.
    fn read_commands(&mut self, now: Instant) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Serve(conn)) => self.add(conn, now),
                Ok(Command::Nudge) => {
                    for index in 0..self.served.len() {
                        // Shutdown: an impaired echo's delays and pacing
                        // no longer hold up the drain (as on threads).
                        if let Some(Some(served)) = self.served.get_mut(index) {
                            if let Some(plan) = &mut served.impair {
                                plan.hurry();
                            }
                        }
                        self.serve(index, now, Drained::Unknown);
                    }
                }
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
        let fd = conn.stream.socket.as_raw_fd();
        let registered = conn.stream.socket.set_nonblocking(true).and_then(|()| {
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(index), interest())
        });
        if let Err(e) = registered {
            log::warn!("{}: cannot watch the connection: {e}", conn.peer);
            self.free.push(index);
            self.load.fetch_sub(1, Relaxed);
            conn.close(Outcome::Failed(e));
            return;
        }
        log::debug!("{}: connected", conn.peer);
        let mut conn = conn;
        self.served[index] = Some(Served {
            impair: conn.impair.take(),
            conn,
            echo: Echo::new(),
            since: now,
        });
    }

    /// Echoes what `index` has for us, for one turn.
    fn serve(&mut self, index: usize, now: Instant, mut drained: Drained) {
        let Some(Some(served)) = self.served.get_mut(index) else {
            return; // a stale event for a connection already closed
        };
        if served.conn.preface_deadline().is_some() {
            match served.conn.read_preface() {
                Ok(Some(echo)) => {
                    served.echo = echo;
                    // Idle (and write) time counts from here, not accept.
                    served.since = now;
                    // The header was read to its end, not the socket to
                    // empty: what followed it is still to be read.
                    drained = Drained::Unknown;
                }
                Ok(None) => return,
                Err(outcome) => return self.close(index, outcome),
            }
        }
        if served.conn.handshake_deadline().is_some() {
            match served.conn.handshake() {
                // Idle (and write) time counts from here.
                Ok(true) => served.since = now,
                Ok(false) => return,
                Err(outcome) => return self.close(index, outcome),
            }
        }
        if served.conn.is_tls() {
            // A short read of plaintext says nothing of the socket: rustls
            // may hold more records, or have read only some of the queue.
            drained = Drained::Unknown;
        }
        let before = (served.echo.echoed(), served.echo.is_writing());
        let mut metered = served.conn.metered();
        let (ended, again) = match &mut served.impair {
            None => turn(&mut served.echo, &mut metered, &mut self.scratch, drained),
            Some(plan) => {
                let counters = &self.ctx.counters;
                let mut stream = Impaired {
                    inner: &mut metered,
                    plan,
                    pieces: &counters.impaired_pieces,
                    stalls: &counters.impaired_stalls,
                    blocking: None,
                    wake_at: None,
                };
                let done = turn(&mut served.echo, &mut stream, &mut self.scratch, drained);
                if let Some(at) = stream.wake_at {
                    // Waiting for its own deadline (a delay, the pacing),
                    // not for the client: not idle.
                    self.timers.push(Reverse((at, index)));
                    served.since = now;
                }
                done
            }
        };
        if again {
            self.again.push(index);
        }
        if (served.echo.echoed(), served.echo.is_writing()) != before {
            served.since = now;
        }
        if let Some(outcome) = ended {
            self.close(index, outcome);
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
            if let Some(deadline) = served.conn.preface_deadline() {
                if now >= deadline {
                    let outcome = served.conn.preface_timed_out();
                    self.close(index, outcome);
                }
                continue;
            }
            if let Some(deadline) = served.conn.handshake_deadline() {
                if now >= deadline {
                    let outcome = served.conn.handshake_timed_out();
                    self.close(index, outcome);
                }
                continue;
            }
            let (limit, op) = if served.echo.is_writing() {
                (write, Op::Write)
            } else {
                (idle, Op::Read)
            };
            if limit.is_some_and(|limit| now.duration_since(served.since) >= limit) {
                self.close(index, Outcome::TimedOut(op));
            }
        }
    }

    fn close(&mut self, index: usize, outcome: Outcome) {
        let Some(served) = self.served[index].take() else {
            return;
        };
        // No `deregister`: closing the socket removes it from the poll set
        // (epoll and kqueue both), and this is its last descriptor (the
        // table's reference goes with `served`), so the call would only
        // cost a system call per connection.
        self.free.push(index);
        self.load.fetch_sub(1, Relaxed);
        served.conn.close(outcome);
    }
}

/// One turn of a connection's echo over `stream`: at most
/// `CHUNKS_PER_TURN` chunks. Returns how it ended, if it did, and whether
/// it used its turn up while still readable (to be served again soon).
fn turn<S: std::io::Read + std::io::Write>(
    echo: &mut Echo,
    stream: &mut S,
    scratch: &mut [u8],
    drained: Drained,
) -> (Option<Outcome>, bool) {
    let mut turn = CHUNKS_PER_TURN;
    loop {
        match echo.step(stream, scratch) {
            Ok(Step::Echoed(n)) => {
                if n < scratch.len() && drained == Drained::OnShortRead {
                    // The read took less than it could: the socket was
                    // empty then, and new bytes raise a new event. Saves
                    // a `read` that would fail with EAGAIN, a third of
                    // the system calls of a small message.
                    return (None, false);
                }
                turn -= 1;
                if turn == 0 {
                    return (None, true);
                }
            }
            // An echo finished writing; the readable edge that came
            // while it waited may be spent, so read until EAGAIN.
            Ok(Step::CaughtUp) => {}
            Ok(Step::Blocked) => return (None, false),
            Ok(Step::Finished) => return (Some(Outcome::Finished(echo.echoed())), false),
            Err(e) => return (Some(Outcome::Failed(e)), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Peer;
    use socket2::Socket;

    /// A connection that always has more to read is served
    /// `CHUNKS_PER_TURN` chunks a turn and put back in line, so that one
    /// busy client cannot starve the others of its loop.
    #[test]
    fn a_busy_connection_yields_after_its_turn() {
        use std::io::{Read, Write};
        let settings = crate::server::Server::builder().settings().clone();
        let ctx = Arc::new(Context::new(settings, 4));
        let (commands_in, commands) = std::sync::mpsc::channel();
        let poll = Poll::new().unwrap();
        let mut event_loop = EventLoop {
            poll,
            commands,
            load: Arc::new(AtomicUsize::new(1)),
            ctx: Arc::clone(&ctx),
            served: Vec::new(),
            free: Vec::new(),
            again: Vec::new(),
            timers: BinaryHeap::new(),
            // Small chunks, so that a turn fits in the socket buffers.
            scratch: vec![0; 16],
        };
        let (ours, mut client) = std::os::unix::net::UnixStream::pair().unwrap();
        let permit = ctx.limit.acquire(&ctx.shutdown, || {}).unwrap();
        let peer = Peer::Local("test".to_owned());
        let conn = Connection::admit(
            Socket::from(std::os::fd::OwnedFd::from(ours)),
            peer,
            &ctx,
            permit,
            None,
        );
        let now = Instant::now();
        event_loop.add(conn, now);
        let turn = CHUNKS_PER_TURN as usize * 16;
        client.write_all(&vec![b'x'; turn + 100]).unwrap();
        event_loop.serve(0, now, Drained::Unknown);
        assert_eq!(event_loop.again, [0], "put back in line");
        client.set_nonblocking(true).unwrap();
        let mut echoed = vec![0; turn + 100];
        assert_eq!(client.read(&mut echoed).unwrap(), turn, "one turn's worth");
        drop(commands_in);
    }

    /// A loop that is no longer running (it panicked) gives a connection
    /// handed to it back, for the server to refuse and count, and its load
    /// is as before.
    #[test]
    fn a_loop_that_has_stopped_gives_the_connection_back() {
        let settings = crate::server::Server::builder().settings().clone();
        let ctx = Arc::new(Context::new(settings, 4));
        let mut loops = EventLoops::start(1, &ctx).unwrap();
        loops.0.stop();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, peer) = listener.accept().unwrap();
        let permit = ctx.limit.acquire(&ctx.shutdown, || {}).unwrap();
        let conn = Connection::admit(Socket::from(socket), Peer::Ip(peer), &ctx, permit, None);
        let Err(back) = loops.serve(conn) else {
            panic!("a stopped loop took a connection");
        };
        assert_eq!(loops.0.loads(), [0]);
        drop(back);
        assert_eq!(ctx.limit.in_use(), 0, "the slot is freed");
    }
}
