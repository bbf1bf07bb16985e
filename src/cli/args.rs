//! The command line's options ([`Args`], clap's derive) and what they make:
//! the [`ServerBuilder`] they describe.

use super::logger::LogFormat;
use super::probe::ProbeArgs;
use super::values::{
    parse_burst, parse_bytes, parse_datagram_size, parse_host, parse_keepalive,
    parse_max_connections, parse_metrics_addr, parse_mode, parse_prefix, parse_secs,
    parse_secs_or_off, parse_secs_or_zero, parse_udp_buffer, unless_off,
};
use super::values::{
    parse_byte_range, parse_chunk, parse_delay, parse_impair_port, parse_probability, parse_rate,
};
use super::values::{parse_proxy_source, ProxySource};
use super::Generated;
use crate::builder::{
    ServerBuilder, DEFAULT_BACKLOG, DEFAULT_MAX_CONNECTIONS, DEFAULT_THREAD_CONNECTIONS,
};
use crate::impairment::Impairments;
use crate::rate_limit::{RateLimit, SourcePrefix};
use crate::server::Server;
use crate::settings::Engine;
use crate::udp;
use clap::Parser;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Command-line options. Build with [`Args::try_parse_from`] (from `clap`).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "echo-server",
    version,
    about = "Echo server (RFC 862): every byte a client sends comes back.",
    long_about = "Echo server (RFC 862): every byte a client sends comes back.\n\n\
        The first TCP or Unix-socket connections are served by a thread each, the rest by \
        event loops (--engine); with --udp, each datagram is answered with the same bytes. Logs go to stderr; for each listener one \
        line says `listening on <tcp|udp|unix> ADDRESS`. SIGINT or SIGTERM stops \
        accepting, lets connections finish echoing what they sent, and exits 0. Sockets \
        passed by systemd (LISTEN_FDS) are served too; then PORT may be omitted.",
    after_help = "Examples:\n  echo-server 7007                  # TCP on 127.0.0.1:7007\n  \
        echo-server --udp 7007            # TCP and UDP on port 7007\n  \
        echo-server --bind :: 7007        # every interface, IPv4 and IPv6\n  \
        echo-server --unix /tmp/echo.sock # a Unix socket only\n  \
        echo-server 0                     # a free port, printed at start-up\n  \
        echo-server probe 127.0.0.1:7007  # check a running server's echo",
    // `echo-server probe ...` is a command of its own: none of the server's
    // options go with it (so `echo-server --udp probe` is a usage error, not
    // a server), and a requirement of the server's never applies to it.
    // `probe` is no port, so `echo-server [OPTIONS] [PORT]...` reads as
    // before. No `help` subcommand: `echo-server help` stays what it was
    // (not a port: a usage error).
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true,
    // --impair-port and --seed say which listeners and which choices: with
    // no impairment to apply they would do nothing, silently.
    group = clap::ArgGroup::new("impairment").multiple(true).args([
        "chunk", "delay", "rate", "reset_after", "close_after", "stall_after", "drop",
        "duplicate", "reorder",
    ])
)]
pub struct Args {
    /// A command other than serving (`probe`); none: serve.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TCP ports to listen on, 0-65535 each; 0 lets the OS pick a free port.
    /// Optional with --unix or with sockets passed by systemd.
    #[arg(value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Address to listen on: an IP address or a host name, resolved once at
    /// start-up (`localhost` serves 127.0.0.1 and ::1). May be given several
    /// times. The default accepts only local clients; `::` accepts every
    /// interface over IPv4 and IPv6, `0.0.0.0` every IPv4 one.
    #[arg(long, value_name = "ADDR|HOST", default_value = "127.0.0.1", value_parser = parse_host)]
    pub bind: Vec<String>,

    /// Also echo UDP datagrams on the same addresses and ports.
    #[arg(long, requires = "ports")]
    pub udp: bool,

