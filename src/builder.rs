//! Configuring a server: which sockets to listen on and how to serve them.

use crate::address::{ListenAddr, Network};
use crate::impairment::Impairments;
use crate::listener::Listener;
use crate::listener::{self, StreamListener};
use crate::rate_limit::{RateLimit, SourcePrefix};
use crate::server::Server;
use crate::settings::{Engine, ProxySettings, Settings, UdpSettings};
use crate::thread_budget::ThreadBudget;
use crate::udp::{self, DatagramSocket};
use socket2::Socket;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
#[cfg(unix)]
use std::os::fd::OwnedFd;
#[cfg(unix)]
use std::path::PathBuf;
use std::time::Duration;

/// Connections served at once unless configured otherwise: what a default
/// file descriptor limit allows rather than what memory does. Raise it (and
/// the descriptor limit) to hold more; past the first
/// [`DEFAULT_THREAD_CONNECTIONS`], connections cost an event loop entry
/// and their socket buffers, not a thread.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Under [`Engine::Auto`], connections served on threads before new ones go
/// to the loops (io_uring, or event loops where io_uring is refused).
///
/// One: the first connection of an idle server gets the lowest latency a
/// blocking thread gives, and every further thread among busy connections
/// costs throughput. Measured (echo-bench pingpong, 100 connections × 64 B,
/// 3 alternating rounds, round trips/s): events 114k/120k/119k, auto with 1
/// thread connection 104k/117k/117k, with 2 101k/112k/102k, with 8
/// 88k/95k/90k; and with one connection auto matches threads (35k/34k/43k
/// threads, 36k/35k/38k auto with 1).
pub const DEFAULT_THREAD_CONNECTIONS: usize = 1;

/// Listen backlog: how many clients may wait for `accept` (also while the
/// connection limit is reached). The kernel caps it at `somaxconn`.
pub const DEFAULT_BACKLOG: i32 = 1024;

/// How long shutdown lets connections finish echoing what they have already
/// read before it closes them outright.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// When every slot is taken and a client waits, a connection idle at least
/// this long (nothing read, nothing left to write) is closed to serve it.
pub const DEFAULT_RECLAIM_IDLE: Duration = Duration::from_secs(10);

/// TCP keepalive idle time: with 5 probes 10 s apart, a peer that vanished
/// without a FIN or reset is found within about two minutes.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

/// How long a client may leave its echo unread (with the server's send
/// buffer full) before the connection is closed, unless configured.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection from a PROXY protocol network may take to send
/// its whole header: a balancer sends it at once, so only a silent or
/// dripping client is ever closed by this.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a TLS handshake may take, from accept, by default.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a [`Server`]: add listeners, set limits, then [`build`](Self::build)
/// binds every socket.
///
/// # Examples
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use std::time::Duration;
/// let server = echo_server::Server::builder()
///     .tcp(([127, 0, 0, 1], 0))
///     .max_connections(100)
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .build()?;
/// assert!(server.local_addr().is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ServerBuilder {
    bindings: Vec<Binding>,
    max_connections: usize,
    backlog: i32,
    /// Permissions of the Unix sockets this builder binds; the umask's when
    /// `None`.
    unix_mode: Option<u32>,
    /// The TLS certificate files, read by `build` when a TLS listener is
    /// configured.
    #[cfg(feature = "tls")]
    tls_files: crate::tls_config::TlsFiles,
    settings: Settings,
}

