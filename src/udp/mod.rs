//! UDP echo (RFC 862): each datagram is answered by one datagram with the
//! same bytes, sent back to its source, unless the source filter or the rate
//! limit says no.
//!
//! Each UDP address is served by several receive threads (one per core by
//! default), each on its own socket bound with `SO_REUSEPORT` on Linux, so
//! one busy source does not hold up the rest. Each thread receives and
//! answers datagrams in batches (`recvmmsg`/`sendmmsg` on Linux), judges each datagram on its
//! own (the source filter, the size, the one rate limit every UDP thread of
//! the server shares), and echoes it through the same
//! [`echo`](crate::echo) as every stream, over an in-memory exchange.

mod batch;

pub use crate::address::normalize;
use crate::address::ListenAddr;
use crate::context::Context;
use crate::datagram_filter::is_own_address;
pub use crate::datagram_filter::{check_source, Refusal};
use crate::impairment::SourcePlans;
use crate::settings::UdpSettings;
use crate::shutdown::POLL;
use crate::stats::Counters;
use batch::{Batch, Replies};
use socket2::{Domain, Protocol, Socket, Type};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The largest UDP payload: 65,535 minus the 8-byte UDP header (IPv6 without
/// jumbograms; IPv4 allows 65,507). Larger datagrams cannot exist.
pub const MAX_DATAGRAM: usize = 65_527;

/// Socket buffer size asked for, each way, unless configured: room for a
/// burst of about 2,000 full-size Ethernet datagrams (the kernel's default,
/// about 208 KiB, overflowed at 64 sockets × 4 datagrams in flight).
pub const DEFAULT_UDP_BUFFER: usize = 4 << 20;

/// A bound UDP address: one socket per receive thread.
#[derive(Debug)]
pub(crate) struct DatagramSocket {
    sockets: Vec<Socket>,
    pub(crate) addr: ListenAddr,
    /// Learn each datagram's destination address, to reply from it: needed
    /// when bound to a wildcard address on a host with several addresses.
    reply_from_arrival: bool,
    /// The receive buffer the kernel granted, when less than asked for.
    pub(crate) short_buffer: Option<usize>,
}

/// Binds `addr` for `threads` receive threads: that many sockets sharing the
/// address through `SO_REUSEPORT` where the OS balances datagrams across
/// them (Linux), one socket elsewhere.
pub(crate) fn bind_udp(addr: SocketAddr, settings: &UdpSettings) -> io::Result<DatagramSocket> {
    let wanted = if cfg!(target_os = "linux") {
        settings.threads.max(1)
    } else {
        1
    };
    let mut sockets: Vec<Socket> = Vec::with_capacity(wanted);
    let mut bound = addr;
    while sockets.len() < wanted {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(!addr.ip().is_unspecified())?;
        }
        #[cfg(target_os = "linux")]
        if wanted > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&bound.into())?;
        if let Some(local) = socket.local_addr()?.as_socket() {
            // Port 0: the others join the port the OS chose for the first.
            bound.set_port(local.port());
        }
        sockets.push(socket);
    }
    DatagramSocket::from_sockets(sockets, settings)
}

impl DatagramSocket {
    /// Serves a socket the caller bound (one thread: `SO_REUSEPORT` siblings
    /// cannot be added to a socket bound without it).
    pub(crate) fn from_socket(
        socket: Socket,
        settings: &UdpSettings,
    ) -> io::Result<DatagramSocket> {
        DatagramSocket::from_sockets(vec![socket], settings)
    }

