//! The `echo-server` command line: parsing, logging to stderr, signals, exit
//! statuses. `main.rs` only calls [`main`].
//!
//! Exit statuses: 0 after a clean shutdown (or `--help`), 1 when the server
//! cannot run (such as a port in use), 2 for a usage error.

use crate::{
    udp, Engine, RateLimit, Server, ServerBuilder, SourcePrefix, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_THREAD_CONNECTIONS,
};
use clap::{CommandFactory, Parser};
use std::ffi::OsString;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        echo-server 0                     # a free port, printed at start-up"
)]
pub struct Args {
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
    #[arg(long, value_name = "N", default_value_t = crate::DEFAULT_BACKLOG,
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
    /// busy connections, up to the descriptor limit), or `auto` (threads for
    /// the first --thread-connections, event loops for the rest).
    #[arg(long, value_name = "ENGINE", default_value = "auto", value_parser = parse_engine)]
    pub engine: Engine,

    /// Under --engine auto: connections served on threads before new ones
    /// go to the event loops.
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
    #[arg(long, value_name = "WHAT", value_parser = ["man", "bash", "zsh", "fish"])]
    pub generate: Option<String>,

    /// Log lines as plain text or as JSON objects, one per line (time,
    /// level, message) for log shippers. The `listening on` lines stay
    /// plain text either way: scripts wait for them.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Log each connection too (repeat for more detail).
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log only warnings and errors (the listening lines are always shown).
    #[arg(short, long)]
    pub quiet: bool,
}

/// An IP address, or something that can be a host name (letters, digits,
/// `-` and `.`); resolving it waits for start-up.
fn parse_host(s: &str) -> Result<String, String> {
    let name_like = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if s.parse::<IpAddr>().is_ok() || name_like {
        Ok(s.to_owned())
    } else {
        Err(format!("`{s}` is neither an IP address nor a host name"))
    }
}

/// `HOST:PORT` with an IP address, or a port alone (loopback).
fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("`{s}` is neither a port nor an IP address with a port"))
}

fn parse_engine(s: &str) -> Result<Engine, String> {
    s.parse()
}

fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a positive, finite number of seconds, such as `30` or `0.5`.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("must be more than 0 seconds".to_owned());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s} seconds is too long"))
}

/// A number of seconds, zero allowed.
fn parse_secs_or_zero(s: &str) -> Result<Duration, String> {
    if s.parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_secs(s)
}

/// File permissions in octal, such as `660` or `0o600`.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "`{s}` is not a file mode in octal from 0 to 777 (e.g. 660)"
        )),
    }
}

/// `off` (as zero) or a number of seconds.
fn parse_secs_or_off(s: &str) -> Result<Duration, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    parse_secs(s)
}

/// `off`, or whole seconds from 1 (what TCP_KEEPIDLE takes).
fn parse_keepalive(s: &str) -> Result<Duration, String> {
    let d = parse_secs_or_off(s)?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err("must be at least 1 second, or off".to_owned());
    }
    Ok(d)
}

/// `Some` unless `off`.
fn unless_off(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Parses a byte count with an optional binary suffix: `512`, `64K`, `1M`,
/// `2G` (case-insensitive, an optional trailing `B` or `iB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (number, shift) = match digits.as_bytes().last() {
        Some(b'k') => (&digits[..digits.len() - 1], 10),
        Some(b'm') => (&digits[..digits.len() - 1], 20),
        Some(b'g') => (&digits[..digits.len() - 1], 30),
        _ => (digits, 0),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (e.g. 512, 64K, 1M)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A UDP burst: a zero burst would answer nothing, ever.
fn parse_burst(s: &str) -> Result<u64, String> {
    match parse_bytes(s)? {
        0 => Err("must be above 0 (no datagram could ever be answered)".to_owned()),
        n => Ok(n),
    }
}

/// `V4,V6`: the IPv4 and IPv6 prefix lengths of a UDP source network.
fn parse_prefix(s: &str) -> Result<SourcePrefix, String> {
    let usage = || format!("`{s}` is not V4,V6 prefix lengths (IPv4 0-32, IPv6 0-128; e.g. 24,56)");
    let (v4, v6) = s.split_once(',').ok_or_else(usage)?;
    let prefix = SourcePrefix {
        v4: v4.trim().parse().map_err(|_| usage())?,
        v6: v6.trim().parse().map_err(|_| usage())?,
    };
    prefix.is_valid().then_some(prefix).ok_or_else(usage)
}

fn parse_udp_buffer(s: &str) -> Result<usize, String> {
    match parse_bytes(s)? {
        n if n < 4096 => Err("must be at least 4K".to_owned()),
        n => usize::try_from(n)
            .ok()
            .filter(|&n| n <= i32::MAX as usize)
            .ok_or_else(|| "must be below 2G".to_owned()),
    }
}

fn parse_datagram_size(s: &str) -> Result<usize, String> {
    let n = parse_bytes(s)?;
    if (1..=udp::MAX_DATAGRAM as u64).contains(&n) {
        Ok(n as usize)
    } else {
        Err(format!("must be 1 to {} bytes", udp::MAX_DATAGRAM))
    }
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
            .backlog(self.backlog)
            .shutdown_grace(self.shutdown_grace);
        let ips = if self.ports.is_empty() {
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

    fn log_level(&self) -> log::LevelFilter {
        match (self.quiet, self.verbose) {
            (true, _) => log::LevelFilter::Warn,
            (false, 0) => log::LevelFilter::Info,
            (false, 1) => log::LevelFilter::Debug,
            (false, _) => log::LevelFilter::Trace,
        }
    }
}

/// Runs the command with the process's arguments; returns its exit status.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Runs the command with `args` (the first is the program name).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => {
            // clap prints help/version to stdout and errors to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(what) = &args.generate {
        return match generate(what, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write the {what} output: {e}");
                ExitCode::from(1)
            }
        };
    }
    Logger::install(args.log_level(), args.log_format == "json");
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            let _ = Args::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, msg)
                .print();
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Writes the man page or a completion script for the command line.
///
/// # Errors
///
/// Writing to `out` failed, or `what` is none of `man`, `bash`, `zsh`,
/// `fish`.
pub fn generate(what: &str, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut command = Args::command();
    let shell = match what {
        "man" => return clap_mangen::Man::new(command).render(out),
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("cannot generate `{other}`"),
            ))
        }
    };
    clap_complete::generate(shell, &mut command, "echo-server", out);
    Ok(())
}