    /// Also (or only) listen on a Unix stream socket at PATH (may be given
    /// several times). A stale socket file there is replaced; a live one is
    /// never taken over. Removed on exit. While serving, the server holds a
    /// lock on PATH.lock, so two servers starting at once cannot both take it.
    #[arg(long, value_name = "PATH")]
    pub unix: Vec<PathBuf>,

    /// Permissions of the --unix sockets, in octal (e.g. 660: owner and
    /// group may connect), set before the socket accepts anyone
    /// [default: what the umask leaves]
    #[arg(long, value_name = "OCTAL", requires = "unix", value_parser = parse_mode)]
    pub unix_mode: Option<u32>,

    /// Listen backlog: clients that may wait to be accepted (also while
    /// every slot is taken); the kernel caps it at net.core.somaxconn.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub backlog: i32,

    /// On SIGINT/SIGTERM, how long connections may go on echoing what they
    /// have already sent before they are closed (0: close them at once).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs_or_zero)]
    pub shutdown_grace: Duration,

    /// Serve at most N connections at once. Further clients are not refused:
    /// they wait in the listen backlog until a connection ends.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections)]
    pub max_connections: usize,

    /// How connections are served: `threads` (a thread each: lowest latency
    /// for a few connections), `events` (event loops, one per core: many
    /// busy connections, up to the descriptor limit), `uring` (io_uring loops,
    /// one per core, Linux: receives into kernel-picked buffers, echoes sent
    /// without a copy; exits 1 at start-up if io_uring is refused), or
    /// `auto` (threads for the first --thread-connections, event loops for
    /// the rest).
    #[arg(long, value_name = "ENGINE", default_value = "auto", value_parser = str::parse::<Engine>)]
    pub engine: Engine,

    /// Under --engine auto: connections served on threads before new ones
    /// go to the io_uring loops (the event loops where io_uring is refused).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_THREAD_CONNECTIONS)]
    pub thread_connections: usize,

    /// Number of event loops [default: one per core]
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    pub event_loops: Option<usize>,

    /// Start at most N connection threads (never more than the OS can give,
    /// which is worked out at start-up). Under --engine threads this also
    /// caps --max-connections [default: what the OS allows]
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    pub max_threads: Option<usize>,

    /// Close a connection whose client has sent nothing for SECS seconds
    /// (fractions allowed, e.g. 0.5) [default: off]
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub idle_timeout: Option<Duration>,

    /// Close a connection whose client has not read its echo for SECS
    /// seconds while the server had more to send (a stalled reader).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub write_timeout: Duration,

    /// Never close stalled readers (see --write-timeout).
    #[arg(long, conflicts_with = "write_timeout")]
    pub no_write_timeout: bool,

    /// When every slot is taken and a client waits, close the connection
    /// idle longest if it has been idle (nothing read, nothing left to
    /// write) for SECS seconds, and serve the waiting client; `off` never
    /// does. Busy connections are never reclaimed.
    #[arg(long, value_name = "SECS|off", default_value = "10", value_parser = parse_secs_or_off)]
    pub reclaim_idle: Duration,

    /// TCP keepalive after SECS seconds without traffic (probes every SECS/6,
    /// 1 to 10 s, 5 of them), so a client that vanished without a FIN or
    /// reset is found and its slot freed; `off` turns it off.
    #[arg(long, value_name = "SECS|off", default_value = "60", value_parser = parse_keepalive)]
    pub keepalive: Duration,

    /// Serve at most N connections from one IP address at once; more are
    /// reset at once, so one address cannot take every slot [default: no cap]
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    pub max_per_source: Option<usize>,

