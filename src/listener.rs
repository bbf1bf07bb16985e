//! Listening sockets: binding them (through socket2, so every option is set
//! before `listen`), and the accept loop that admits each connection (the
//! connection limit, the per-source cap) and hands it to the engines.

use crate::address::{normalize, ListenAddr, Peer};
use crate::connection::Connection;
use crate::context::Context;
use crate::engine::{Engines, Refused};
use crate::shutdown::{Shutdown, POLL};
use crate::stats::{Counters, TurnedAway};
use crate::stream::is_timeout;
use crate::udp::DatagramSocket;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often a full server looks for a waiting client and an idle slot.
const RECLAIM_CHECK: Duration = Duration::from_millis(250);

/// A bound socket and how it is served: an accept loop for streams, a
/// receive loop for datagrams.
#[derive(Debug)]
pub(crate) enum Listener {
    Stream(StreamListener),
    Datagram(DatagramSocket),
}

impl Listener {
    pub(crate) fn addr(&self) -> &ListenAddr {
        match self {
            Listener::Stream(l) => &l.addr,
            Listener::Datagram(d) => &d.addr,
        }
    }

    pub(crate) fn register_waker(&self, shutdown: &Shutdown) {
        match self {
            Listener::Stream(l) => shutdown.on_request(l.waker()),
            Listener::Datagram(d) => shutdown.on_request(d.waker()),
        }
    }

    pub(crate) fn serve(self, ctx: &Arc<Context>, engines: &Engines) {
        match self {
            Listener::Stream(l) => l.accept_loop(ctx, engines),
            Listener::Datagram(d) => d.serve(ctx),
        }
    }
}

/// The options every TCP connection gets.
fn set_connection_options(socket: &Socket, ctx: &Context) {
    // Echo replies are small and latency-bound: never hold them back.
    let _ = socket.set_tcp_nodelay(true);
    if let Some(idle) = ctx.settings.keepalive {
        // A peer that vanished (power loss, a dropped route) is found
        // within idle + 5 intervals, and its slot freed.
        let _ = socket.set_tcp_keepalive(&tcp_keepalive(idle));
    }
}

/// TCP keepalive after `idle` without traffic: a probe every `idle / 6`
/// (1 to 10 s), 5 probes, so the default 60 s finds a dead peer within
/// about two minutes.
fn tcp_keepalive(idle: Duration) -> socket2::TcpKeepalive {
    let interval = (idle / 6).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval);
    #[cfg(not(windows))]
    let keepalive = keepalive.with_retries(5);
    keepalive
}

/// A bound, listening stream socket (TCP or Unix).
#[derive(Debug)]
pub(crate) struct StreamListener {
    pub(crate) socket: Socket,
    pub(crate) addr: ListenAddr,
    /// A descriptor held in reserve: when the process runs out, closing it
    /// lets the accept loop take one waiting client and close it, so the
    /// client learns at once instead of hanging (libuv's technique).
    spare: Option<std::fs::File>,
    /// For a Unix socket this server created: removes the file on drop.
    #[cfg(unix)]
    cleanup: Option<crate::unix::SocketFile>,
    /// Every connection accepted from it has its TCP options already (see
    /// `bind_tcp`).
    hands_on_options: bool,
}

/// Binds a TCP listener with a real backlog. `SO_REUSEADDR` lets a restarted
/// server bind while old connections sit in TIME_WAIT (not on Windows, where
/// it would let another process steal the port), and `::` accepts IPv4 too.
///
/// On Linux an accepted socket inherits `TCP_NODELAY` and the keepalive
/// settings from its listener, so they are set here, once, before `listen`
/// (a client that connects before the accept loop runs is cloned from the
/// listener then), instead of with five system calls per connection:
/// measured 6% of the server's CPU per connection at connection rate (14.4
/// against 13.5 µs). Elsewhere, on a listener this server did not bind
/// (a connection may already be queued), or if setting them fails, each
/// connection gets them (`set_connection_options`).
pub(crate) fn bind_tcp(
    addr: SocketAddr,
    backlog: i32,
    keepalive: Option<Duration>,
) -> io::Result<StreamListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    let hands_on = cfg!(any(target_os = "linux", target_os = "android"))
        && set_listener_options(&socket, keepalive).is_ok();
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    let mut listener = StreamListener::from_socket(socket)?;
    listener.hands_on_options = hands_on;
    Ok(listener)
}