enum Failure {
    Usage(&'static str),
    Runtime(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// The server the signal handlers act on, once it is built. The handlers
/// are installed before anything is bound, so that a signal during
/// start-up is a clean stop (exit 0, nothing left behind) rather than the
/// default action; one that comes before the server exists stops it as
/// soon as it does.
#[derive(Debug, Default)]
struct SignalTarget {
    server: std::sync::Mutex<Option<crate::ServerHandle>>,
    /// SIGINT/SIGTERM/SIGHUP received so far.
    stops: AtomicUsize,
}

impl SignalTarget {
    fn server(&self) -> Option<crate::ServerHandle> {
        self.server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The server is built: from now on a stop signal stops it, and one
    /// that came already does.
    fn attach(&self, handle: crate::ServerHandle) {
        *self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle.clone());
        if self.stops.load(Ordering::SeqCst) > 0 {
            handle.shutdown();
        }
    }

    /// A stop signal: the first stops the server (now, or once it is
    /// built); returns `false` for a second one, which means exit at once.
    fn stop(&self) -> bool {
        if self.stops.fetch_add(1, Ordering::SeqCst) > 0 {
            return false;
        }
        log::info!("shutting down: finishing open connections (signal again to force)");
        if let Some(handle) = self.server() {
            handle.shutdown();
        }
        true
    }

    fn install(self: &std::sync::Arc<Self>) -> std::io::Result<()> {
        let target = std::sync::Arc::clone(self);
        ctrlc::set_handler(move || {
            if !target.stop() {
                log::warn!("second signal: exiting at once");
                std::process::exit(130);
            }
        })
        .map_err(|e| std::io::Error::other(format!("cannot install signal handler: {e}")))?;
        log_stats_on_sigusr1(self);
        Ok(())
    }
}

fn serve(args: &Args) -> Result<(), Failure> {
    // Before anything is bound: see `SignalTarget`.
    let signals = std::sync::Arc::new(SignalTarget::default());
    signals.install()?;
    #[cfg(unix)]
    let inherited = crate::activation::systemd_sockets()?;
    #[cfg(not(unix))]
    let inherited: Vec<std::convert::Infallible> = Vec::new();
    if args.ports.is_empty() && args.unix.is_empty() && inherited.is_empty() {
        return Err(Failure::Usage(
            "a PORT is required, unless --unix PATH is given or systemd passes sockets",
        ));
    }
    raise_fd_limit();
    #[allow(unused_mut)]
    let mut builder = args.builder()?;
    #[cfg(unix)]
    for fd in inherited {
        builder = builder.inherited_socket(fd);
    }
    let server = builder.build()?;
    // Bound before anything is announced: a failure leaves nothing bound.
    let metrics = match args.metrics {
        Some(addr) => Some(crate::metrics::MetricsServer::start(addr, server.handle())?),
        None => None,
    };
    signals.attach(server.handle());
    for addr in server.listen_addrs() {
        // Not through the logger: this line is the start-up contract and is
        // printed even with --quiet.
        eprintln!("listening on {addr}");
    }
    let local_only = server.listen_addrs().all(|a| match a {
        crate::ListenAddr::Tcp(addr) | crate::ListenAddr::Udp(addr) => addr.ip().is_loopback(),
        _ => true,
    });
    if !args.ports.is_empty() && local_only {
        log::info!(
            "only this machine can connect; use --bind :: (IPv4 and IPv6) or \
             --bind 0.0.0.0 (IPv4) to accept remote clients"
        );
    }
    if let Some(metrics) = &metrics {
        eprintln!("metrics on http://{}/metrics", metrics.local_addr());
    }
    // Dropping `stop_reporting` (when `serve` returns) ends the reporter.
    let (stop_reporting, stopped) = std::sync::mpsc::channel::<()>();
    if let Some(every) = args.stats_interval {
        let handle = server.handle();
        // Taken before the server runs, not when the thread gets going:
        // a connection served in between would otherwise never be reported.
        let mut last = handle.stats();
        let reporter = std::thread::Builder::new()
            .name("echo-stats".to_owned())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    let now = handle.stats();
                    if now != last {
                        log::info!("stats: {now}");
                        last = now;
                    }
                }
            });
        if let Err(e) = reporter {
            log::warn!("no thread for --stats-interval: {e}");
        }
    }
    let stats = server.run()?;
    drop(stop_reporting);
    log::info!("shut down: {stats}");
    Ok(())
}