    /// Connections from these load balancers must begin with a PROXY
    /// protocol header (v1 or v2, told apart by itself), which is consumed
    /// and whose client address stands for the connection everywhere
    /// (--max-per-source, logs). Networks such as 10.0.0.0/8 or ::1,
    /// comma-separated or repeated; `unix` for the --unix listeners.
    /// Others are served as they are. A malformed, overlong or late header
    /// closes the connection without an echo [default: none]
    #[arg(long, value_name = "NETWORK,...", value_delimiter = ',', value_parser = parse_proxy_source)]
    pub proxy_protocol: Vec<ProxySource>,

    /// How long a PROXY protocol header may take to arrive in full.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub proxy_timeout: Duration,

    /// TLS ports: each --bind address listens for TLS on each, and echoes
    /// the decrypted bytes (a client's close_notify is its half-close).
    /// Needs --tls-cert and --tls-key. May be given several times; the
    /// PORT arguments may then be left out. SIGHUP re-reads the
    /// certificate files.
    #[arg(long = "tls", value_name = "PORT")]
    pub tls: Vec<u16>,

    /// The TLS certificate chain, a PEM file, the server's own first.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_cert: Option<PathBuf>,

    /// The TLS private key, a PEM file (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: require of every TLS client a certificate signed by a CA
    /// of this PEM file [default: no client certificate asked for]
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_client_ca: Option<PathBuf>,

    /// How long a TLS client has, from accept (or from the end of its
    /// PROXY protocol header, which has its own deadline), to finish its
    /// handshake.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub tls_handshake_timeout: Duration,

    /// Log every chunk or datagram received, with the client's address, as
    /// escaped text (control bytes and non-ASCII shown as \xNN).
    #[arg(long)]
    pub log_data: bool,

    /// Answer UDP datagrams from any source. By default none are sent to
    /// privileged ports (<1024, where echo/chargen loops start) or to
    /// broadcast, multicast or unspecified addresses. For lab use.
    #[arg(long)]
    pub udp_allow_any_source: bool,