    fn from_sockets(sockets: Vec<Socket>, settings: &UdpSettings) -> io::Result<DatagramSocket> {
        let Some(first) = sockets.first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no UDP socket"));
        };
        let local = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
        let mut reply_from_arrival = local.ip().is_unspecified();
        let mut short_buffer = None;
        for socket in &sockets {
            // The receive threads block in `recv` with `POLL` as the
            // backstop; a socket adopted with `O_NONBLOCK` (systemd's
            // `NonBlocking=yes`) would make that a spin.
            socket.set_nonblocking(false)?;
            socket.set_read_timeout(Some(POLL))?;
            // GRO where the receive buffers (one byte over the largest
            // datagram answered) hold whatever the kernel merges.
            let gro = settings.max_datagram + 1 >= batch::GRO_BUFFER;
            reply_from_arrival &= batch::enable(socket, local, local.ip().is_unspecified(), gro);
            let granted = size_buffers(socket, settings.buffer);
            if granted < settings.buffer {
                short_buffer = Some(granted);
            }
        }
        Ok(DatagramSocket {
            sockets,
            addr: ListenAddr::Udp(local),
            reply_from_arrival,
            short_buffer,
        })
    }

    /// Wakes every thread blocked in `recv`: on Linux, shutting down the
    /// read side of each socket makes its `recv` return at once; elsewhere
    /// (one socket per address), an empty datagram to ourselves.
    pub(crate) fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let target = match &self.addr {
            ListenAddr::Udp(addr) => Some(crate::address::connectable(*addr)),
            _ => None,
        };
        let handles: Vec<Socket> = if cfg!(target_os = "linux") {
            self.sockets
                .iter()
                .filter_map(|s| s.try_clone().ok())
                .collect()
        } else {
            Vec::new()
        };
        move || {
            for socket in &handles {
                // Fails with ENOTCONN but wakes the receiver all the same.
                let _ = socket.shutdown(std::net::Shutdown::Read);
            }
            if !handles.is_empty() {
                return;
            }
            let Some(target) = target else { return };
            let any = SocketAddr::new(
                match target {
                    SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                },
                0,
            );
            if let Ok(socket) = std::net::UdpSocket::bind(any) {
                // Best effort: the `POLL` timeout is the backstop.
                let _ = socket.send_to(&[], target);
            }
        }
    }

    /// Answers datagrams until shutdown, one thread per socket.
    pub(crate) fn serve(self, ctx: &std::sync::Arc<Context>) {
        let DatagramSocket {
            mut sockets,
            addr,
            reply_from_arrival,
            ..
        } = self;
        let first = sockets.remove(0);
        let mut others = Vec::new();
        for socket in sockets {
            let (ctx, thread_addr) = (std::sync::Arc::clone(ctx), addr.clone());
            let spawned = thread::Builder::new()
                .name("echo-udp".to_owned())
                .spawn(move || serve_socket(&socket, &thread_addr, reply_from_arrival, &ctx));
            match spawned {
                Ok(t) => others.push(t),
                // The socket went with the closure: closed, it leaves the
                // `SO_REUSEPORT` group, and the kernel spreads its share
                // over the sockets still served.
                Err(e) => log::warn!("{addr}: one UDP receive thread fewer: {e}"),
            }
        }
        serve_socket(&first, &addr, reply_from_arrival, ctx);
        for t in others {
            if t.join().is_err() {
                log::error!("{addr}: a UDP thread panicked");
            }
        }
        log::debug!("{addr}: no longer answering");
    }
}

/// Asks for `bytes` of receive and send buffer, beyond `net.core.rmem_max`
/// when privileged; returns the receive buffer granted.
fn size_buffers(socket: &Socket, bytes: usize) -> usize {
    let _ = socket.set_recv_buffer_size(bytes);
    let _ = socket.set_send_buffer_size(bytes);
    #[cfg(target_os = "linux")]
    {
        // Linux reports twice what it grants (the other half is its own
        // bookkeeping); the FORCE options pass rmem_max with CAP_NET_ADMIN.
        const SO_SNDBUFFORCE: libc::c_int = 32;
        const SO_RCVBUFFORCE: libc::c_int = 33;
        let granted = |s: &Socket| s.recv_buffer_size().map_or(0, |n| n / 2);
        if granted(socket) < bytes {
            let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
            // Best effort: the size granted, read below, tells.
            let fd = std::os::fd::AsFd::as_fd(socket);
            let _ = crate::sys::sockopt::set_int(fd, libc::SOL_SOCKET, SO_RCVBUFFORCE, value);
            let _ = crate::sys::sockopt::set_int(fd, libc::SOL_SOCKET, SO_SNDBUFFORCE, value);
        }
        granted(socket)
    }
    #[cfg(not(target_os = "linux"))]
    socket.recv_buffer_size().unwrap_or(0)
}