/// SIGUSR1 logs the counters and changes nothing else (xinetd's
/// convention). The signal handler only wakes a thread, which logs.
#[cfg(unix)]
fn log_stats_on_sigusr1(target: &std::sync::Arc<SignalTarget>) {
    let signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1]);
    let target = std::sync::Arc::clone(target);
    let started = signals.and_then(|mut signals| {
        std::thread::Builder::new()
            .name("echo-sigusr1".to_owned())
            .spawn(move || {
                for _ in signals.forever() {
                    // Before the server exists there is nothing to log.
                    if let Some(handle) = target.server() {
                        log::info!("stats: {}", handle.stats());
                    }
                }
            })
    });
    if let Err(e) = started {
        log::warn!("SIGUSR1 will not log the counters: {e}");
    }
}

#[cfg(not(unix))]
fn log_stats_on_sigusr1(_: &std::sync::Arc<SignalTarget>) {}

/// Thread-per-connection needs one descriptor per client: lift the soft
/// `RLIMIT_NOFILE` (often 1024) to the hard limit, as most servers do.
#[cfg(unix)]
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                log::debug!("could not raise the file descriptor limit");
            }
        }
    }
}

#[cfg(not(unix))]
fn raise_fd_limit() {}

/// Plain lines on stderr: messages at info level as they are, others prefixed
/// with their level. Each line is written whole, so lines from connection
/// threads never interleave.
#[derive(Debug)]
struct Logger {
    json: bool,
}

impl Logger {
    fn install(level: log::LevelFilter, json: bool) {
        static TEXT: Logger = Logger { json: false };
        static JSON: Logger = Logger { json: true };
        // Fails only if a logger is already set (tests calling `run` twice).
        if log::set_logger(if json { &JSON } else { &TEXT }).is_ok() {
            log::set_max_level(level);
        }
    }
}

