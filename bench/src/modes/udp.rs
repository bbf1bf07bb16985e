//! `udp`: datagram echo. Each of `--sockets` UDP sockets (bound to a
//! loopback port of its own, connected to the server) keeps `--inflight`
//! datagrams of `--size` bytes outstanding; every reply is checked (see
//! [`crate::datagram`]) and answered by the next datagram at once.
//!
//! A datagram not answered within `--loss-timeout-ms` counts as lost and is
//! replaced, so a lossy server slows the run down but never stalls it. An
//! answer that comes after that counts as late (not an error). Wrong
//! sizes, corrupted or cross-talked replies and duplicates are errors.
//!
//! The window starts when the first datagrams go out. At the deadline no
//! new datagram starts; the ones in flight are still awaited (at most a
//! loss timeout) and checked, and count as answered or lost, but the rate
//! and the latencies only count answers within the window. So at the end
//! `sent == answered + lost` (late answers were counted lost first).
//!
//! Per socket, the state of its last `window` sequence numbers (sent at,
//! answered, lost) is kept in a ring; a duplicate of a datagram older than
//! that is only counted as late. A datagram still outstanding when its
//! ring slot is needed again counts as lost then.
//!
//! I/O is batched per socket (see [`crate::mmsg`]): a readable socket is
//! drained with `recvmmsg`, and the datagrams that replace its answered
//! ones go out in one send (UDP GSO, else `sendmmsg`).

use super::{new_histogram, Ctx, Outcome, Tally};
use crate::conn::Failure;
use crate::datagram::{Fault, Format, HEADER};
use crate::mmsg::{Piece, RecvBatch, Sender, MAX_BATCH};
use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Ring slot value: answered (or never used).
const ANSWERED: u64 = 0;
/// Ring slot value: given up on as lost.
const LOST: u64 = u64::MAX;

/// Sequence numbers remembered per socket, over all sockets of a thread
/// (spread evenly, within the bounds below): ~8 MiB.
const WINDOW_TOTAL: usize = 1 << 20;
const WINDOW_MIN: usize = 1 << 10;
const WINDOW_MAX: usize = 1 << 16;

/// The counters of a UDP run; every one is in the JSON report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams answered in time (including the drain after the window).
    pub answered: u64,
    /// Datagrams not answered within the loss timeout.
    pub lost: u64,
    /// Answers that came after their datagram had been counted lost.
    pub late: u64,
    pub duplicates: u64,
    pub corrupted: u64,
    pub wrong_size: u64,
    pub crosstalk: u64,
    /// Datagrams the kernel dropped because a client socket's receive
    /// buffer was full (Linux, from /proc/net/udp); `None` if unknown.
    pub client_drops: Option<u64>,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.lost += o.lost;
        self.late += o.late;
        self.duplicates += o.duplicates;
        self.corrupted += o.corrupted;
        self.wrong_size += o.wrong_size;
        self.crosstalk += o.crosstalk;
        self.client_drops = match (self.client_drops, o.client_drops) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// One socket and the state of its datagrams.
struct Sock {
    io: UdpSocket,
    /// Global id (in the header).
    id: u32,
    next_seq: u64,
    /// No outstanding datagram has a lower sequence number.
    oldest: u64,
    in_flight: usize,
    /// Datagrams to send as soon as the socket takes them.
    to_send: usize,
    /// A send would have blocked: waiting for a writable event.
    blocked: bool,
    /// Per sequence number (mod window): send time (ns since the thread's
    /// clock + 1), [`ANSWERED`] or [`LOST`].
    ring: Box<[u64]>,
}

/// Everything a thread counts, and what it needs to count.
struct Run<'a> {
    ctx: &'a Ctx<'a>,
    format: Format,
    clock: Instant,
    /// The window ends (ns on `clock`); no datagram starts after it.
    deadline_ns: u64,
    timeout_ns: u64,
    mask: u64,
    counts: Counts,
    tally: Tally,
    hist: Option<Histogram<u64>>,
    in_window: u64,
    in_flight: usize,
    tx: Sender,
}

