//! `echo-bench`: a load generator for TCP and UDP echo servers (RFC 862)
//! that checks every byte it gets back.
//!
//! Modes: `pingpong` (round-trip latency), `bulk` (throughput), `connrate`
//! (connections per second), `hold` (many idle connections), `udp`
//! (datagrams answered per second, latency and loss) and `soak` (a bounded
//! mix of all of them, for leak hunting). It only ever talks to `--addr`
//! (and, in `soak`, `--udp-addr`), and every run ends by itself: after
//! `--duration`, plus at most 10 s to drain or give up on a stalled server.
//!
//! Exit status: 0 on success; 1 if an echoed byte was wrong (over UDP: a
//! reply of the wrong size, corrupted, duplicated or for another socket),
//! nothing could be measured (e.g. connection refused) or, in `soak`, any
//! error at all; 2 on a usage error. Lost datagrams are counted and
//! reported, not an error by themselves (except in `soak`).
//!
//! This file only parses arguments and dispatches; see `modes` for the
//! event loops, `conn` for the per-connection checks, `report` for output.

mod conn;
mod datagram;
mod limits;
mod mmsg;
mod modes;
mod pattern;
mod progress;
mod report;
mod tls;

use clap::Parser;
use modes::{Config, Mode};
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Longest accepted --duration (a week): keeps deadline arithmetic far
/// from overflow, and no benchmark needs more.
const MAX_DURATION_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// Bounds of the soak's load options: far above what one client thread
/// can drive, low enough that slots and descriptors stay modest.
const MAX_SOAK_CHURN: i64 = 10_000;
const MAX_SOAK_CHURN_RATE: i64 = 1_000_000;
const MAX_SOAK_BULK: i64 = 64;
const MAX_SOAK_BULK_RATE: u64 = 4 << 30;

#[derive(Debug, Parser)]
#[command(
    name = "echo-bench",
    version,
    about = "Load generator for TCP and UDP echo servers; verifies every echoed byte.",
    after_help = "Every run ends by itself: after --duration, plus at most 10 s to drain \
        in-flight echoes or give up on a stalled server.\n\
        Exit status: 0 ok, 1 wrong bytes echoed (udp: a reply of the wrong size, corrupted, \
        duplicated or for another socket) or nothing measured (soak: or any error), 2 usage \
        error. Lost datagrams are reported, not an error (soak: they are).\n\
        soak runs, on one thread: up to --churn churning connections (plain close, reset, \
        half-close, vanish; at most --churn-rate new a second; default 48 and 200), \
        --bulk-streams bulk streams of 4 MiB at --bulk-rate each (default 2 at 16 MiB/s), \
        100 idle connections held throughout, and with --udp-addr 4 UDP sockets at up to \
        40 datagrams/s each. A vanishing client holds its connection 20-200 ms, so a high \
        --churn-rate needs --churn of about rate/20 or more."
)]
struct Cli {
    /// What to measure.
    #[arg(value_enum, value_name = "MODE")]
    mode: Mode,

    /// Server address, e.g. 127.0.0.1:7007 or [::1]:7007.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7007")]
    addr: SocketAddr,

    /// Connections (pingpong, bulk, hold).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    connections: u32,

    /// Message size in bytes (pingpong), or datagram size (udp: 16 to
    /// 65507; the first 16 bytes are a header).
    #[arg(long, value_name = "BYTES", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    size: u64,

    /// Bytes to stream per connection (bulk).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    bytes: u64,

    /// Parallel connect/echo/close loops (connrate).
    #[arg(long, value_name = "P", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    parallel: u32,

    /// How long to run, in seconds (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    duration: Duration,

    /// UDP sockets, each on its own port, connected to --addr (udp).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    sockets: u32,

    /// Datagrams kept in flight per socket (udp).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    inflight: u32,

    /// Send each datagram on its own (sendmmsg) instead of a socket's
    /// in-flight datagrams as one UDP_SEGMENT (GSO) buffer, the default
    /// where the kernel has it (udp). With GSO, a server that enables
    /// UDP_GRO receives them merged; without, one by one.
    #[arg(long)]
    no_gso: bool,

    /// A datagram not answered within this many milliseconds counts as
    /// lost and is replaced by a new one (udp).
    #[arg(long, value_name = "MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..=5000))]
    loss_timeout_ms: u64,

    /// Event-loop threads; connections (or UDP sockets) are split across them.
    #[arg(long, value_name = "T", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,

    /// Spread connections over N loopback source addresses: connection i
    /// binds to 127.0.0.(1 + i % N) before connecting (Linux; needs an IPv4
    /// loopback --addr). One source address has only ~28,000 ephemeral
    /// ports for one server port; 1 lets the kernel choose.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=modes::MAX_SOURCES as i64))]
    sources: u32,

    /// hold: end the idle phase when stdin has a line or is closed (but at
    /// most --duration after the start), so a script can measure the server
    /// for as long as it needs while every connection is open.
    #[arg(long)]
    idle_until_stdin: bool,

    /// The server's UDP address, to add datagrams to the mix (soak).
    #[arg(long, value_name = "ADDR")]
    udp_addr: Option<SocketAddr>,

    /// Churning connections open at once, at most (soak) [default: 48]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_SOAK_CHURN))]
    churn: Option<u32>,

    /// New churning connections a second, at most (soak) [default: 200]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_SOAK_CHURN_RATE))]
    churn_rate: Option<u32>,