/// What a listener hands on to the connections it accepts (Linux).
fn set_listener_options(socket: &Socket, keepalive: Option<Duration>) -> io::Result<()> {
    if let Some(idle) = keepalive {
        socket.set_tcp_keepalive(&tcp_keepalive(idle))?;
    }
    socket.set_tcp_nodelay(true)
}

impl StreamListener {
    /// Wraps a socket that is already listening, learning its address.
    pub(crate) fn from_socket(socket: Socket) -> io::Result<StreamListener> {
        let local = socket.local_addr()?;
        let addr = match local.as_socket() {
            Some(ip) => ListenAddr::Tcp(ip),
            None => ListenAddr::Unix(unix_path(&local)?),
        };
        // The accept loop waits for a client with `poll` and only then
        // takes a slot and accepts, so `accept` must never block: a client
        // that gave up in between would otherwise hold the slot. This also
        // makes an adopted listener's own `O_NONBLOCK` (systemd's
        // `NonBlocking=yes`) irrelevant. Elsewhere `accept` blocks, and the
        // timeout is its backstop.
        #[cfg(unix)]
        socket.set_nonblocking(true)?;
        #[cfg(not(unix))]
        socket.set_read_timeout(Some(POLL))?;
        // Urgent (out-of-band) bytes stay in the stream, in order, and are
        // echoed like the rest (RFC 862: all data received is sent back).
        // Set on the listener, it is inherited by every accepted socket.
        socket.set_out_of_band_inline(true)?;
        Ok(StreamListener {
            socket,
            addr,
            spare: spare_fd(),
            #[cfg(unix)]
            cleanup: None,
            hands_on_options: false,
        })
    }

    /// This TCP listener's clients speak TLS.
    #[cfg(feature = "tls")]
    pub(crate) fn into_tls(mut self) -> StreamListener {
        if let ListenAddr::Tcp(addr) = self.addr {
            self.addr = ListenAddr::Tls(addr);
        }
        self
    }

    /// A Unix socket at a path this server created, removed when the
    /// listener is dropped.
    #[cfg(unix)]
    pub(crate) fn bind_unix(
        path: &std::path::Path,
        backlog: i32,
        mode: Option<u32>,
    ) -> io::Result<StreamListener> {
        let (socket, file) = crate::unix::bind_unix(path, backlog, mode)?;
        let mut listener = StreamListener::from_socket(socket)?;
        listener.cleanup = Some(file);
        Ok(listener)
    }