impl Run<'_> {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos())
            .unwrap_or(LOST - 1)
            .clamp(1, LOST - 1)
    }

    fn fault(&mut self, socket: u32, fault: Fault) {
        match fault {
            Fault::WrongSize { .. } => self.counts.wrong_size += 1,
            Fault::Corrupted { .. } => self.counts.corrupted += 1,
            Fault::CrossTalk { .. } => self.counts.crosstalk += 1,
            Fault::Duplicate { .. } => self.counts.duplicates += 1,
        }
        self.tally.fail(Failure::Datagram { socket, fault });
    }

    /// One more datagram is needed on `s` (one was answered or lost), if
    /// the window is still open.
    fn replace(&self, s: &mut Sock, now: u64) {
        if now < self.deadline_ns {
            s.to_send += 1;
        }
    }

    /// Handles one received reply on `s`.
    fn reply(&mut self, s: &mut Sock, data: &[u8], truncated: bool, now: u64) {
        let pattern = self.ctx.pattern;
        let seq = match self
            .format
            .check(pattern, s.id, s.next_seq, data, truncated)
        {
            Ok(seq) => seq,
            Err(fault) => return self.fault(s.id, fault),
        };
        if s.next_seq - seq > self.mask + 1 {
            // Older than the ring remembers: long given up on.
            self.counts.late += 1;
            return;
        }
        let slot = &mut s.ring[(seq & self.mask) as usize];
        match *slot {
            ANSWERED => self.fault(s.id, Fault::Duplicate { seq }),
            LOST => self.counts.late += 1,
            sent_at => {
                *slot = ANSWERED;
                s.in_flight -= 1;
                self.in_flight -= 1;
                self.counts.answered += 1;
                if now < self.deadline_ns {
                    self.in_window += 1;
                    if let Some(h) = self.hist.as_mut() {
                        h.saturating_record(now.saturating_sub(sent_at) / 1000);
                    }
                }
                self.replace(s, now);
            }
        }
    }

    /// Gives up on `s`'s datagrams sent before `now - timeout`.
    fn expire(&mut self, s: &mut Sock, now: u64) {
        s.oldest = s.oldest.max(s.next_seq.saturating_sub(self.mask + 1));
        while s.oldest < s.next_seq {
            let slot = &mut s.ring[(s.oldest & self.mask) as usize];
            match *slot {
                ANSWERED | LOST => {}
                sent_at if now.saturating_sub(sent_at) >= self.timeout_ns => {
                    *slot = LOST;
                    self.lose(s, now);
                }
                _ => break,
            }
            s.oldest += 1;
        }
    }

    fn lose(&mut self, s: &mut Sock, now: u64) {
        s.in_flight -= 1;
        self.in_flight -= 1;
        self.counts.lost += 1;
        self.replace(s, now);
    }

    /// Sends what `s` has to send, in batches, until done or the socket
    /// would block (then a writable event is awaited) or fails (then the
    /// next expiry scan tries again).
    fn flush(&mut self, s: &mut Sock, poll: &Poll, token: Token) {
        let pattern = self.ctx.pattern;
        let mut headers = [[0u8; HEADER]; MAX_BATCH];
        while s.to_send > 0 && !s.blocked {
            let n = s.to_send.min(MAX_BATCH);
            for (i, h) in headers[..n].iter_mut().enumerate() {
                *h = self.format.header(s.id, s.next_seq + i as u64);
            }
            let mut pieces: [Piece; MAX_BATCH] = std::array::from_fn(|_| Piece {
                header: &[],
                payload: &[],
            });
            for (i, p) in pieces[..n].iter_mut().enumerate() {
                *p = Piece {
                    header: &headers[i],
                    payload: self.format.payload(pattern, s.id, s.next_seq + i as u64),
                };
            }
            match self.tx.send(&s.io, &pieces[..n]) {
                Ok(sent) => {
                    let now = self.now_ns();
                    for _ in 0..sent {
                        let slot = &mut s.ring[(s.next_seq & self.mask) as usize];
                        if !matches!(*slot, ANSWERED | LOST) {
                            // Its sequence number a whole ring ago is
                            // still unanswered: lost.
                            *slot = LOST;
                            self.lose(s, now);
                        }
                        s.ring[(s.next_seq & self.mask) as usize] = now;
                        s.next_seq += 1;
                    }
                    s.in_flight += sent;
                    self.in_flight += sent;
                    s.to_send -= sent;
                    self.counts.sent += sent as u64;
                    if sent == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    s.blocked = true;
                    if let Err(e) = poll.registry().reregister(
                        &mut s.io,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.tally.fail(Failure::Io(e));
                    }
                }
                Err(e) => {
                    // E.g. ECONNREFUSED: nothing listens (yet). Retried at
                    // the next scan, so at most one error per socket per
                    // scan interval.
                    self.tally.fail(Failure::Io(e));
                    break;
                }
            }
        }
    }

    /// Reads every reply waiting on `s`.
    fn drain(&mut self, s: &mut Sock, rb: &mut RecvBatch) {
        let mut refused = 0;
        loop {
            match rb.recv(&s.io) {
                Ok(n) => {
                    let now = self.now_ns();
                    for i in 0..n {
                        let (data, truncated) = rb.get(i);
                        self.reply(s, data, truncated, now);
                    }
                    if n < rb.batch() {
                        return; // the queue was empty
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // An ICMP error (ECONNREFUSED) is reported once and
                    // cleared; data may still be queued behind it.
                    self.tally.fail(Failure::Io(e));
                    refused += 1;
                    if refused > 4 {
                        return;
                    }
                }
            }
        }
    }
}