/// A received datagram's source, length and verdict so far (`None`: no
/// source address to answer).
type Judged = Option<(SocketAddr, usize, Result<(), Refusal>)>;

/// One receive thread: batches in, replies out, until shutdown.
fn serve_socket(socket: &Socket, addr: &ListenAddr, reply_from_arrival: bool, ctx: &Context) {
    let settings = &ctx.settings.udp;
    // One byte more than the largest datagram accepted, so that a larger
    // one shows as too long instead of passing truncated.
    let mut batch = Batch::new(settings.max_datagram + 1, reply_from_arrival);
    let mut replies = Replies::default();
    let mut scratch = vec![0u8; settings.max_datagram.max(1)];
    let counters = &ctx.counters;
    let mut drops_seen: u32 = 0;
    // Each datagram of a batch: its source, length and verdict so far.
    let mut verdicts: Vec<Judged> = Vec::with_capacity(batch::BATCH);
    let mut truncated_controls: u64 = 0;
    // Whether the socket may hand over merged datagrams (UDP_GRO): as
    // `bind` decided, from the same buffer size.
    let gro = cfg!(target_os = "linux") && settings.max_datagram + 1 >= batch::GRO_BUFFER;
    let own = match addr {
        ListenAddr::Udp(local) => Some(*local),
        _ => None,
    };
    // Impaired replies go out one at a time from a queue of their own (a
    // delay is a due time), not through the batch send: looked at once,
    // here, so that an unimpaired socket runs as before.
    let mut impaired = ctx
        .udp_impair
        .as_ref()
        .filter(|_| {
            ctx.settings
                .impair
                .as_ref()
                .is_some_and(|imp| imp.applies_to(own.map(|a| a.port())))
        })
        .map(Delayed::new);
    while !ctx.shutdown.is_requested() {
        if let Some(delayed) = &mut impaired {
            delayed.send_due(socket, counters, addr);
            // Woken for the next due reply, else as usual.
            let _ = socket.set_read_timeout(Some(delayed.wait()));
        }
        let received = match batch.recv(socket) {
            Ok(n) => n,
            Err(e) if crate::stream::is_timeout(&e) => continue,
            Err(e) => {
                // ICMP errors from earlier replies surface here on some
                // systems; they concern one client, not the socket.
                log::debug!("{addr}: recv: {e}");
                continue;
            }
        };
        if ctx.shutdown.is_requested() {
            break;
        }
        replies.clear();
        verdicts.clear();
        // First what needs no lock: drop counts, size, the source filter.
        for index in 0..received {
            let datagram = batch.datagram(index);
            // With GRO on (the default buffers), a buffer may hold several
            // datagrams, told apart only by a control message: cut short,
            // it is not known where one ends, and answering the buffer as
            // one datagram would send what no client sent. Not answered.
            let unsplittable = datagram.control_truncated && gro;
            if datagram.control_truncated {
                truncated_controls += 1;
                if truncated_controls == 1 {
                    log::debug!(
                        "{addr}: a datagram's control messages were cut short (MSG_CTRUNC): \
                         its arrival address is ignored and the reply leaves from the \
                         socket's own address, or with GRO on it is not answered (logged \
                         once per receive thread)"
                    );
                }
            }
            if let Some(total) = datagram.drops {
                // A running count per socket, wrapping at 2^32.
                Counters::add(
                    &counters.udp_kernel_drops,
                    u64::from(total.wrapping_sub(drops_seen)),
                );
                drops_seen = total;
            }
            verdicts.push(datagram.source.filter(|_| !unsplittable).map(|source| {
                let len = datagram.data.len();
                let verdict = if len > settings.max_datagram {
                    Err(Refusal::TooLarge)
                } else if own.is_some_and(|own| is_own_address(source, own, datagram.arrival)) {
                    // Whatever the filter: an echo to itself never ends.
                    Err(Refusal::InvalidSource)
                } else if settings.filter_sources {
                    check_source(source)
                } else {
                    Ok(())
                };
                (source, len, verdict)
            }));
        }
        if let Some(limiter) = &ctx.udp_limiter {
            // The limiter is shared by every UDP thread: held for this loop
            // only, never while echoing, logging (--log-data) or sending, so
            // a slow stderr or a full send buffer stalls this thread alone.
            let now = Instant::now();
            let mut limiter = limiter.lock().unwrap_or_else(PoisonError::into_inner);
            for (source, len, verdict) in verdicts.iter_mut().flatten() {
                if verdict.is_ok() {
                    *verdict = limiter.judge(source.ip(), *len, now);
                }
            }
        }
        for (index, slot) in verdicts.iter().enumerate() {
            let Some((source, len, verdict)) = *slot else {
                continue;
            };
            if let Err(refusal) = verdict {
                counters.count_refusal(refusal);
                log::debug!(
                    peer:% = source, reason:? = refusal;
                    "{addr}: no answer to {source}: {refusal:?}"
                );
                continue;
            }
            replies.push(index, |reply| {
                let start = reply.len();
                let mut exchange = Exchange {
                    request: batch.datagram(index).data,
                    reply,
                };
                // In memory, `echo` cannot fail.
                let echoed = crate::echo::echo_with_buffer(&mut exchange, &mut scratch).is_ok();
                if echoed && ctx.settings.log_data && len > 0 {
                    log::info!(
                        "{source} sent a {len} byte datagram: \"{}\"",
                        crate::escape(&exchange.reply[start..])
                    );
                }
                echoed
            });
        }
        if let Some(delayed) = &mut impaired {
            delayed.schedule(&replies, &verdicts, counters);
            delayed.send_due(socket, counters, addr);
            continue;
        }
        let (sent, bytes) = batch.send(socket, &replies, |_, e| {
            log::debug!("{addr}: reply: {e}");
        });
        Counters::add(&counters.datagrams_echoed, sent);
        Counters::add(&counters.bytes_echoed, bytes);
    }
}