    /// A wake-up for a thread blocked in `accept`: connect to the listener,
    /// so `accept` returns and the loop sees the shutdown flag.
    pub(crate) fn waker(&self) -> impl Fn() + Send + Sync + 'static {
        let target: Option<SockAddr> = match &self.addr {
            ListenAddr::Tcp(addr) | ListenAddr::Tls(addr) => {
                Some(crate::address::connectable(*addr).into())
            }
            ListenAddr::Unix(path) => SockAddr::unix(path).ok(),
            ListenAddr::Udp(_) => None,
        };
        move || {
            let Some(target) = &target else { return };
            if let Ok(socket) = Socket::new(target.domain(), Type::STREAM, None) {
                // Best effort: if it fails, `POLL` still ends the wait.
                let _ = socket.connect_timeout(target, Duration::from_secs(1));
            }
        }
    }

    /// Accepts connections until shutdown and hands each to `engines`.
    /// Errors never end the loop: the server keeps serving everyone else.
    pub(crate) fn accept_loop(mut self, ctx: &Arc<Context>, engines: &Engines) {
        let mut backoff = Backoff::default();
        let (reclaims, sheds) = (Episode::default(), Episode::default());
        loop {
            // No slot is taken until a client is there: a listener with no
            // client must not hold the slot a client of another listener
            // waits for.
            if !self.wait_for_client(ctx) {
                break;
            }
            let limit_reached = || Counters::add(&ctx.counters.limit_reached, 1);
            // While full, a waiting client may take the slot of the
            // connection idle longest.
            let (this, reclaims) = (&self, &reclaims);
            let reclaim = ctx.settings.reclaim_idle.map(|idle| {
                (RECLAIM_CHECK, move || {
                    if this.has_waiting_client() && ctx.table.reclaim_idlest(idle) {
                        Counters::add(&ctx.counters.reclaimed, 1);
                        // Once per episode, not once per connection.
                        if reclaims.begins() {
                            log::warn!(
                                "{}: every slot taken and clients waiting: closing connections \
                                 idle for {:.1} s or more to serve them",
                                this.addr,
                                idle.as_secs_f64()
                            );
                        }
                    }
                })
            });
            let Some(permit) = ctx.limit.acquire_or(&ctx.shutdown, limit_reached, reclaim) else {
                break;
            };
            let accepted = match ctx.faults.take(crate::fault::Point::Accept) {
                Some(injected) => Err(injected),
                None => self.socket.accept(),
            };
            let (socket, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    drop(permit);
                    if ctx.shutdown.is_requested() {
                        break;
                    }
                    if !self.accept_failed(&e, ctx, &mut backoff, &sheds) {
                        break;
                    }
                    continue;
                }
            };
            if ctx.shutdown.is_requested() {
                break; // most likely our own wake-up connection
            }
            // BSD-derived systems pass the listener's O_NONBLOCK on to the
            // accepted socket; the thread engine needs it blocking (the
            // event engine sets its own).
            #[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
            let _ = socket.set_nonblocking(false);
            backoff.reset();
            ctx.table.reap();
            ctx.counters.count_accepted();
            let peer = Peer::from_sockaddr(&addr);
            let mut source_slot = None;
            // A balancer's clients are capped once its PROXY protocol
            // header names them (`Connection::read_preface`), not here.
            let behind_balancer = ctx.settings.proxy.expects_header(&peer);
            if let Peer::Ip(ip) = peer {
                if let (Some(cap), false) = (&ctx.per_source, behind_balancer) {
                    match cap.admit(normalize(ip).ip()) {
                        Some(slot) => source_slot = Some(slot),
                        None => {
                            // Accepted and closed at once: the identity
                            // accepted = closed + active holds.
                            ctx.counters.count_closed(Some(TurnedAway::PerSourceCap));
                            log::debug!(
                                peer:% = peer, reason = "per_source_cap";
                                "{}: {peer} is at the per-source cap, closed", self.addr
                            );
                            reset(socket);
                            continue;
                        }
                    }
                }
                if !self.hands_on_options {
                    set_connection_options(&socket, ctx);
                }
            }
            #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
            let mut conn = Connection::admit(socket, peer.clone(), ctx, permit, source_slot);
            #[cfg(feature = "tls")]
            if matches!(self.addr, ListenAddr::Tls(_)) {
                if let Err(outcome) = conn.start_tls() {
                    log::warn!("{}: cannot start TLS for {peer}", self.addr);
                    conn.close(outcome);
                    continue;
                }
            }
            if let Err(Refused(e)) = engines.serve(conn) {
                log::warn!(
                    "{}: no thread for connection from {peer}, closed it: {e}",
                    self.addr
                );
                if ctx.shutdown.sleep(backoff.next()) {
                    break;
                }
            }
        }
        log::debug!("{}: no longer accepting", self.addr);
    }

    /// Waits until a client is in the backlog or shutdown is requested
    /// (the shutdown waker connects, which makes the listener readable;
    /// `POLL` is the backstop). Returns `false` on shutdown.
    fn wait_for_client(&self, ctx: &Context) -> bool {
        loop {
            if ctx.shutdown.is_requested() {
                return false;
            }
            if self.client_waits_within(POLL) {
                return !ctx.shutdown.is_requested();
            }
        }
    }

    /// Whether a client waits in the backlog: the listening socket is
    /// readable. (Where that cannot be asked, assume one does.)
    fn has_waiting_client(&self) -> bool {
        self.client_waits_within(Duration::ZERO)
    }

    /// Whether the listening socket becomes readable within `wait`.
    fn client_waits_within(&self, wait: Duration) -> bool {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            crate::sys::poll::readable_within(self.socket.as_fd(), wait)
        }
        #[cfg(not(unix))]
        {
            let _ = wait;
            true
        }
    }

    /// Deals with a failed `accept`. Returns `false` if shutdown was
    /// requested during the back-off.
    fn accept_failed(
        &mut self,
        e: &io::Error,
        ctx: &Context,
        backoff: &mut Backoff,
        sheds: &Episode,
    ) -> bool {
        if is_timeout(e) {
            // Nothing to accept: another process sharing the listener took
            // the client that made it readable (or, where `accept` blocks,
            // the POLL backstop).
            return true;
        }
        if is_transient(e) {
            // The client gave up between SYN and accept, or a signal arrived.
            log::debug!("{}: accept: {e}", self.addr);
            return true;
        }
        if is_fd_exhaustion(e) {
            if self.shed_one() {
                // Accepted (on the spare descriptor) and closed at once.
                ctx.counters.count_accepted();
                ctx.counters
                    .count_closed(Some(TurnedAway::NoFileDescriptor));
                // Once per episode: a flood of clients is not a flood of logs.
                if sheds.begins() {
                    log::warn!(
                        "{}: out of file descriptors, resetting new clients",
                        self.addr
                    );
                }
                // Progress was made: retry soon, there may be more waiting.
                backoff.reset();
                return !ctx.shutdown.sleep(Backoff::FIRST);
            }
        } else {
            Counters::add(&ctx.counters.accept_errors, 1);
        }
        let delay = backoff.next();
        // Logged once per run of failures, not once per retry.
        if delay == Backoff::FIRST {
            log::warn!("{}: accept failed, backing off: {e}", self.addr);
        }
        !ctx.shutdown.sleep(delay)
    }
}

