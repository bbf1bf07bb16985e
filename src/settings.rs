//! How the server serves: the configuration every layer reads, set once by
//! the builder and never changed while the server runs.

use crate::address::{Network, Peer};
use crate::rate_limit::{RateLimit, SourcePrefix};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How connections wait for their next bytes. Every engine serves through
/// the same echo core, connection limit, timeouts, counters and shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Engine {
    /// A thread per connection, blocking in `read`: the lowest latency for
    /// a few connections, and `splice(2)` for bulk streams on Linux. The
    /// number of connections is capped by the threads the OS can give.
    Threads,
    /// A few event loops (one per core by default) on the OS's readiness
    /// API (epoll, kqueue), each serving many non-blocking connections: no
    /// context switch per message, and as many connections as there are
    /// file descriptors. Unix only.
    Events,
    /// A few loops (one per core by default) on io_uring, each with its own
    /// ring: receives complete into buffers the kernel picks from a ring of
    /// provided buffers (an idle connection holds none), and each echo is
    /// sent from the buffer it arrived in. Linux only (with the `uring`
    /// feature, on by default); the server fails to build where io_uring is
    /// refused (an old kernel, `kernel.io_uring_disabled`, seccomp).
    Uring,
    /// Threads for the first connections, loops for the rest: a new
    /// connection gets its own thread while fewer than the threshold are on
    /// threads, otherwise it goes to the least busy io_uring loop (Linux,
    /// the `uring` feature), or event loop where io_uring is refused (one
    /// log line says why). A connection never moves. The default (threads
    /// only where there are no event loops).
    #[default]
    Auto,
}

impl Engine {
    /// Every engine, for tests and help texts.
    pub const ALL: [Engine; 4] = [Engine::Threads, Engine::Events, Engine::Uring, Engine::Auto];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Threads => "threads",
            Engine::Events => "events",
            Engine::Uring => "uring",
            Engine::Auto => "auto",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Engine, String> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("`{s}` is not an engine (threads, events, uring or auto)"))
    }
}

/// How each connection is served.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) max_per_source: Option<usize>,
    pub(crate) log_data: bool,
    /// Bulk echo through `splice(2)` on Linux (thread engine).
    pub(crate) splice: bool,
    pub(crate) shutdown_grace: Duration,
    /// When full with clients waiting, close a connection idle this long.
    pub(crate) reclaim_idle: Option<Duration>,
    /// TCP keepalive idle time.
    pub(crate) keepalive: Option<Duration>,
    pub(crate) engine: Engine,
    /// Event loops to run (0: one per available core).
    pub(crate) event_loops: usize,
    /// Under [`Engine::Auto`]: connections served on threads before new
    /// ones go to the loops.
    pub(crate) thread_connections: usize,
    /// At most this many connection threads, below what the OS allows.
    pub(crate) max_threads: Option<usize>,
    /// Threads the embedding program runs, left out of the thread budget.
    pub(crate) reserved_threads: usize,
    /// Descriptors the program will open beside the server's (the metrics
    /// endpoint's connections), which the connection limit leaves room for.
    pub(crate) reserved_descriptors: usize,
    pub(crate) udp: UdpSettings,
    pub(crate) proxy: ProxySettings,
    /// How long a TLS handshake may take, from accept.
    pub(crate) tls_handshake_timeout: Duration,
    /// The impairments, seeded, when any is on (`None`: the echo is as
    /// fast as it can be, and no engine looks further).
    pub(crate) impair: Option<std::sync::Arc<crate::impairment::Impairments>>,
    /// The certificates of the TLS listeners, when there are any.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<std::sync::Arc<crate::tls_config::TlsConfig>>,
}

/// Which connections must begin with a PROXY protocol header (those of a
/// load balancer that says who its clients are).
#[derive(Debug, Clone)]
pub(crate) struct ProxySettings {
    /// The balancers' networks.
    pub(crate) networks: Vec<Network>,
    /// Every client of a Unix stream listener too.
    pub(crate) unix: bool,
    /// How long a header may take to arrive in full.
    pub(crate) timeout: Duration,
}

impl ProxySettings {
    /// Whether a connection from `peer` must begin with a header.
    pub(crate) fn expects_header(&self, peer: &Peer) -> bool {
        match peer {
            Peer::Ip(addr) => self.networks.iter().any(|n| n.contains(addr.ip())),
            Peer::Local(_) => self.unix,
        }
    }

    /// Whether any connection ever must.
    pub(crate) fn is_on(&self) -> bool {
        self.unix || !self.networks.is_empty()
    }
}

/// How each UDP datagram is judged.
#[derive(Debug, Clone)]
pub(crate) struct UdpSettings {
    pub(crate) filter_sources: bool,
    /// The budget of each source network.
    pub(crate) rate_limit: Option<RateLimit>,
    /// The budget of the whole server, every source together.
    pub(crate) total_rate_limit: Option<RateLimit>,
    /// What a source network is.
    pub(crate) prefix: SourcePrefix,
    pub(crate) max_datagram: usize,
    /// Receive threads (and sockets) per UDP address.
    pub(crate) threads: usize,
    /// Socket buffer size asked for, each way.
    pub(crate) buffer: usize,
}

/// A count of threads where `0` means one per available core.
pub(crate) fn per_core(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_round_trip() {
        for engine in Engine::ALL {
            assert_eq!(engine.name().parse::<Engine>(), Ok(engine));
            assert_eq!(engine.to_string(), engine.name());
        }
        assert!("fibers".parse::<Engine>().is_err());
        assert_eq!(Engine::default(), Engine::Auto);
    }
}
