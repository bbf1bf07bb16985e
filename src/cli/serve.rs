//! Start-up and serving: the order in which the command binds, announces,
//! reports and stops.

use super::signals::SignalTarget;
use super::{Args, Failure};
use crate::address::ListenAddr;
use std::sync::Arc;

pub(super) fn serve(args: &Args) -> Result<(), Failure> {
    if let Some(message) = port_given_twice(args) {
        return Err(Failure::Usage(message.into()));
    }
    if !args.tls.is_empty() {
        if !cfg!(feature = "tls") {
            return Err(Failure::Usage(std::borrow::Cow::Borrowed(
                "--tls: this echo-server was built without TLS (the `tls` feature)",
            )));
        }
        if args.tls_cert.is_none() || args.tls_key.is_none() {
            return Err(Failure::Usage(std::borrow::Cow::Borrowed(
                "--tls needs --tls-cert FILE and --tls-key FILE",
            )));
        }
    }
    // Before anything is bound: see `SignalTarget`. With TLS listeners,
    // SIGHUP re-reads their certificates instead of stopping.
    let signals = Arc::new(SignalTarget::default());
    signals.install(!args.tls.is_empty())?;
    #[cfg(unix)]
    let inherited = crate::activation::systemd_sockets()?;
    #[cfg(not(unix))]
    let inherited: Vec<std::convert::Infallible> = Vec::new();
    if args.ports.is_empty() && args.tls.is_empty() && args.unix.is_empty() && inherited.is_empty()
    {
        return Err(Failure::Usage(std::borrow::Cow::Borrowed(
            "a PORT is required, unless --tls PORT or --unix PATH is given or systemd passes \
             sockets",
        )));
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
        ListenAddr::Tcp(addr) | ListenAddr::Udp(addr) | ListenAddr::Tls(addr) => {
            addr.ip().is_loopback()
        }
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

/// Thread-per-connection needs one descriptor per client: lift the soft
/// `RLIMIT_NOFILE` (often 1024) to the hard limit, as most servers do.
#[cfg(unix)]
fn raise_fd_limit() {
    use crate::sys::rlimit::{self, Limits, Resource};
    if let Ok(lim) = rlimit::get(Resource::OpenFiles) {
        if lim.soft < lim.hard {
            let wanted = Limits {
                soft: lim.hard,
                hard: lim.hard,
            };
            if rlimit::set(Resource::OpenFiles, wanted).is_err() {
                log::debug!("could not raise the file descriptor limit");
            }
        }
    }
}

#[cfg(not(unix))]
fn raise_fd_limit() {}

/// A port given twice, as a PORT or with `--tls` (or both), would be bound
/// twice and fail with the OS's "address in use" as if another program
/// held it: a usage error instead, naming the port. Port 0 (a free port,
/// chosen for each) may come any number of times.
fn port_given_twice(args: &Args) -> Option<String> {
    let given = args
        .ports
        .iter()
        .map(|&p| (p, "PORT"))
        .chain(args.tls.iter().map(|&p| (p, "--tls")));
    let mut seen: Vec<(u16, &str)> = Vec::new();
    for (port, how) in given.filter(|&(p, _)| p != 0) {
        if let Some(&(_, first)) = seen.iter().find(|&&(p, _)| p == port) {
            return Some(if first == how {
                format!("port {port} is given twice ({how})")
            } else {
                format!("port {port} is given both as {first} and with {how}: one port serves either plain TCP or TLS")
            });
        }
        seen.push((port, how));
    }
    None
}