    /// UDP rate limit of each source network (--udp-prefix) in bytes per
    /// second (suffixes K, M, G; each datagram also costs 64 bytes); 0 turns
    /// it off.
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_bytes)]
    pub udp_rate: u64,

    /// UDP burst of each source network: bytes a quiet network may send at
    /// once. Below the cost of the largest datagram answered, a start-up
    /// warning says which datagrams will never be answered.
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_burst)]
    pub udp_burst: u64,

    /// What one UDP budget covers: every source in the same IPv4 /V4 and
    /// IPv6 /V6 network (forged sources rotating through a network share
    /// it); 32,128 gives each address its own. IPv4-mapped IPv6 sources
    /// count as IPv4.
    #[arg(long, value_name = "V4,V6", default_value = "24,56", value_parser = parse_prefix)]
    pub udp_prefix: SourcePrefix,

    /// UDP reply ceiling of the whole server, every source together, in
    /// bytes per second: what forged sources from any number of networks
    /// can make it send. The default is 16 networks at full --udp-rate
    /// (about 134 Mbit/s), far above what any one tester gets; 0 turns it
    /// off.
    #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = parse_bytes)]
    pub udp_total_rate: u64,

    /// UDP burst of the whole server (--udp-total-rate).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_burst)]
    pub udp_total_burst: u64,

    /// Largest UDP datagram answered; larger ones are dropped whole (never
    /// echoed in part) and counted. At most 65527.
    #[arg(long, value_name = "BYTES", default_value_t = udp::MAX_DATAGRAM,
          value_parser = parse_datagram_size)]
    pub udp_max_datagram: usize,

    /// Receive threads per UDP address, each on its own socket
    /// (SO_REUSEPORT; Linux) [default: one per core]
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    pub udp_threads: Option<usize>,

    /// Receive and send buffer of each UDP socket, so bursts queue instead
    /// of being dropped; capped by net.core.rmem_max/wmem_max unless
    /// privileged (a warning says so).
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_udp_buffer)]
    pub udp_buffer: usize,

    /// On Linux, echo a thread-engine connection that sends in bulk with
    /// splice(2) (socket to pipe to socket) while at most 8 connections are
    /// open, instead of the read/write loop. Off by default: it measured
    /// slower than the loop on loopback (README, Performance, has the
    /// figures).
    #[arg(long)]
    pub splice: bool,

    /// The default: bulk traffic goes through the read/write loop (kept for
    /// scripts written when splice(2) was on by default).
    #[arg(long, hide = true, conflicts_with = "splice")]
    pub no_splice: bool,

    /// Impairment (for testing clients): echo in pieces of MIN to MAX bytes,
    /// each its own write (TCP_NODELAY), so that the client reads them
    /// apart.
    #[arg(long, value_name = "MIN-MAX", value_parser = parse_chunk, help_heading = "Impairments")]
    pub chunk: Option<(usize, usize)>,

    /// Impairment: a delay of MS (or MS to MS) milliseconds before each
    /// piece of a stream's echo, and before each UDP reply.
    #[arg(long, value_name = "MS[-MS]", value_parser = parse_delay, help_heading = "Impairments")]
    pub delay: Option<(Duration, Duration)>,

    /// Impairment: each connection's echo is paced to BYTES per second.
    #[arg(long, value_name = "BYTES/S", value_parser = parse_rate, help_heading = "Impairments")]
    pub rate: Option<u64>,

    /// Impairment: reset each connection (RST, not FIN) once it has echoed
    /// BYTES (or a number drawn from BYTES-BYTES).
    #[arg(long, value_name = "BYTES[-BYTES]", value_parser = parse_byte_range,
          conflicts_with_all = ["close_after", "stall_after"], help_heading = "Impairments")]
    pub reset_after: Option<(u64, u64)>,

    /// Impairment: close each connection cleanly (FIN) once it has echoed
    /// BYTES.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes,
          conflicts_with = "stall_after", help_heading = "Impairments")]
    pub close_after: Option<u64>,

    /// Impairment: once a connection has echoed BYTES, neither read nor
    /// write it again; its --idle-timeout (else --write-timeout) ends it.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, help_heading = "Impairments")]
    pub stall_after: Option<u64>,

    /// Impairment: drop each UDP reply with probability P (0 to 1).
    #[arg(long, value_name = "P", value_parser = parse_probability, help_heading = "Impairments")]
    pub drop: Option<f64>,

    /// Impairment: send each UDP reply twice with probability P.
    #[arg(long, value_name = "P", value_parser = parse_probability, help_heading = "Impairments")]
    pub duplicate: Option<f64>,

    /// Impairment: hold each UDP reply back with probability P and send it
    /// after the next reply to the same source.
    #[arg(long, value_name = "P", value_parser = parse_probability, help_heading = "Impairments")]
    pub reorder: Option<f64>,

    /// Impair only the listeners on PORT (each --bind address listens on
    /// it too, with --udp also for UDP); the other ports stay clean. May be
    /// given several times. By default every listener is impaired.
    #[arg(
        long = "impair-port",
        value_name = "PORT",
        requires = "impairment",
        value_parser = parse_impair_port,
        help_heading = "Impairments"
    )]
    pub impair_port: Vec<u16>,

    /// The seed of every impairment's choices; without it one is drawn and
    /// logged at start-up. Connection (and UDP source) number I draws from
    /// (seed, I); -v logs I.
    #[arg(
        long,
        value_name = "N",
        requires = "impairment",
        help_heading = "Impairments"
    )]
    pub seed: Option<u64>,

    /// Log the counters every SECS seconds, when they changed (SIGUSR1 logs
    /// them at any time, on Unix) [default: off]
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub stats_interval: Option<Duration>,

    /// Serve the counters in the Prometheus text format at
    /// http://ADDR/metrics, and the probes /healthz and /readyz, on a
    /// listener of its own (a port alone means 127.0.0.1:PORT) [default: off]
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,

    /// Print the man page (`man`) or a shell completion script (`bash`,
    /// `zsh`, `fish`) on stdout and exit, e.g. `echo-server --generate man >
    /// echo-server.1`.
    #[arg(long, value_name = "WHAT", value_enum)]
    pub generate: Option<Generated>,

    /// Log lines as plain text or as JSON objects, one per line (time,
    /// level, message) for log shippers. The `listening on` lines stay
    /// plain text either way: scripts wait for them.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log each connection too (repeat for more detail).
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log only warnings and errors (the listening lines are always shown).
    #[arg(short, long)]
    pub quiet: bool,
}

