//! Command-line parsing. The input is split on NUL bytes into arguments.
//! Properties: parsing never panics, and whatever parses renders back to a
//! canonical command line that parses to the same options (the server's,
//! or the `probe` command's).
#![no_main]

use clap::{Parser, ValueEnum};
use echo_server::cli::{Args, Command, ProbeArgs};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

/// The canonical command line for `args`: every option spelled out as
/// `--name=value` (so no value can pass for an option), PORT after `--`.
fn render(args: &Args) -> Vec<String> {
    if let Some(Command::Probe(probe)) = &args.command {
        return render_probe(probe);
    }
    let mut line = vec![
        "echo-server".to_owned(),
        format!("--max-connections={}", args.max_connections),
        format!("--udp-rate={}", args.udp_rate),
        format!("--udp-burst={}", args.udp_burst),
        format!("--udp-prefix={},{}", args.udp_prefix.v4, args.udp_prefix.v6),
        format!("--udp-total-rate={}", args.udp_total_rate),
        format!("--udp-total-burst={}", args.udp_total_burst),
        format!("--udp-max-datagram={}", args.udp_max_datagram),
        format!("--engine={}", args.engine),
        format!("--thread-connections={}", args.thread_connections),
        format!("--udp-buffer={}", args.udp_buffer),
        format!("--reclaim-idle={}", secs_or_off(args.reclaim_idle)),
        format!("--keepalive={}", secs_or_off(args.keepalive)),
        format!("--backlog={}", args.backlog),
        format!("--shutdown-grace={}", args.shutdown_grace.as_secs_f64()),
        format!(
            "--log-format={}",
            args.log_format
                .to_possible_value()
                .expect("no format is hidden")
                .get_name()
        ),
    ];
    if let Some(n) = args.udp_threads {
        line.push(format!("--udp-threads={n}"));
    }
    if let Some(n) = args.event_loops {
        line.push(format!("--event-loops={n}"));
    }
    if let Some(n) = args.max_threads {
        line.push(format!("--max-threads={n}"));
    }
    if args.no_write_timeout {
        line.push("--no-write-timeout".to_owned());
    } else {
        line.push(format!(
            "--write-timeout={}",
            args.write_timeout.as_secs_f64()
        ));
    }
    if let Some(t) = args.idle_timeout {
        line.push(format!("--idle-timeout={}", t.as_secs_f64()));
    }
    if let Some(n) = args.max_per_source {
        line.push(format!("--max-per-source={n}"));
    }
    for path in &args.unix {
        line.push(format!(
            "--unix={}",
            path.to_str().expect("parsed from UTF-8")
        ));
    }
    if let Some(mode) = args.unix_mode {
        line.push(format!("--unix-mode={mode:o}"));
    }
    for (on, flag) in [
        (args.udp, "--udp"),
        (args.log_data, "--log-data"),
        (args.udp_allow_any_source, "--udp-allow-any-source"),
        (args.splice, "--splice"),
        (args.no_splice, "--no-splice"),
        (args.quiet, "--quiet"),
    ] {
        if on {
            line.push(flag.to_owned());
        }
    }
    // The impairments, each value as its parser reads it back exactly.
    if let Some((min, max)) = args.chunk {
        line.push(format!("--chunk={min}-{max}"));
    }
    if let Some((min, max)) = args.delay {
        line.push(format!("--delay={}-{}", min.as_millis(), max.as_millis()));
    }
    if let Some(rate) = args.rate {
        line.push(format!("--rate={rate}"));
    }
    if let Some((min, max)) = args.reset_after {
        line.push(format!("--reset-after={min}-{max}"));
    }
    if let Some(n) = args.close_after {
        line.push(format!("--close-after={n}"));
    }
    if let Some(n) = args.stall_after {
        line.push(format!("--stall-after={n}"));
    }
    for (name, p) in [
        ("drop", args.drop),
        ("duplicate", args.duplicate),
        ("reorder", args.reorder),
    ] {
        if let Some(p) = p {
            // f64's Display is the shortest text that parses back to it.
            line.push(format!("--{name}={p}"));
        }
    }
    line.extend(
        args.impair_port
            .iter()
            .map(|p| format!("--impair-port={p}")),
    );
    if let Some(seed) = args.seed {
        line.push(format!("--seed={seed}"));
    }
    line.extend((0..args.verbose).map(|_| "--verbose".to_owned()));
    line.extend(args.bind.iter().map(|b| format!("--bind={b}")));
    if !args.ports.is_empty() {
        line.push("--".to_owned());
        line.extend(args.ports.iter().map(u16::to_string));
    }
    line
}