/// An impaired socket's replies: each source's fate drawn from its plan
/// (dropped, sent twice, held back behind its next reply, delayed), and the
/// replies due later, in due order. Sent one at a time, from the socket's
/// own address (not the arrival address of a wildcard bind).
///
/// Bounded: at most [`MAX_QUEUED`] bytes wait (in the queue and held back
/// together); a reply beyond that is dropped and counted as dropped, as a
/// full router queue would, so a flood under `--delay` or from many sources
/// under `--reorder` cannot grow the server. A held reply goes after the
/// source's next one, or after [`MAX_HOLD`] if none comes.
struct Delayed<'a> {
    plans: &'a Mutex<SourcePlans>,
    /// Due time, then order of scheduling (a held reply goes after the one
    /// it was held behind).
    queue: BinaryHeap<Reverse<Due>>,
    scheduled: u64,
    /// A reply held back per source, and when it was.
    held: HashMap<SocketAddr, (Instant, Vec<u8>)>,
    /// Bytes in `queue` and `held`.
    queued: usize,
}

/// A reply due later: when, its order of scheduling, where to, its bytes.
type Due = (Instant, u64, SocketAddr, Vec<u8>);

/// The most reply bytes an impaired receive thread keeps waiting, each
/// reply counted with [`OVERHEAD`] more for its entry (so that a flood of
/// 1-byte datagrams is bounded too).
const MAX_QUEUED: usize = 16 << 20;

/// What a waiting reply costs besides its bytes: its entry in the queue or
/// the held map, and its allocation.
const OVERHEAD: usize = 128;

/// How long a reply is held back waiting for its source's next one.
const MAX_HOLD: Duration = Duration::from_secs(1);