/// The commands besides serving.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Check that an echo server answers (a health check).
    ///
    /// Sends random bytes and expects exactly them back within the timeout.
    /// Prints one line with the round trip and exits 0; otherwise exits 1
    /// and names the reason (a wrong reply and at which byte, a reply cut
    /// short, a timeout, a refused connection, a name that does not
    /// resolve). A container's HEALTHCHECK runs `echo-server probe
    /// 127.0.0.1:7007`.
    Probe(ProbeArgs),
}

impl Args {
    /// The IP addresses of every `--bind`, host names resolved, each once,
    /// in order.
    ///
    /// # Errors
    ///
    /// A host name that does not resolve, naming it.
    pub fn bind_addrs(&self) -> std::io::Result<Vec<IpAddr>> {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for host in &self.bind {
            let resolved: Vec<IpAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => (host.as_str(), 0)
                    .to_socket_addrs()
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("cannot resolve --bind {host}: {e}"))
                    })?
                    .map(|a| a.ip())
                    .collect(),
            };
            for ip in resolved {
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
        Ok(addrs)
    }

    /// The server these options describe (not yet bound).
    ///
    /// # Errors
    ///
    /// A `--bind` host name that does not resolve.
    pub fn builder(&self) -> std::io::Result<ServerBuilder> {
        let rate_limit = (self.udp_rate > 0).then_some(RateLimit {
            rate: self.udp_rate,
            burst: self.udp_burst,
        });
        let total_rate_limit = (self.udp_total_rate > 0).then_some(RateLimit {
            rate: self.udp_total_rate,
            burst: self.udp_total_burst,
        });
        let mut builder = Server::builder()
            .max_connections(self.max_connections)
            .engine(self.engine)
            .thread_connections(self.thread_connections)
            .event_loops(self.event_loops.unwrap_or(0))
            .max_threads(self.max_threads)
            // --stats-interval and --metrics each start a thread after the
            // budget is worked out. (The two signal threads, SIGINT/SIGTERM
            // and SIGUSR1, run already: `serve` starts them first, and the
            // budget counts them with the tasks in use.)
            .reserve_threads(
                usize::from(self.stats_interval.is_some())
                    + self.metrics.map_or(0, |_| crate::metrics::THREADS),
            )
            // The metrics endpoint's connections and its listener.
            .reserve_descriptors(
                self.metrics
                    .map_or(0, |_| crate::metrics::MAX_CONNECTIONS + 2),
            )
            .idle_timeout(self.idle_timeout)
            .write_timeout((!self.no_write_timeout).then_some(self.write_timeout))
            .max_per_source(self.max_per_source)
            .reclaim_idle(unless_off(self.reclaim_idle))
            .keepalive(unless_off(self.keepalive))
            .log_data(self.log_data)
            .splice(self.splice && !self.no_splice)
            .udp_source_filter(!self.udp_allow_any_source)
            .udp_rate_limit(rate_limit)
            .udp_total_rate_limit(total_rate_limit)
            .udp_source_prefix(self.udp_prefix)
            .udp_max_datagram(self.udp_max_datagram)
            .udp_threads(self.udp_threads.unwrap_or(0))
            .udp_buffer(self.udp_buffer)
            .proxy_protocol(self.proxy_protocol.iter().filter_map(|s| match s {
                ProxySource::Network(n) => Some(*n),
                ProxySource::Unix => None,
            }))
            .proxy_protocol_unix(self.proxy_protocol.contains(&ProxySource::Unix))
            .proxy_protocol_timeout(self.proxy_timeout)
            .tls_handshake_timeout(self.tls_handshake_timeout)
            .backlog(self.backlog)
            .shutdown_grace(self.shutdown_grace);
        #[cfg(feature = "tls")]
        {
            if let Some(cert) = &self.tls_cert {
                builder = builder.tls_cert(cert);
            }
            if let Some(key) = &self.tls_key {
                builder = builder.tls_key(key);
            }
            builder = builder.tls_client_ca(self.tls_client_ca.clone());
        }
        builder = builder.impair(self.impairments()?);
        let ips = if self.ports.is_empty() && self.tls.is_empty() && self.impair_port.is_empty() {
            Vec::new()
        } else {
            self.bind_addrs()?
        };
        for &ip in &ips {
            for &port in &self.ports {
                builder = builder.tcp(SocketAddr::new(ip, port));
                if self.udp {
                    builder = builder.udp(SocketAddr::new(ip, port));
                }
            }
            #[cfg(feature = "tls")]
            for &port in &self.tls {
                builder = builder.tls(SocketAddr::new(ip, port));
            }
            // An impaired port is listened on beside the clean ones.
            for &port in &self.impair_port {
                if self.ports.contains(&port) || self.tls.contains(&port) {
                    continue;
                }
                builder = builder.tcp(SocketAddr::new(ip, port));
                if self.udp {
                    builder = builder.udp(SocketAddr::new(ip, port));
                }
            }
        }
        #[cfg(unix)]
        for path in &self.unix {
            builder = builder.unix(path);
        }
        #[cfg(unix)]
        if let Some(mode) = self.unix_mode {
            builder = builder.unix_mode(mode);
        }
        Ok(builder)
    }

    /// The impairments these options ask for (none by default).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for values the parsers let through but that make no
    /// sense together.
    pub fn impairments(&self) -> std::io::Result<Impairments> {
        let mut imp = Impairments::new().ports(self.impair_port.iter().copied());
        if let Some((min, max)) = self.chunk {
            imp = imp.chunk(min, max)?;
        }
        if let Some((min, max)) = self.delay {
            imp = imp.delay(min, max)?;
        }
        if let Some(rate) = self.rate {
            imp = imp.rate(rate)?;
        }
        if let Some((min, max)) = self.reset_after {
            imp = imp.reset_after(min, max)?;
        }
        if let Some(n) = self.close_after {
            imp = imp.close_after(n)?;
        }
        if let Some(n) = self.stall_after {
            imp = imp.stall_after(n)?;
        }
        imp = imp
            .drop(self.drop.unwrap_or(0.0))?
            .duplicate(self.duplicate.unwrap_or(0.0))?
            .reorder(self.reorder.unwrap_or(0.0))?;
        if let Some(seed) = self.seed {
            imp = imp.seed(seed);
        }
        Ok(imp)
    }

    pub(super) fn log_level(&self) -> log::LevelFilter {
        match (self.quiet, self.verbose) {
            (true, _) => log::LevelFilter::Warn,
            (false, 0) => log::LevelFilter::Info,
            (false, 1) => log::LevelFilter::Debug,
            (false, _) => log::LevelFilter::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::values::{parse_keepalive, parse_prefix, parse_udp_buffer};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("echo-server").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let a = parse(&["7007"]).unwrap();
        assert_eq!(a.ports, [7007]);
        assert!(!a.udp);
        assert!(a.unix.is_empty());
        assert_eq!(a.udp_rate, 1 << 20);
        assert_eq!(a.udp_burst, 8 << 20);
        assert_eq!(a.udp_max_datagram, 65_527);
        assert_eq!(a.bind, ["127.0.0.1"]);
        assert_eq!(a.bind_addrs().unwrap(), [IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(a.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(a.idle_timeout, None);
        assert!(!a.log_data);
        assert_eq!(a.log_level(), log::LevelFilter::Info);
        assert_eq!(a.engine, Engine::Auto);
        assert_eq!(a.thread_connections, DEFAULT_THREAD_CONNECTIONS);
        assert_eq!(a.event_loops, None);
        assert_eq!(a.max_threads, None);
    }

    #[test]
    fn several_binds_and_ports_and_host_names() {
        let a = parse(&[
            "--bind",
            "127.0.0.1",
            "--bind",
            "::1",
            "--bind",
            "127.0.0.1",
            "7",
            "8",
        ])
        .unwrap();
        assert_eq!(a.ports, [7, 8]);
        let ips = a.bind_addrs().unwrap();
        assert_eq!(
            ips,
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        let local = parse(&["--bind", "localhost", "7"]).unwrap();
        let ips = local.bind_addrs().unwrap();
        assert!(ips.contains(&IpAddr::from([127, 0, 0, 1])), "{ips:?}");
        assert!(ips.iter().all(IpAddr::is_loopback), "{ips:?}");
        let nowhere = parse(&["--bind", "no-such-host.invalid", "7"]).unwrap();
        let err = nowhere.bind_addrs().unwrap_err();
        assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
    }

    /// What the command line hands the builder, option by option.
    #[test]
    fn options_reach_the_builder() {
        let settings = |args: &[&str]| parse(args).unwrap().builder().unwrap().settings().clone();
        let default = settings(&["7"]);
        assert_eq!(
            default.udp.rate_limit,
            Some(RateLimit {
                rate: 1 << 20,
                burst: 8 << 20
            })
        );
        assert_eq!(default.write_timeout, Some(Duration::from_secs(30)));
        assert!(!default.splice);
        // The signal threads run already (counted as in use); one more for
        // --stats-interval, and the metrics endpoint's.
        assert_eq!(default.reserved_threads, 0);
        let s = settings(&["--stats-interval", "5", "7"]);
        assert_eq!(s.reserved_threads, 1);
        let s = settings(&["--metrics", "0", "7"]);
        assert_eq!(s.reserved_threads, crate::metrics::THREADS);
        assert_eq!(s.reserved_descriptors, crate::metrics::MAX_CONNECTIONS + 2);
        assert_eq!(settings(&["--udp-rate", "0", "7"]).udp.rate_limit, None);
        assert_eq!(
            settings(&["--udp-rate", "100", "--udp-burst", "1", "7"])
                .udp
                .rate_limit,
            Some(RateLimit {
                rate: 100,
                burst: 1
            })
        );
        assert_eq!(
            default.udp.total_rate_limit,
            Some(RateLimit::total_default())
        );
        assert_eq!(default.udp.prefix, SourcePrefix { v4: 24, v6: 56 });
        let s = settings(&[
            "--udp-total-rate=2M",
            "--udp-total-burst=3M",
            "--udp-prefix= 32,128",
            "7",
        ]);
        assert_eq!(
            s.udp.total_rate_limit,
            Some(RateLimit {
                rate: 2 << 20,
                burst: 3 << 20
            })
        );
        assert_eq!(s.udp.prefix, SourcePrefix { v4: 32, v6: 128 });
        assert_eq!(
            settings(&["--udp-total-rate", "0", "7"])
                .udp
                .total_rate_limit,
            None
        );
        assert_eq!(parse_prefix("0,0"), Ok(SourcePrefix { v4: 0, v6: 0 }));
        assert_eq!(settings(&["--no-write-timeout", "7"]).write_timeout, None);
        assert!(settings(&["--splice", "7"]).splice);
        assert!(!settings(&["--no-splice", "7"]).splice);
        assert_eq!(parse_keepalive("1"), Ok(Duration::from_secs(1)));
        assert!(parse_keepalive("0.999").is_err());
        assert_eq!(parse_udp_buffer("4K"), Ok(4096));
        assert!(parse_udp_buffer("4095").is_err());
        assert!(parse_udp_buffer("2G").is_err());
        assert_eq!(parse_udp_buffer("2047M"), Ok(2047 << 20));
    }

    #[test]
    fn reclaim_and_keepalive() {
        let a = parse(&["7"]).unwrap();
        assert_eq!(a.reclaim_idle, Duration::from_secs(10));
        assert_eq!(a.keepalive, Duration::from_secs(60));
        let a = parse(&["--reclaim-idle", "off", "--keepalive", "OFF", "7"]).unwrap();
        assert_eq!(
            (unless_off(a.reclaim_idle), unless_off(a.keepalive)),
            (None, None)
        );
        let a = parse(&["--reclaim-idle", "0.5", "--keepalive", "2", "7"]).unwrap();
        assert_eq!(a.reclaim_idle, Duration::from_millis(500));
        assert_eq!(a.keepalive, Duration::from_secs(2));
    }

    #[test]
    fn engine_options() {
        let a = parse(&[
            "--engine",
            "events",
            "--event-loops",
            "3",
            "--thread-connections",
            "0",
            "--max-threads",
            "5",
            "7",
        ])
        .unwrap();
        assert_eq!(a.engine, Engine::Events);
        assert_eq!(a.event_loops, Some(3));
        assert_eq!(a.thread_connections, 0);
        assert_eq!(a.max_threads, Some(5));
        assert_eq!(
            parse(&["--engine", "threads", "7"]).unwrap().engine,
            Engine::Threads
        );
    }

    #[test]
    fn options() {
        let a = parse(&[
            "--bind",
            "::",
            "--max-connections",
            "3",
            "--idle-timeout",
            "0.5",
            "--log-data",
            "-v",
            "0",
        ])
        .unwrap();
        assert_eq!(a.ports, [0]);
        assert_eq!(a.bind_addrs().unwrap(), ["::".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.max_connections, 3);
        assert_eq!(a.idle_timeout, Some(Duration::from_millis(500)));
        assert!(a.log_data);
        assert_eq!(a.log_level(), log::LevelFilter::Debug);
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["abc"][..],
            &["70000"],
            &["-1"],
            &["--udp"],
            &["--udp-rate", "fast", "7"],
            &["--udp-max-datagram", "65528", "7"],
            &["--udp-max-datagram", "0", "7"],
            &["--bind", "local host", "7"],
            &["--bind", "", "7"],
            &["--bind", "a/b", "7"],
            &["--max-connections", "0", "7"],
            &["--idle-timeout", "0", "7"],
            &["--idle-timeout", "nan", "7"],
            &["--idle-timeout", "-3", "7"],
            &["--frobnicate", "7"],
            &["--engine", "fibers", "7"],
            &["--event-loops", "0", "7"],
            &["--max-threads", "0", "7"],
            &["--udp-threads", "0", "7"],
            &["--keepalive", "0.5", "7"],
            &["--reclaim-idle", "never", "7"],
            &["--udp-buffer", "1K", "7"],
            &["--udp-burst", "0", "7"],
            &["--udp-total-burst", "0", "7"],
            &["--udp-prefix", "33,56", "7"],
            &["--udp-prefix", "24,129", "7"],
            &["--udp-prefix", "24", "7"],
            &["--udp-prefix", "24,56,1", "7"],
            &["--udp-prefix", "-1,56", "7"],
            &["-q", "-v", "7"],
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.use_stderr(), "{bad:?} should be a usage error");
        }
    }

    #[test]
    fn port_is_optional_with_unix() {
        let a = parse(&["--unix", "/tmp/x.sock"]).unwrap();
        assert!(a.ports.is_empty());
        assert_eq!(a.unix, [PathBuf::from("/tmp/x.sock")]);
    }
}