    /// Concurrent bulk streams, 4 MiB each (soak) [default: 2]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_SOAK_BULK))]
    bulk_streams: Option<u32>,

    /// Write rate of each bulk stream, bytes a second (soak) [default:
    /// 16777216, 16 MiB/s]
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..=MAX_SOAK_BULK_RATE))]
    bulk_rate: Option<u64>,

    /// Speak TLS, trusting the server certificates this PEM file's CA
    /// certificates sign (pingpong, connrate). Every connection makes a full
    /// handshake (no resumption).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,

    /// The name the server's certificate must carry (with --tls-ca).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "localhost",
        requires = "tls_ca"
    )]
    tls_name: String,

    /// Print one line of JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The soak's load: the defaults, with what the options override.
fn soak_load(cli: &Cli) -> modes::soak::Load {
    let d = modes::soak::Load::default();
    modes::soak::Load {
        churn: cli.churn.map_or(d.churn, |n| n as usize),
        churn_rate: cli.churn_rate.unwrap_or(d.churn_rate),
        bulk: cli.bulk_streams.map_or(d.bulk, |n| n as usize),
        bulk_rate: cli.bulk_rate.unwrap_or(d.bulk_rate),
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    if !(0.0..=MAX_DURATION_SECS).contains(&secs) {
        return Err(format!("must be between 0 and {MAX_DURATION_SECS} seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.sources > 1 && !matches!(cli.addr, SocketAddr::V4(a) if a.ip().is_loopback()) {
        use clap::CommandFactory as _;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--sources above 1 needs an IPv4 loopback --addr (127.x.x.x)",
            )
            .exit();
    }
    if cli.udp_addr.is_some() && cli.mode != Mode::Soak {
        use clap::CommandFactory as _;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--udp-addr is for soak only (udp mode takes the server's address as --addr)",
            )
            .exit();
    }
    let load_options = [
        cli.churn.map(|_| "--churn"),
        cli.churn_rate.map(|_| "--churn-rate"),
        cli.bulk_streams.map(|_| "--bulk-streams"),
        cli.bulk_rate.map(|_| "--bulk-rate"),
    ];
    if let Some(name) = load_options.iter().flatten().next() {
        if cli.mode != Mode::Soak {
            use clap::CommandFactory as _;
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("{name} is for soak only"),
                )
                .exit();
        }
    }
    if cli.tls_ca.is_some() && !matches!(cli.mode, Mode::Pingpong | Mode::Connrate) {
        use clap::CommandFactory as _;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--tls-ca is for pingpong and connrate only",
            )
            .exit();
    }
    if let Some(ca) = &cli.tls_ca {
        if let Err(e) = tls::enable(ca, &cli.tls_name) {
            eprintln!("echo-bench: {e}");
            return ExitCode::from(2);
        }
    }
    if cli.mode == Mode::Udp && !(datagram::MIN_SIZE..=datagram::MAX_SIZE).contains(&cli.size) {
        use clap::CommandFactory as _;
        Cli::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "udp needs --size between {} and {} bytes (a datagram's header is {} bytes)",
                    datagram::MIN_SIZE,
                    datagram::MAX_SIZE,
                    datagram::HEADER
                ),
            )
            .exit();
    }
    let cfg = Config {
        mode: cli.mode,
        addr: cli.addr,
        connections: cli.connections as usize,
        size: cli.size,
        bytes: cli.bytes,
        parallel: cli.parallel as usize,
        duration: cli.duration,
        threads: cli.threads as usize,
        sources: cli.sources as usize,
        idle_until_stdin: cli.idle_until_stdin,
        sockets: cli.sockets as usize,
        inflight: cli.inflight as usize,
        gso: !cli.no_gso,
        loss_timeout: Duration::from_millis(cli.loss_timeout_ms),
        udp_addr: cli.udp_addr,
        soak: soak_load(&cli),
    };
    if cfg.mode == Mode::Soak && cfg.soak.churn < cfg.soak.churn_needed() {
        eprintln!(
            "echo-bench: warning: --churn {} may be too few for --churn-rate {} \
             (vanishing clients hold theirs 20-200 ms; about {} would keep up)",
            cfg.soak.churn,
            cfg.soak.churn_rate,
            cfg.soak.churn_needed()
        );
    }
    limits::ensure_descriptors(cfg.units());

    let summary = modes::run(&cfg);

    let text = if cli.json {
        report::json(&cfg, &summary) + "\n"
    } else {
        report::table(&cfg, &summary)
    };
    // A closed stdout must not turn into a panic; the exit status still tells.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if let Some(first) = &summary.tally.first {
        eprintln!(
            "echo-bench: {} error(s), the first: {first}",
            summary.tally.errors
        );
    }
    if cfg.mode == Mode::Udp && summary.udp.lost > 0 {
        let u = &summary.udp;
        eprintln!(
            "echo-bench: udp: {} of {} datagrams LOST ({:.3}%; not answered within {} ms{})",
            u.lost,
            u.sent,
            100.0 * u.lost as f64 / u.sent.max(1) as f64,
            cli.loss_timeout_ms,
            match u.client_drops {
                Some(d) => format!("; {d} dropped at the client's receive buffers"),
                None => String::new(),
            }
        );
    }
    let measured = summary.measured(cfg.mode);
    if !measured {
        eprintln!("echo-bench: nothing was measured");
    }
    // A soak is about things going wrong over time: any error fails it.
    let soak_failed = cfg.mode == Mode::Soak && summary.tally.errors > 0;
    if summary.tally.verify_errors > 0 || !measured || soak_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