/// The canonical `probe` command line: options as `--name=value`, the
/// target after `--`.
fn render_probe(probe: &ProbeArgs) -> Vec<String> {
    let mut line = vec![
        "echo-server".to_owned(),
        "probe".to_owned(),
        format!("--size={}", probe.size),
        format!("--timeout={}", probe.timeout.as_secs_f64()),
    ];
    if probe.udp {
        line.push("--udp".to_owned());
    }
    if let Some(path) = &probe.unix {
        line.push(format!(
            "--unix={}",
            path.to_str().expect("parsed from UTF-8")
        ));
    }
    if probe.tls {
        line.push("--tls".to_owned());
    }
    for (name, path) in [
        ("ca", &probe.ca),
        ("cert", &probe.cert),
        ("key", &probe.key),
    ] {
        if let Some(path) = path {
            line.push(format!(
                "--{name}={}",
                path.to_str().expect("parsed from UTF-8")
            ));
        }
    }
    if let Some(name) = &probe.server_name {
        line.push(format!("--server-name={name}"));
    }
    if let Some(target) = &probe.target {
        line.push("--".to_owned());
        line.push(target.to_string());
    }
    line
}

/// `off` for zero (how the options spell it), else seconds.
fn secs_or_off(d: Duration) -> String {
    if d.is_zero() {
        "off".to_owned()
    } else {
        d.as_secs_f64().to_string()
    }
}

/// Seconds go through decimal text: allow the last nanosecond to differ.
fn close(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= Duration::from_nanos(1)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let argv = std::iter::once("echo-server").chain(text.split('\0'));
    let Ok(args) = Args::try_parse_from(argv) else {
        return;
    };
    let canonical = render(&args);
    let again = Args::try_parse_from(&canonical)
        .unwrap_or_else(|e| panic!("canonical form {canonical:?} does not parse: {e}"));
    match (&again.command, &args.command) {
        (Some(Command::Probe(a)), Some(Command::Probe(b))) => {
            assert_eq!(
                (&a.target, a.udp, &a.unix, a.size),
                (&b.target, b.udp, &b.unix, b.size)
            );
            assert!(close(a.timeout, b.timeout));
        }
        (a, b) => assert_eq!(a, b),
    }
    assert_eq!(again.ports, args.ports);
    assert_eq!(
        (again.chunk, again.delay, again.rate, again.reset_after),
        (args.chunk, args.delay, args.rate, args.reset_after)
    );
    assert_eq!(
        (
            again.close_after,
            again.stall_after,
            &again.impair_port,
            again.seed
        ),
        (
            args.close_after,
            args.stall_after,
            &args.impair_port,
            args.seed
        )
    );
    assert_eq!(
        (again.drop, again.duplicate, again.reorder),
        (args.drop, args.duplicate, args.reorder)
    );
    assert_eq!(again.bind, args.bind);
    assert_eq!(again.udp, args.udp);
    assert_eq!((&again.unix, again.unix_mode), (&args.unix, args.unix_mode));
    assert_eq!(again.backlog, args.backlog);
    assert!(close(again.shutdown_grace, args.shutdown_grace));
    assert_eq!(again.max_connections, args.max_connections);
    assert_eq!(again.max_per_source, args.max_per_source);
    assert_eq!(
        (again.udp_threads, again.udp_buffer),
        (args.udp_threads, args.udp_buffer)
    );
    assert!(close(again.reclaim_idle, args.reclaim_idle));
    assert!(close(again.keepalive, args.keepalive));
    assert_eq!(
        (
            again.engine,
            again.thread_connections,
            again.event_loops,
            again.max_threads
        ),
        (
            args.engine,
            args.thread_connections,
            args.event_loops,
            args.max_threads
        )
    );
    assert_eq!(again.no_write_timeout, args.no_write_timeout);
    assert!(close(again.write_timeout, args.write_timeout));
    match (again.idle_timeout, args.idle_timeout) {
        (Some(a), Some(b)) => assert!(close(a, b), "{a:?} vs {b:?}"),
        (a, b) => assert_eq!(a, b),
    }
    assert_eq!(again.log_data, args.log_data);
    assert_eq!(again.udp_allow_any_source, args.udp_allow_any_source);
    assert_eq!(
        (again.udp_rate, again.udp_burst, again.udp_max_datagram),
        (args.udp_rate, args.udp_burst, args.udp_max_datagram)
    );
    assert_eq!(
        (
            again.udp_prefix,
            again.udp_total_rate,
            again.udp_total_burst
        ),
        (args.udp_prefix, args.udp_total_rate, args.udp_total_burst)
    );
    assert_eq!(
        (again.splice, again.no_splice),
        (args.splice, args.no_splice)
    );
    assert_eq!((again.verbose, again.quiet), (args.verbose, args.quiet));
    assert_eq!(again.log_format, args.log_format);
});