/// A nonblocking UDP socket on a loopback port (or any address, for a
/// non-loopback server) connected to `addr`, with a receive buffer for
/// `want` bytes if the system allows it.
pub(super) fn open(addr: SocketAddr, want: usize) -> io::Result<UdpSocket> {
    let local = match addr {
        SocketAddr::V4(a) if a.ip().is_loopback() => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(a) if a.ip().is_loopback() => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let sock = std::net::UdpSocket::bind(local)?;
    sock.connect(addr)?;
    sock.set_nonblocking(true)?;
    grow_rcvbuf(&sock, want);
    Ok(UdpSocket::from_std(sock))
}

/// Asks for a receive buffer of `want` bytes when the default is smaller
/// (the kernel caps it at net.core.rmem_max); warns once if it stays short,
/// since replies dropped at the client would count as lost.
#[cfg(unix)]
fn grow_rcvbuf(sock: &std::net::UdpSocket, want: usize) {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let fd = sock.as_raw_fd();
    let get = || {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid descriptor; `v` and `len` are valid for writing.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            v.max(0) as usize
        } else {
            0
        }
    };
    if get() >= want {
        return;
    }
    let v = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    // SAFETY: valid descriptor; the value is a `c_int` of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let got = get();
    if got < want && !WARNED.swap(true, Relaxed) {
        eprintln!(
            "echo-bench: warning: UDP receive buffer is {got} bytes, below the {want} that \
             --inflight x --size needs; replies may be dropped at the client (counted in \
             client_drops; raise net.core.rmem_max)"
        );
    }
}

#[cfg(not(unix))]
fn grow_rcvbuf(_: &std::net::UdpSocket, _: usize) {}

/// Drops that /proc/net/udp (and udp6) shows for the client's sockets: those
/// bound to one of `ports` and connected to `server`'s port.
#[cfg(target_os = "linux")]
fn client_drops(socks: &[Sock], server: SocketAddr) -> Option<u64> {
    let ports: std::collections::HashSet<u16> = socks
        .iter()
        .filter_map(|s| s.io.local_addr().ok().map(|a| a.port()))
        .collect();
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut total = None;
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let mut sum = 0u64;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if f.len() < 13 {
                continue;
            }
            let ours = port_of(f[1]).is_some_and(|p| ports.contains(&p))
                && port_of(f[2]) == Some(server.port());
            if ours {
                sum += f[12].parse::<u64>().unwrap_or(0);
            }
        }
        total = Some(total.unwrap_or(0) + sum);
    }
    total
}

#[cfg(not(target_os = "linux"))]
fn client_drops(_: &[Sock], _: SocketAddr) -> Option<u64> {
    None
}