/// A listener the builder will bind (an address or a path) or adopt (a
/// socket already bound, by the caller or by systemd).
#[derive(Debug)]
enum Binding {
    Tcp(SocketAddr),
    #[cfg(feature = "tls")]
    Tls(SocketAddr),
    TcpListener(TcpListener),
    Udp(SocketAddr),
    UdpSocket(UdpSocket),
    #[cfg(unix)]
    Unix(PathBuf),
    #[cfg(unix)]
    Inherited(OwnedFd),
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            bindings: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            backlog: DEFAULT_BACKLOG,
            unix_mode: None,
            #[cfg(feature = "tls")]
            tls_files: crate::tls_config::TlsFiles::default(),
            settings: Settings {
                idle_timeout: None,
                write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
                max_per_source: None,
                log_data: false,
                splice: false,
                shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
                reclaim_idle: Some(DEFAULT_RECLAIM_IDLE),
                keepalive: Some(DEFAULT_KEEPALIVE),
                engine: Engine::default(),
                event_loops: 0,
                thread_connections: DEFAULT_THREAD_CONNECTIONS,
                max_threads: None,
                reserved_threads: 1,
                reserved_descriptors: 0,
                udp: UdpSettings {
                    filter_sources: true,
                    rate_limit: Some(RateLimit::default()),
                    total_rate_limit: Some(RateLimit::total_default()),
                    prefix: SourcePrefix::default(),
                    max_datagram: udp::MAX_DATAGRAM,
                    threads: 0,
                    buffer: udp::DEFAULT_UDP_BUFFER,
                },
                proxy: ProxySettings {
                    networks: Vec::new(),
                    unix: false,
                    timeout: DEFAULT_PROXY_TIMEOUT,
                },
                tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
                impair: None,
                #[cfg(feature = "tls")]
                tls: None,
            },
        }
    }
}

impl Server {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }
}

impl ServerBuilder {
    /// Listens for TCP on `addr`. Port 0 lets the OS pick one (see
    /// [`Server::local_addr`]). An unspecified IPv6 address (`::`) accepts
    /// IPv4 clients too.
    pub fn tcp(mut self, addr: impl Into<SocketAddr>) -> Self {
        self.bindings.push(Binding::Tcp(addr.into()));
        self
    }

    /// Serves connections from an already listening TCP socket.
    pub fn tcp_listener(mut self, listener: TcpListener) -> Self {
        self.bindings.push(Binding::TcpListener(listener));
        self
    }

    /// Answers UDP datagrams on `addr`. With port 0 it takes the port of a
    /// TCP listener added before on the same IP address, if there is one, and
    /// otherwise lets the OS pick.
    pub fn udp(mut self, addr: impl Into<SocketAddr>) -> Self {
        self.bindings.push(Binding::Udp(addr.into()));
        self
    }

    /// Answers UDP datagrams on an already bound socket.
    pub fn udp_socket(mut self, socket: UdpSocket) -> Self {
        self.bindings.push(Binding::UdpSocket(socket));
        self
    }

    /// Listens on a Unix stream socket at `path`. A stale socket file there
    /// is replaced; a live one, or any other file, is an error. The file is
    /// removed when the server has shut down. While the server runs it holds
    /// a lock on `PATH.lock`, so that two servers starting at once cannot
    /// take each other's socket for stale.
    #[cfg(unix)]
    pub fn unix(mut self, path: impl Into<PathBuf>) -> Self {
        self.bindings.push(Binding::Unix(path.into()));
        self
    }

    /// Permissions of every Unix socket this builder binds, such as `0o660`
    /// (who may connect); set before the socket listens. Default: what the
    /// process's umask leaves.
    #[cfg(unix)]
    pub fn unix_mode(mut self, mode: u32) -> Self {
        self.unix_mode = Some(mode);
        self
    }

    /// Serves a socket the process was given already bound: a listening TCP
    /// or Unix stream socket, or a UDP socket (see
    /// [`systemd_sockets`](crate::activation::systemd_sockets)).
    #[cfg(unix)]
    pub fn inherited_socket(mut self, fd: OwnedFd) -> Self {
        self.bindings.push(Binding::Inherited(fd));
        self
    }

    /// Whether UDP datagrams from privileged ports (below 1024) and from
    /// broadcast, multicast or unspecified addresses go unanswered. On by
    /// default: it stops echo loops with other UDP services and reflection
    /// through forged sources. Turn it off only in a lab.
    pub fn udp_source_filter(mut self, on: bool) -> Self {
        self.settings.udp.filter_sources = on;
        self
    }