impl<'a> Delayed<'a> {
    fn new(plans: &'a Mutex<SourcePlans>) -> Delayed<'a> {
        Delayed {
            plans,
            queue: BinaryHeap::new(),
            scheduled: 0,
            held: HashMap::new(),
            queued: 0,
        }
    }

    /// Room for a reply of `len` bytes, else it is dropped (counted).
    fn room(&self, len: usize, counters: &Counters) -> bool {
        if self.queued.saturating_add(len + OVERHEAD) > MAX_QUEUED {
            Counters::add(&counters.impaired_dropped, 1);
            return false;
        }
        true
    }

    /// Queues bytes already counted in `queued` (a held reply released).
    fn requeue(&mut self, at: Instant, to: SocketAddr, bytes: Vec<u8>) {
        self.scheduled += 1;
        self.queue.push(Reverse((at, self.scheduled, to, bytes)));
    }

    fn push(&mut self, at: Instant, to: SocketAddr, bytes: &[u8], counters: &Counters) {
        if self.room(bytes.len(), counters) {
            self.queued += bytes.len() + OVERHEAD;
            self.requeue(at, to, bytes.to_vec());
        }
    }

    /// Decides the fate of a batch's replies and queues them.
    fn schedule(&mut self, replies: &Replies, verdicts: &[Judged], counters: &Counters) {
        let now = Instant::now();
        let mut plans = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
        for i in 0..replies.len() {
            let (index, reply) = replies.get(i);
            let Some(Some((source, _, _))) = verdicts.get(index) else {
                continue;
            };
            let (fate, _) = plans.decide(*source);
            if fate.drop {
                Counters::add(&counters.impaired_dropped, 1);
                continue;
            }
            if fate.hold && !self.held.contains_key(source) {
                if self.room(reply.len(), counters) {
                    Counters::add(&counters.impaired_reordered, 1);
                    self.queued += reply.len() + OVERHEAD;
                    self.held.insert(*source, (now, reply.to_vec()));
                }
                continue;
            }
            let at = now + fate.delay;
            self.push(at, *source, reply, counters);
            if fate.duplicate {
                Counters::add(&counters.impaired_duplicated, 1);
                self.push(at, *source, reply, counters);
            }
            if let Some((_, held)) = self.held.remove(source) {
                self.requeue(at, *source, held);
            }
        }
    }

    /// Sends every reply that is due, releasing first the held ones whose
    /// source sent nothing more within [`MAX_HOLD`].
    fn send_due(&mut self, socket: &Socket, counters: &Counters, addr: &ListenAddr) {
        let now = Instant::now();
        if self
            .held
            .values()
            .any(|(since, _)| now.duration_since(*since) >= MAX_HOLD)
        {
            let expired: Vec<SocketAddr> = self
                .held
                .iter()
                .filter(|(_, (since, _))| now.duration_since(*since) >= MAX_HOLD)
                .map(|(source, _)| *source)
                .collect();
            for source in expired {
                if let Some((_, bytes)) = self.held.remove(&source) {
                    self.requeue(now, source, bytes);
                }
            }
        }
        while let Some(Reverse((at, ..))) = self.queue.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, to, bytes))) = self.queue.pop() else {
                break;
            };
            self.queued -= bytes.len() + OVERHEAD;
            match socket.send_to(&bytes, &to.into()) {
                Ok(n) => {
                    Counters::add(&counters.datagrams_echoed, 1);
                    Counters::add(&counters.bytes_echoed, n as u64);
                }
                Err(e) => log::debug!("{addr}: reply: {e}"),
            }
        }
    }

    /// How long the next receive may wait: until the next reply is due or
    /// the oldest held one is released (at least a millisecond: a zero
    /// timeout would block for ever).
    fn wait(&self) -> Duration {
        let now = Instant::now();
        let next_due = self.queue.peek().map(|Reverse((at, ..))| *at);
        let next_release = self.held.values().map(|(since, _)| *since + MAX_HOLD).min();
        match next_due.into_iter().chain(next_release).min() {
            Some(at) => at
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), POLL),
            None => POLL,
        }
    }
}

/// A datagram as a stream for [`echo`](crate::echo): reads give the request,
/// writes build the reply.
struct Exchange<'a> {
    request: &'a [u8],
    reply: &'a mut Vec<u8>,
}

impl Read for Exchange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.request.read(buf)
    }
}

impl Write for Exchange<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reply.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