pub fn run(ctx: &Ctx, ids: Range<usize>) -> Outcome {
    let cfg = ctx.cfg;
    let started = Instant::now();
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => return Outcome::broken(started, ids.len(), Failure::Io(e)),
    };
    let format = Format {
        magic: ctx.udp_magic,
        size: cfg.size as usize,
    };
    let window = (WINDOW_TOTAL / ids.len().max(1))
        .clamp(WINDOW_MIN, WINDOW_MAX)
        .max((cfg.inflight * 4).next_power_of_two());
    let mut tally = Tally::default();
    let rcvbuf = cfg.inflight * (format.size + 1024) * 2;
    let mut socks: Vec<Sock> = Vec::with_capacity(ids.len());
    for id in ids.clone() {
        let opened = open(cfg.addr, rcvbuf).and_then(|mut io| {
            poll.registry()
                .register(&mut io, Token(socks.len()), Interest::READABLE)
                .map(|()| io)
        });
        match opened {
            Ok(io) => socks.push(Sock {
                io,
                id: id as u32,
                next_seq: 0,
                oldest: 0,
                in_flight: 0,
                to_send: cfg.inflight,
                blocked: false,
                ring: vec![ANSWERED; window].into_boxed_slice(),
            }),
            Err(e) => tally.fail(Failure::Connect(e)),
        }
    }
    let clock = Instant::now();
    let window_end = ctx.deadline_from(clock);
    let ns = |t: Instant| {
        u64::try_from(t.saturating_duration_since(clock).as_nanos()).unwrap_or(LOST - 1)
    };
    let mut run = Run {
        ctx,
        format,
        clock,
        deadline_ns: ns(window_end),
        timeout_ns: u64::try_from(cfg.loss_timeout.as_nanos()).unwrap_or(LOST - 1),
        mask: window as u64 - 1,
        counts: Counts::default(),
        tally,
        hist: new_histogram(),
        in_window: 0,
        in_flight: 0,
        tx: Sender::new(format.size, cfg.gso),
    };
    let scan_every =
        (cfg.loss_timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(25));
    let mut rb = RecvBatch::new(cfg.inflight + 1, format.size + 1);
    let mut events = Events::with_capacity(1024);

    for (i, s) in socks.iter_mut().enumerate() {
        run.flush(s, &poll, Token(i));
    }
    let mut next_scan = Instant::now() + scan_every;
    let mut closed = false;
    loop {
        let now = Instant::now();
        let open_window = now < window_end;
        if !open_window && !closed {
            // Nothing new starts once the window is over, not even what
            // was waiting for a blocked socket.
            closed = true;
            for s in socks.iter_mut() {
                s.to_send = 0;
            }
        }
        if !open_window && run.in_flight == 0 {
            break;
        }
        if now >= ctx.hard_cap {
            // Whatever is still unanswered is lost.
            let left = run.in_flight as u64;
            run.counts.lost += left;
            run.in_flight = 0;
            run.tally.fail(Failure::Stalled);
            break;
        }
        if now >= next_scan {
            let t = run.now_ns();
            for (i, s) in socks.iter_mut().enumerate() {
                run.expire(s, t);
                if s.to_send > 0 {
                    run.flush(s, &poll, Token(i));
                }
            }
            next_scan = now + scan_every;
            ctx.progress.count(run.in_window);
            ctx.progress.lost(run.counts.lost);
            ctx.progress.errors(run.tally.errors);
            continue;
        }
        let mut until = next_scan.min(ctx.hard_cap);
        if open_window {
            until = until.min(window_end);
        }
        match poll.poll(&mut events, Some(until.saturating_duration_since(now))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                run.counts.lost += run.in_flight as u64;
                run.in_flight = 0;
                run.tally.fail(Failure::Io(e));
                break;
            }
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(s) = socks.get_mut(i) else { continue };
            if ev.is_writable() && s.blocked {
                s.blocked = false;
                if let Err(e) = poll
                    .registry()
                    .reregister(&mut s.io, Token(i), Interest::READABLE)
                {
                    run.tally.fail(Failure::Io(e));
                }
            }
            if ev.is_readable() || ev.is_error() {
                run.drain(s, &mut rb);
            }
            if s.to_send > 0 {
                run.flush(s, &poll, Token(i));
            }
        }
        ctx.progress.count(run.in_window);
    }
    run.counts.client_drops = client_drops(&socks, cfg.addr);
    ctx.progress.count(run.in_window);
    ctx.progress.lost(run.counts.lost);
    ctx.progress.errors(run.tally.errors);

    let mut out = Outcome::new(clock);
    out.end = window_end.min(Instant::now());
    out.count = run.in_window;
    out.hist = run.hist;
    out.udp = run.counts;
    out.tally = run.tally;
    out
}