/// Out of descriptors: this process's limit (EMFILE) or the system's (ENFILE).
pub(crate) fn is_fd_exhaustion(e: &io::Error) -> bool {
    #[cfg(unix)]
    if let Some(code) = e.raw_os_error() {
        return code == libc::EMFILE || code == libc::ENFILE;
    }
    let _ = e;
    false
}

impl StreamListener {
    /// Out of descriptors: frees the spare, accepts one waiting client and
    /// resets it, then takes the spare back. Returns whether a client was
    /// shed.
    fn shed_one(&mut self) -> bool {
        if self.spare.take().is_none() {
            self.spare = spare_fd();
            return false;
        }
        let shed = match self.socket.accept() {
            Ok((socket, _)) => {
                reset(socket);
                true
            }
            Err(_) => false,
        };
        self.spare = spare_fd();
        shed
    }
}

/// Closes with a reset (RST) rather than a FIN: the client's next read fails
/// at once with "connection reset", which cannot be mistaken for an echo.
fn reset(socket: Socket) {
    let _ = socket.set_linger(Some(Duration::ZERO));
}

#[cfg(unix)]
fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

#[cfg(not(unix))]
fn spare_fd() -> Option<std::fs::File> {
    None
}

/// Errors after which `accept` can be retried at once: they concern one
/// connection that did not make it, not the listener. (Linux's accept(2)
/// lists the network errors as "treat like EAGAIN".)
pub(crate) fn is_transient(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        ErrorKind::Interrupted | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return true;
    }
    #[cfg(unix)]
    if let Some(code) = e.raw_os_error() {
        return [
            libc::EPROTO,
            libc::ENOPROTOOPT,
            libc::EHOSTDOWN,
            libc::EHOSTUNREACH,
            libc::ENETDOWN,
            libc::ENETUNREACH,
            libc::EOPNOTSUPP,
            libc::EPERM,
        ]
        .contains(&code);
    }
    false
}

/// Exponential back-off after resource errors (out of file descriptors,
/// memory, threads): 5 ms doubling up to 1 s, so the server neither spins
/// nor stays away long once resources return.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    pub(crate) const FIRST: Duration = Duration::from_millis(5);
    pub(crate) const MAX: Duration = Duration::from_secs(1);

    pub(crate) fn next(&mut self) -> Duration {
        let next = match self.last {
            None => Self::FIRST,
            Some(last) => (last * 2).min(Self::MAX),
        };
        self.last = Some(next);
        next
    }

    pub(crate) fn reset(&mut self) {
        self.last = None;
    }
}

/// Events less than a minute apart belong to one episode, logged once.
#[derive(Debug, Default)]
struct Episode(std::cell::Cell<Option<std::time::Instant>>);

impl Episode {
    const GAP: Duration = Duration::from_secs(60);

    /// Records an event now; returns whether it begins a new episode.
    fn begins(&self) -> bool {
        self.begins_at(std::time::Instant::now())
    }

    fn begins_at(&self, now: std::time::Instant) -> bool {
        let new = self
            .0
            .get()
            .is_none_or(|last| now.duration_since(last) > Self::GAP);
        self.0.set(Some(now));
        new
    }
}

#[cfg(unix)]
fn unix_path(addr: &SockAddr) -> io::Result<PathBuf> {
    addr.as_pathname().map(PathBuf::from).ok_or_else(|| {
        io::Error::new(
            ErrorKind::InvalidInput,
            "listener has no IP address or Unix socket path",
        )
    })
}