    /// UDP rate limit of each source network (see
    /// [`udp_source_prefix`](Self::udp_source_prefix)), or `None` for none.
    /// Default [`RateLimit::default`]: 1 MiB/s with an 8 MiB burst per
    /// network. The server-wide limit is set on its own.
    pub fn udp_rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.settings.udp.rate_limit = limit;
        self
    }

    /// UDP reply budget of the whole server, every source together, or
    /// `None` for none. Default [`RateLimit::total_default`]: 16 MiB/s with
    /// a 64 MiB burst.
    pub fn udp_total_rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.settings.udp.total_rate_limit = limit;
        self
    }

    /// The source networks that share one UDP budget. Default
    /// [`SourcePrefix::default`]: IPv4 /24 and IPv6 /56; `{ v4: 32, v6: 128 }`
    /// gives each address its own.
    pub fn udp_source_prefix(mut self, prefix: SourcePrefix) -> Self {
        self.settings.udp.prefix = prefix;
        self
    }

    /// Largest UDP datagram answered, in bytes; larger ones are dropped whole
    /// and counted. Default and most: [`udp::MAX_DATAGRAM`].
    pub fn udp_max_datagram(mut self, bytes: usize) -> Self {
        self.settings.udp.max_datagram = bytes;
        self
    }

    /// Receive threads per UDP address, each on its own socket
    /// (`SO_REUSEPORT`, Linux; one socket elsewhere). 0 (the default) runs
    /// one per available core.
    pub fn udp_threads(mut self, threads: usize) -> Self {
        self.settings.udp.threads = threads;
        self
    }

    /// Receive and send buffer asked for on each UDP socket, so bursts are
    /// queued rather than dropped. Default [`udp::DEFAULT_UDP_BUFFER`]; the
    /// kernel caps it at `net.core.rmem_max`/`wmem_max` unless the process
    /// may pass them (`CAP_NET_ADMIN`), and a warning says so.
    pub fn udp_buffer(mut self, bytes: usize) -> Self {
        self.settings.udp.buffer = bytes;
        self
    }

    /// At most `max` connections are served at once; clients beyond that
    /// wait in the listen backlog until a slot frees. Default
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Closes a connection whose client has sent nothing for `timeout`.
    /// `None` (the default) never does.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.idle_timeout = timeout;
        self
    }

    /// Closes a connection whose client has not read its echo for `timeout`
    /// while the server had more to send: a stalled reader must not hold a
    /// thread forever. `None` never does. Default [`DEFAULT_WRITE_TIMEOUT`].
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.write_timeout = timeout;
        self
    }

    /// At most `max` connections from one IP address at a time (IPv4-mapped
    /// IPv6 addresses count as IPv4); more are reset at once. `None` (the
    /// default) sets no cap beyond [`max_connections`](Self::max_connections).
    pub fn max_per_source(mut self, max: Option<usize>) -> Self {
        self.settings.max_per_source = max;
        self
    }

    /// Connections from these networks (load balancers) must begin with a
    /// PROXY protocol header, version 1 or 2: it is consumed, never echoed,
    /// and the client address it carries stands for the connection's peer
    /// everywhere (the per-source cap, logs). A header that is malformed,
    /// too long or late closes the connection without an echo. Connections
    /// from elsewhere are served as they are. None by default.
    pub fn proxy_protocol(mut self, networks: impl IntoIterator<Item = Network>) -> Self {
        self.settings.proxy.networks = networks.into_iter().collect();
        self
    }

    /// Whether clients of the Unix stream listeners must begin with a PROXY
    /// protocol header too (a balancer on the same host). Off by default.
    pub fn proxy_protocol_unix(mut self, on: bool) -> Self {
        self.settings.proxy.unix = on;
        self
    }

    /// Impairs the echo (for testing clients): pieces, delays, a rate, a
    /// reset, close or stall; for UDP, drops, duplicates, reordering. Off by
    /// default, and then free. Without a seed, `build` draws one and logs
    /// it ([`Server::impair_seed`](crate::Server::impair_seed) tells it).
    pub fn impair(mut self, impairments: Impairments) -> Self {
        self.settings.impair = impairments
            .is_on()
            .then(|| std::sync::Arc::new(impairments));
        self
    }

    /// Listens for TLS over TCP on `addr` (feature `tls`): each client's
    /// handshake comes first (within
    /// [`tls_handshake_timeout`](Self::tls_handshake_timeout)), then the
    /// plaintext it sends is echoed, encrypted; its `close_notify` is its
    /// half-close. Needs [`tls_cert`](Self::tls_cert) and
    /// [`tls_key`](Self::tls_key). Port 0 lets the OS pick one.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, addr: impl Into<SocketAddr>) -> Self {
        self.bindings.push(Binding::Tls(addr.into()));
        self
    }

    /// The TLS certificate chain, a PEM file, the server's own certificate
    /// first. Read by [`build`](Self::build), and again on
    /// [`ServerHandle::reload_tls`](crate::ServerHandle::reload_tls).
    #[cfg(feature = "tls")]
    pub fn tls_cert(mut self, file: impl Into<PathBuf>) -> Self {
        self.tls_files.cert = Some(file.into());
        self
    }

    /// The TLS private key, a PEM file (PKCS#8, PKCS#1 or SEC1).
    #[cfg(feature = "tls")]
    pub fn tls_key(mut self, file: impl Into<PathBuf>) -> Self {
        self.tls_files.key = Some(file.into());
        self
    }

    /// Mutual TLS: every TLS client must present a certificate signed by a
    /// CA of this PEM file, or its handshake fails. `None` (the default):
    /// no client certificate is asked for.
    #[cfg(feature = "tls")]
    pub fn tls_client_ca(mut self, file: Option<PathBuf>) -> Self {
        self.tls_files.client_ca = file;
        self
    }

    /// How long a TLS client has, from accept, to finish its handshake; a
    /// silent or slow one is then closed (and counted). Default
    /// [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`].
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.settings.tls_handshake_timeout = timeout;
        self
    }

    /// How long a PROXY protocol header may take to arrive in full.
    /// Default [`DEFAULT_PROXY_TIMEOUT`].
    pub fn proxy_protocol_timeout(mut self, timeout: Duration) -> Self {
        self.settings.proxy.timeout = timeout;
        self
    }

    /// Logs every received chunk, escaped to printable ASCII, at info level
    /// through the `log` crate. Off by default.
    pub fn log_data(mut self, on: bool) -> Self {
        self.settings.log_data = on;
        self
    }

    /// Whether a thread-engine connection that sends in bulk is echoed
    /// with `splice(2)` (Linux; socket to pipe to socket, never through user
    /// space) while at most 8 connections are open. Off by default: it
    /// measured slower than the read/write loop on loopback (README,
    /// Performance, has the figures). Never used with
    /// [`log_data`](Self::log_data), which needs the bytes.
    pub fn splice(mut self, on: bool) -> Self {
        self.settings.splice = on;
        self
    }

    /// When every slot is taken and a client waits in the backlog, close
    /// the connection idle longest if it has been idle (nothing read and
    /// nothing left to write, so no byte is lost) for at least `idle`, and
    /// serve the waiting client. Busy connections are never reclaimed.
    /// `None` never reclaims. Default [`DEFAULT_RECLAIM_IDLE`].
    pub fn reclaim_idle(mut self, idle: Option<Duration>) -> Self {
        self.settings.reclaim_idle = idle;
        self
    }

    /// TCP keepalive on every accepted TCP connection: after `idle` without
    /// traffic, probes every `idle / 6` (1 to 10 s), 5 of them; a peer that
    /// answers none is gone, and its connection is closed and counted.
    /// `None` turns keepalive off. Default [`DEFAULT_KEEPALIVE`].
    pub fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.settings.keepalive = idle;
        self
    }

    /// How long shutdown waits for connections to finish echoing before it
    /// closes them. Default [`DEFAULT_SHUTDOWN_GRACE`].
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// How connections are served: a thread each, event loops, io_uring
    /// loops, or threads first and loops for the rest (the default). See
    /// [`Engine`].
    /// [`Engine::Events`] needs a Unix system; elsewhere `Auto` serves
    /// every connection on a thread. [`Engine::Uring`] needs Linux, the
    /// `uring` feature and a kernel that lets this process use io_uring:
    /// [`build`](Self::build) says why not.
    pub fn engine(mut self, engine: Engine) -> Self {
        self.settings.engine = engine;
        self
    }

    /// Number of event loops; 0 (the default) runs one per available core.
    pub fn event_loops(mut self, loops: usize) -> Self {
        self.settings.event_loops = loops;
        self
    }

    /// Under [`Engine::Auto`]: how many connections are served on threads
    /// before new ones go to the loops. Default
    /// [`DEFAULT_THREAD_CONNECTIONS`]; 0 puts every connection on a loop.
    pub fn thread_connections(mut self, n: usize) -> Self {
        self.settings.thread_connections = n;
        self
    }

    /// At most `max` connection threads, whatever the engine. The server
    /// never starts more threads than the OS can give (it works that out
    /// from `vm.max_map_count`, `kernel.threads-max`, `kernel.pid_max` and
    /// `RLIMIT_NPROC` at start-up); this lowers that further. Under
    /// [`Engine::Threads`] it also caps the connection limit.
    pub fn max_threads(mut self, max: Option<usize>) -> Self {
        self.settings.max_threads = max;
        self
    }

    /// Threads the program runs beside the server (signal handling,
    /// reporting), which the thread budget leaves room for, so that the
    /// server's own threads never take the last ones. Default 1.
    pub fn reserve_threads(mut self, threads: usize) -> Self {
        self.settings.reserved_threads = threads;
        self
    }

    /// Descriptors the program opens beside the server (such as the
    /// metrics endpoint's connections), which the connection limit leaves
    /// room for. Default 0.
    pub fn reserve_descriptors(mut self, descriptors: usize) -> Self {
        self.settings.reserved_descriptors = descriptors;
        self
    }

    /// Listen backlog for listeners this builder binds. Default
    /// [`DEFAULT_BACKLOG`].
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Binds every listener. Errors name the address that failed, e.g.
    /// `cannot listen on tcp 127.0.0.1:7: Address already in use`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a configuration that cannot serve (no listener, a
    /// limit of 0 connections, a zero idle timeout), or the OS error from
    /// binding, with the address added.
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    pub fn build(mut self) -> io::Result<Server> {
        if self.bindings.is_empty() {
            return Err(invalid("no listener configured"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max connections must be at least 1"));
        }
        if self.settings.idle_timeout == Some(Duration::ZERO) {
            return Err(invalid("idle timeout must be more than zero"));
        }
        if self
            .settings
            .keepalive
            .is_some_and(|k| k < Duration::from_secs(1))
        {
            return Err(invalid("keepalive idle time must be at least 1 second"));
        }
        if self.settings.write_timeout == Some(Duration::ZERO) {
            return Err(invalid("write timeout must be more than zero"));
        }
        if self.settings.max_per_source == Some(0) {
            return Err(invalid("max connections per source must be at least 1"));
        }
        if !(1..=udp::MAX_DATAGRAM).contains(&self.settings.udp.max_datagram) {
            return Err(invalid("the largest UDP datagram must be 1 to 65527 bytes"));
        }
        let udp = &self.settings.udp;
        if [udp.rate_limit, udp.total_rate_limit]
            .iter()
            .any(|l| matches!(l, Some(l) if l.rate == 0 || l.burst == 0))
        {
            return Err(invalid(
                "a UDP rate limit needs a rate and a burst above zero",
            ));
        }
        if !udp.prefix.is_valid() {
            return Err(invalid(
                "a UDP source prefix is 0 to 32 bits (IPv4) and 0 to 128 (IPv6)",
            ));
        }
        #[cfg(not(unix))]
        if self.settings.engine == Engine::Events {
            return Err(invalid("the events engine needs a Unix system"));
        }
        if self.settings.engine == Engine::Uring {
            uring_available()?;
        }
        #[cfg(feature = "tls")]
        if self.bindings.iter().any(|b| matches!(b, Binding::Tls(_))) {
            if self.settings.tls_handshake_timeout.is_zero() {
                return Err(invalid("the TLS handshake timeout must be more than zero"));
            }
            // Read before anything is bound: a bad file leaves nothing bound.
            self.settings.tls = Some(std::sync::Arc::new(crate::tls_config::TlsConfig::load(
                self.tls_files.clone(),
            )?));
        }
        if let Some(imp) = self.settings.impair.take() {
            let imp = Impairments::clone(&imp).with_seed();
            log::info!(
                "impairments on (seed {}){}",
                imp.seed_value().unwrap_or(0),
                if imp.ports.is_empty() {
                    String::new()
                } else {
                    format!(", on ports {:?}", imp.ports)
                }
            );
            self.settings.impair = Some(std::sync::Arc::new(imp));
        }
        let (max_connections, thread_seats) = self.thread_plan();
        let mut listeners: Vec<Listener> = Vec::with_capacity(self.bindings.len());
        let mut udp_settings = self.settings.udp.clone();
        udp_settings.threads = crate::settings::per_core(udp_settings.threads);
        for mut binding in self.bindings {
            // UDP on port 0 shares the port of a TCP listener on the same
            // address, so one number reaches both (as `--udp` promises).
            if let Binding::Udp(addr) = &mut binding {
                if addr.port() == 0 {
                    let tcp_port = listeners.iter().find_map(|l| match l.addr() {
                        ListenAddr::Tcp(tcp) if tcp.ip() == addr.ip() => Some(tcp.port()),
                        _ => None,
                    });
                    addr.set_port(tcp_port.unwrap_or(0));
                }
            }
            listeners.push(bind(
                binding,
                self.backlog,
                self.unix_mode,
                self.settings.keepalive,
                &udp_settings,
            )?);
        }
        if listeners.iter().any(|l| matches!(l, Listener::Datagram(_))) {
            warn_of_small_bursts(&self.settings.udp);
        }
        let max_connections = descriptor_plan(max_connections, &self.settings);
        let short = listeners.iter().find_map(|l| match l {
            Listener::Datagram(d) => d.short_buffer,
            Listener::Stream(_) => None,
        });
        if let Some(granted) = short {
            log::warn!(
                "UDP sockets got a {} KiB receive buffer, not the {} KiB asked for: bursts \
                 beyond it are dropped (and counted); raise net.core.rmem_max and \
                 net.core.wmem_max (sysctl) to allow more",
                granted / 1024,
                self.settings.udp.buffer / 1024
            );
        }
        Ok(Server::new(
            listeners,
            max_connections,
            thread_seats,
            self.settings,
        ))
    }

    /// The connection limit and how many connections may have a thread,
    /// within what the OS can give. Under `Threads`, a connection limit
    /// above that is lowered, with a warning: past it the server would
    /// abort for want of a thread, not just refuse.
    fn thread_plan(&self) -> (usize, usize) {
        // The server's own threads: one per listener (UDP: one per receive
        // thread), the event loops, and what the program keeps for itself.
        let loops = match self.settings.engine {
            Engine::Threads => 0,
            _ => crate::settings::per_core(self.settings.event_loops),
        };
        let udp_threads = crate::settings::per_core(self.settings.udp.threads);
        let listeners: usize = self
            .bindings
            .iter()
            .map(|s| match s {
                Binding::Udp(_) => udp_threads,
                _ => 1,
            })
            .sum();
        let budget =
            ThreadBudget::of_this_process(listeners + loops + self.settings.reserved_threads);
        let threads = budget
            .threads
            .min(self.settings.max_threads.unwrap_or(usize::MAX));
        // Without event loops (not Unix), `auto` serves everything on threads.
        let only_threads = self.settings.engine == Engine::Threads || !cfg!(unix);
        match self.settings.engine {
            _ if only_threads => (self.clamped(threads, budget), self.max_connections),
            Engine::Events | Engine::Uring => (self.max_connections, 0),
            _ => (
                self.max_connections,
                self.settings.thread_connections.min(threads),
            ),
        }
    }

    fn clamped(&self, threads: usize, budget: ThreadBudget) -> usize {
        if self.max_connections <= threads {
            return self.max_connections;
        }
        let why = match (self.settings.max_threads, budget.bound_by) {
            (Some(max), _) if max <= budget.threads => {
                format!("at most {max} connection threads were asked for")
            }
            (_, Some(bound)) => format!("this system allows about {threads} threads: {bound}"),
            (_, None) => format!("at most {threads} connection threads are possible"),
        };
        let serving = threads.max(1);
        log::warn!(
            "serving at most {serving} connections at once, not {}: {why}; clients beyond \
             that wait (--engine auto or events is not limited by threads)",
            self.max_connections
        );
        serving
    }
}

/// Whether `--engine uring` can run here: io_uring is tried at start-up, so
/// a refusal fails the server at once, with the reason, rather than every
/// connection later.
fn uring_available() -> io::Result<()> {
    #[cfg(all(target_os = "linux", feature = "uring"))]
    {
        crate::sys::uring::probe().map_err(|e| {
            let why = crate::sys::uring::refusal(&e);
            io::Error::new(
                e.kind(),
                format!("the uring engine cannot run: {why} ({e}); use --engine events"),
            )
        })
    }
    #[cfg(not(all(target_os = "linux", feature = "uring")))]
    Err(invalid(
        "the uring engine needs Linux and the `uring` feature of echo-server",
    ))
}

/// The connection limit within the descriptors left once the listeners are
/// bound (each connection takes one), lowered with a warning when it is
/// above: past it, new clients would be reset for want of a descriptor, and
/// the server's own needs (event loops, the metrics endpoint) would fail.
fn descriptor_plan(max_connections: usize, settings: &Settings) -> usize {
    let reserved = descriptors_reserved(settings);
    let Some(budget) = crate::descriptor_budget::DescriptorBudget::of_this_process(reserved) else {
        return max_connections;
    };
    let allowed = usize::try_from(budget.connections).unwrap_or(usize::MAX);
    if max_connections <= allowed {
        return max_connections;
    }
    let serving = allowed.max(1);
    log::warn!(
        "serving at most {serving} connections at once, not {max_connections}: the \
         descriptor limit (RLIMIT_NOFILE) is {}, and the server keeps some for itself \
         (raise it with `ulimit -n`, or LimitNOFILE= in a systemd unit); clients beyond \
         that wait",
        budget.limit
    );
    serving
}

/// Descriptors the server opens after binding, besides connections: each
/// event loop's poll and wake-up descriptors, and what the program reserved.
fn descriptors_reserved(settings: &Settings) -> u64 {
    // Each loop holds two: an epoll instance and its waker, or a ring and
    // its eventfd. Under `uring` and `auto` both kinds may run (TLS and
    // impaired connections are served by event loops).
    let per_loop = match settings.engine {
        Engine::Threads => 0,
        Engine::Events => 2,
        _ => 4,
    };
    (per_loop * crate::settings::per_core(settings.event_loops) + settings.reserved_descriptors)
        as u64
}

/// One line at start-up when a UDP burst is below what the largest datagram
/// answered costs: the limiter would refuse every such datagram forever, and
/// nothing else would say why.
fn warn_of_small_bursts(udp: &UdpSettings) {
    let bursts = [
        (udp.rate_limit, "per-network UDP burst (--udp-burst)"),
        (
            udp.total_rate_limit,
            "server-wide UDP burst (--udp-total-burst)",
        ),
    ];
    let smallest = bursts
        .iter()
        .filter_map(|&(limit, name)| limit.map(|l| (l.burst, name)))
        .min_by_key(|&(burst, _)| burst);
    let Some((burst, name)) = smallest else {
        return;
    };
    let largest = crate::rate_limit::cost(udp.max_datagram);
    if burst >= largest {
        return;
    }
    let overhead = crate::rate_limit::cost(0);
    let never = match burst.checked_sub(overhead) {
        Some(fits) => format!("datagrams over {fits} bytes will never be answered"),
        None => "no datagram, not even an empty one, will ever be answered".to_owned(),
    };
    log::warn!(
        "the {name} is {burst} bytes, below the {largest} a {} byte datagram costs (each \
         costs its length + {overhead}): {never}",
        udp.max_datagram
    );
}

/// Binds (or adopts) one listener; errors say which.
fn bind(
    binding: Binding,
    backlog: i32,
    unix_mode: Option<u32>,
    keepalive: Option<Duration>,
    udp_settings: &UdpSettings,
) -> io::Result<Listener> {
    let context = |what: ListenAddr| {
        move |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {what}: {e}"))
    };
    Ok(match binding {
        Binding::Tcp(addr) => Listener::Stream(
            listener::bind_tcp(addr, backlog, keepalive).map_err(context(ListenAddr::Tcp(addr)))?,
        ),
        #[cfg(feature = "tls")]
        Binding::Tls(addr) => Listener::Stream(
            listener::bind_tcp(addr, backlog, keepalive)
                .map_err(context(ListenAddr::Tls(addr)))?
                .into_tls(),
        ),
        Binding::TcpListener(l) => Listener::Stream(StreamListener::from_socket(Socket::from(l))?),
        Binding::Udp(addr) => Listener::Datagram(
            udp::bind_udp(addr, udp_settings).map_err(context(ListenAddr::Udp(addr)))?,
        ),
        Binding::UdpSocket(s) => {
            Listener::Datagram(DatagramSocket::from_socket(Socket::from(s), udp_settings)?)
        }
        #[cfg(unix)]
        Binding::Unix(path) => Listener::Stream(
            StreamListener::bind_unix(&path, backlog, unix_mode)
                .map_err(context(ListenAddr::Unix(path)))?,
        ),
        #[cfg(unix)]
        Binding::Inherited(fd) => adopt(Socket::from(fd), udp_settings)?,
    })
}

/// Serves an inherited socket according to its type.
#[cfg(unix)]
fn adopt(socket: Socket, udp_settings: &UdpSettings) -> io::Result<Listener> {
    use socket2::Type;
    let ty = socket.r#type()?;
    if ty == Type::STREAM {
        if !socket.is_listener()? {
            return Err(invalid("an inherited stream socket is not listening"));
        }
        Ok(Listener::Stream(StreamListener::from_socket(socket)?))
    } else if ty == Type::DGRAM {
        Ok(Listener::Datagram(DatagramSocket::from_socket(
            socket,
            udp_settings,
        )?))
    } else {
        Err(invalid(
            "an inherited socket is neither a stream nor a datagram socket",
        ))
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
impl ServerBuilder {
    /// What has been set so far, for tests of the layers that build.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two descriptors per event loop (none under `threads`), plus what the
    /// program reserved.
    #[test]
    fn the_descriptors_reserved_are_the_loops_and_the_programs() {
        let settings = |engine, loops| {
            Server::builder()
                .engine(engine)
                .event_loops(loops)
                .reserve_descriptors(18)
                .settings
        };
        assert_eq!(descriptors_reserved(&settings(Engine::Threads, 3)), 18);
        assert_eq!(
            descriptors_reserved(&settings(Engine::Events, 3)),
            2 * 3 + 18
        );
        assert_eq!(descriptors_reserved(&settings(Engine::Auto, 5)), 4 * 5 + 18);
        assert_eq!(
            descriptors_reserved(&settings(Engine::Uring, 5)),
            4 * 5 + 18
        );
    }
}

#[cfg(all(test, target_os = "linux", feature = "uring"))]
mod uring_tests {
    use super::*;
    use crate::sys::uring::tests::with_setup_failing;

    /// Where io_uring is refused, `--engine uring` fails at start-up (the
    /// CLI exits 1 with this error) and names why; the other engines do not
    /// care.
    #[test]
    fn a_refused_io_uring_fails_the_uring_engine_with_the_reason() {
        let build = |engine| {
            Server::builder()
                .tcp(([127, 0, 0, 1], 0))
                .engine(engine)
                .build()
        };
        for (errno, why) in [
            (libc::EPERM, "io_uring"),
            (libc::ENOSYS, "this kernel has no io_uring"),
        ] {
            let e = with_setup_failing(errno, || build(Engine::Uring)).unwrap_err();
            let message = e.to_string();
            assert!(
                message.starts_with("the uring engine cannot run: ") && message.contains(why),
                "{message}"
            );
            assert!(message.contains("--engine events"), "{message}");
            assert!(with_setup_failing(errno, || build(Engine::Events)).is_ok());
        }
        assert!(
            build(Engine::Uring).is_ok(),
            "io_uring works on this machine"
        );
    }
}