/// One JSON object per line, for log shippers: time (UTC, RFC 3339), level,
/// message.
fn json_line(
    level: log::Level,
    message: &str,
    fields: &[(String, String)],
    now: std::time::SystemTime,
) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let (days, ms_of_day) = ((secs / 86_400_000) as i64, secs % 86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, sec, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    let escape = |text: &str| {
        let mut escaped = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                '"' => escaped.push_str("\\\""),
                '\\' => escaped.push_str("\\\\"),
                '\n' => escaped.push_str("\\n"),
                c if (c as u32) < 0x20 => escaped.push_str(&format!("\\u{:04x}", c as u32)),
                c => escaped.push(c),
            }
        }
        escaped
    };
    let mut line = format!(
        "{{\"time\":\"{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{ms:03}Z\",\
         \"level\":\"{}\",\"message\":\"{}\"",
        level.as_str().to_lowercase(),
        escape(message)
    );
    for (key, value) in fields {
        line.push_str(&format!(",\"{}\":\"{}\"", escape(key), escape(value)));
    }
    line.push_str("}\n");
    line
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match record.level() {
            _ if self.json => {
                /// Collects a record's fields (peer, bytes, reason) as text.
                struct Fields(Vec<(String, String)>);
                impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
                    fn visit_pair(
                        &mut self,
                        key: log::kv::Key<'kvs>,
                        value: log::kv::Value<'kvs>,
                    ) -> Result<(), log::kv::Error> {
                        self.0.push((key.to_string(), value.to_string()));
                        Ok(())
                    }
                }
                let mut fields = Fields(Vec::new());
                let _ = record.key_values().visit(&mut fields);
                json_line(
                    record.level(),
                    &record.args().to_string(),
                    &fields.0,
                    std::time::SystemTime::now(),
                )
            }
            log::Level::Info => format!("{}\n", record.args()),
            level => format!("{}: {}\n", level.as_str().to_lowercase(), record.args()),
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop signal before the server exists stops it as soon as it is
    /// attached; one after stops it at once; a second asks to exit.
    #[test]
    fn a_stop_signal_reaches_the_server_whenever_it_comes() {
        let built = || Server::builder().tcp(([127, 0, 0, 1], 0)).build().unwrap();
        let early = SignalTarget::default();
        assert!(early.stop(), "the first signal stops");
        let server = built();
        early.attach(server.handle());
        assert!(server.handle().is_shutdown(), "a signal before start-up");
        assert!(!early.stop(), "a second signal exits");
        let late = SignalTarget::default();
        let server = built();
        late.attach(server.handle());
        assert!(!server.handle().is_shutdown());
        assert!(late.stop());
        assert!(server.handle().is_shutdown(), "a signal while serving");
    }

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

    /// The man page documents every option, and each completion script
    /// knows each of them.
    #[test]
    fn man_page_and_completions_cover_every_option() {
        let longs: Vec<String> = Args::command()
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        assert!(longs.len() > 25, "{longs:?}");
        for what in ["man", "bash", "zsh", "fish"] {
            let mut out = Vec::new();
            generate(what, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            for long in &longs {
                // roff escapes every dash of an option in the man page.
                let found = text.contains(&format!("--{long}"))
                    || text.contains(&format!("\\-\\-{}", long.replace('-', "\\-")))
                    || (what == "fish" && text.contains(&format!("-l {long}")));
                assert!(found, "{what} output lacks --{long}");
            }
        }
        assert!(generate("powershell-2", &mut Vec::new()).is_err());
    }

    #[test]
    fn json_log_lines() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_764_627_000_123);
        assert_eq!(
            json_line(log::Level::Warn, "a \"quoted\" \\ line\n\x01", &[], t),
            "{\"time\":\"2025-12-01T22:10:00.123Z\",\"level\":\"warn\",\
             \"message\":\"a \\\"quoted\\\" \\\\ line\\n\\u0001\"}\n"
        );
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(json_line(log::Level::Info, "x", &[], leap).contains("2000-02-29T00:00:00.000Z"));
        let fields = [
            ("peer".to_owned(), "127.0.0.1:5".to_owned()),
            ("bytes".to_owned(), "3".to_owned()),
        ];
        assert!(json_line(log::Level::Debug, "m", &fields, t)
            .ends_with(",\"peer\":\"127.0.0.1:5\",\"bytes\":\"3\"}\n"));
    }

    /// The timestamp of every day of a whole 400-year Gregorian cycle
    /// (1970-2369: leap years, 2100 which is not, 2000 which is), checked
    /// against a calendar that counts days one by one.
    #[test]
    fn json_time_matches_a_day_by_day_calendar() {
        let leap =
            |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let (mut year, mut month, mut day) = (1970u64, 1u64, 1u64);
        for days in 0..146_097u64 {
            // A different time of day each day, both ends of it included.
            let ms_of_day = match days % 3 {
                0 => 0,
                1 => 86_399_999,
                _ => days * 7_919_993 % 86_400_000,
            };
            let t = std::time::UNIX_EPOCH + Duration::from_millis(days * 86_400_000 + ms_of_day);
            let want = format!(
                "{{\"time\":\"{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z\"",
                ms_of_day / 3_600_000,
                ms_of_day / 60_000 % 60,
                ms_of_day / 1000 % 60,
                ms_of_day % 1000
            );
            let line = json_line(log::Level::Info, "", &[], t);
            assert!(line.starts_with(&want), "day {days}: {line} is not {want}");
            let month_len = match month {
                2 if leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > month_len {
                (day, month) = (1, month + 1);
                if month > 12 {
                    (month, year) = (1, year + 1);
                }
            }
        }
        // Before 1970 (a clock set wrong) is logged as the epoch.
        let before = std::time::UNIX_EPOCH - Duration::from_secs(1);
        assert!(json_line(log::Level::Info, "", &[], before).contains("1970-01-01T00:00:00.000Z"));
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
    fn byte_counts() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("1m"), Ok(1 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("3kb"), Ok(3 << 10));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("K").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999G").is_err());
    }

    #[test]
    fn port_is_optional_with_unix() {
        let a = parse(&["--unix", "/tmp/x.sock"]).unwrap();
        assert!(a.ports.is_empty());
        assert_eq!(a.unix, [PathBuf::from("/tmp/x.sock")]);
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("1e300").is_err());
        assert!(parse_secs("").is_err());
    }
}