#[cfg(not(unix))]
fn unix_path(_: &SockAddr) -> io::Result<PathBuf> {
    Err(io::Error::new(
        ErrorKind::InvalidInput,
        "listener has no IP address",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP connection gets `TCP_NODELAY` and the keepalive setting:
    /// from the listener this server bound, set before `listen` (Linux), so
    /// that a client connecting before the accept loop runs has them too
    /// (set later, the first clients went without: a test that waits for
    /// keepalive to find a vanished client hung); otherwise, and from a
    /// listener it adopted, set on each connection. A keepalive turned off
    /// stays off.
    #[test]
    fn an_accepted_connection_has_nodelay_and_the_keepalive_setting() {
        let accept = |listener: &StreamListener| {
            let ListenAddr::Tcp(addr) = listener.addr else {
                panic!("a TCP listener");
            };
            let client = std::net::TcpStream::connect(addr).unwrap();
            listener.socket.set_nonblocking(false).unwrap();
            (listener.socket.accept().unwrap().0, client)
        };
        let check = |socket: &Socket, idle: Option<u64>| {
            assert!(socket.tcp_nodelay().unwrap());
            assert_eq!(socket.keepalive().unwrap(), idle.is_some());
            #[cfg(target_os = "linux")]
            if let Some(idle) = idle {
                assert_eq!(socket.tcp_keepalive_time().unwrap().as_secs(), idle);
            }
        };
        for idle in [Some(42), None] {
            let settings = crate::server::Server::builder()
                .keepalive(idle.map(Duration::from_secs))
                .settings()
                .clone();
            let ctx = Context::new(settings, 4);
            let keepalive = idle.map(Duration::from_secs);
            // Bound here: handed on by the listener where the OS does.
            let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), 8, keepalive).unwrap();
            let linux = cfg!(any(target_os = "linux", target_os = "android"));
            assert_eq!(listener.hands_on_options, linux);
            let (socket, _client) = accept(&listener);
            if !listener.hands_on_options {
                set_connection_options(&socket, &ctx);
            }
            check(&socket, idle);
            // Adopted: set on the connection itself.
            let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let listener = StreamListener::from_socket(Socket::from(bound)).unwrap();
            assert!(!listener.hands_on_options);
            let (socket, _client) = accept(&listener);
            set_connection_options(&socket, &ctx);
            check(&socket, idle);
        }
    }

    /// A Unix socket listener hands on no TCP options.
    #[cfg(unix)]
    #[test]
    fn a_unix_listener_hands_on_no_tcp_options() {
        let dir = tempfile::tempdir().unwrap();
        let listener = StreamListener::bind_unix(&dir.path().join("s"), 8, None).unwrap();
        assert!(!listener.hands_on_options);
    }

    /// What the kernel holds after `keepalive`: probes after `idle`, every
    /// `idle / 6` kept within 1 to 10 s, 5 of them.
    #[cfg(target_os = "linux")]
    #[test]
    fn keepalive_probes_every_sixth_of_the_idle_time_within_1_to_10_s() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        for (idle, interval) in [(60, 10), (30, 5), (3, 1), (600, 10)] {
            socket
                .set_tcp_keepalive(&tcp_keepalive(Duration::from_secs(idle)))
                .unwrap();
            assert_eq!(socket.tcp_keepalive_time().unwrap().as_secs(), idle);
            assert_eq!(
                socket.tcp_keepalive_interval().unwrap().as_secs(),
                interval,
                "idle {idle} s"
            );
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), 5);
        }
    }

    /// An episode ends after a minute without events: gaps up to a
    /// minute continue it, a longer one begins the next.
    #[test]
    fn episodes_are_runs_of_events_at_most_a_minute_apart() {
        let e = Episode::default();
        let t0 = std::time::Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(e.begins_at(t0));
        assert!(!e.begins_at(at(1)));
        assert!(!e.begins_at(at(61)), "exactly a minute apart");
        assert!(e.begins_at(at(122)));
        assert!(!e.begins_at(at(130)));
    }

    #[test]
    fn backoff_doubles_up_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| b.next()).collect();
        assert_eq!(delays[0], Duration::from_millis(5));
        assert_eq!(delays[1], Duration::from_millis(10));
        assert_eq!(delays[7], Duration::from_millis(640));
        assert_eq!(delays[8], Duration::from_secs(1));
        assert_eq!(delays[9], Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(5));
    }
}
