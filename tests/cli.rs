//! The `echo-server` binary, run as a user would: exit statuses, messages,
//! the start-up line, signals, and each option end to end.

#![cfg(unix)] // drives the binary with POSIX signals

mod support;

use echo_server::Engine;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::time::Duration;
use support::*;

fn prints_the_listening_line_echoes_and_exits_0_on_sigterm(engine: Engine) {
    let mut server = Binary::spawn(&on_engine(engine, &["0"]));
    let addr = server.tcp_addr();
    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_ne!(addr.port(), 0);
    assert_eq!(
        round_trip(connect(addr), b"hi there\n".to_vec()),
        b"hi there\n"
    );
    // The loopback default tells the user how to accept remote clients.
    server.expect_line("remote hint", |l| l.contains("--bind ::"));
    server.stop();
    let listening = server
        .seen
        .iter()
        .filter(|l| l.starts_with("listening on "))
        .count();
    assert_eq!(
        listening, 1,
        "exactly one listening line: {:#?}",
        server.seen
    );
    // The summary counts what happened.
    assert!(
        server
            .seen
            .iter()
            .any(|l| l.contains("1 connections accepted, 1 closed")
                && l.contains("9 bytes received, 9 echoed")),
        "{:#?}",
        server.seen
    );
}

fn sigint_with_idle_clients_exits_0_promptly(engine: Engine) {
    let mut server = Binary::spawn(&on_engine(engine, &["0"]));
    let addr = server.tcp_addr();
    let mut idle: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    let mut talking = connect(addr);
    talking.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut talking, 1), b"x");
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit().code(), Some(0));
    for c in &mut idle {
        assert!(is_closed(c, DEADLINE));
    }
}

/// A signal can land on any thread; one that lands on an event loop or a
/// UDP receive thread interrupts its wait, which is no error: SIGUSR1 logs
/// the counters and the server says nothing else, even at -v, then stops
/// as asked.
#[cfg(target_os = "linux")]
#[test]
fn a_signal_that_interrupts_a_wait_is_not_an_error() {
    let mut server = Binary::spawn(&on_engine(Engine::Events, &["--udp", "-v", "0"]));
    let _ = server.tcp_addr();
    let pid = server.child.id() as libc::pid_t;
    let threads_named = |name: &str| -> Vec<libc::pid_t> {
        threads_of(&pid.to_string())
            .into_iter()
            .filter(|(_, n)| n == name)
            .filter_map(|(dir, _)| dir.file_name()?.to_str()?.parse().ok())
            .collect()
    };
    // A new thread takes its name a moment after it starts.
    wait_for("an event loop and a UDP thread", || {
        !threads_named("echo-events").is_empty() && !threads_named("echo-udp").is_empty()
    });
    for name in ["echo-events", "echo-udp"] {
        let tid = threads_named(name)[0];
        // SAFETY: tgkill(2) with our child's pid, one of its threads and a
        // valid signal number.
        let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) };
        assert_eq!(sent, 0);
        server.expect_line("the counters", |l| l.starts_with("stats: "));
    }
    server.stop();
    assert!(
        !server.logged("poll failed") && !server.logged(": recv: "),
        "{:#?}",
        server.seen
    );
}

#[test]
fn ipv6_and_dual_stack_from_the_command_line() {
    let mut v6 = Binary::spawn(&["--bind", "::1", "0"]);
    let addr = v6.tcp_addr();
    assert!(addr.is_ipv6());
    assert_eq!(round_trip(connect(addr), b"v6".to_vec()), b"v6");

    let mut dual = Binary::spawn(&["--bind", "::", "0"]);
    let addr = dual.tcp_addr();
    assert_eq!(addr.ip(), "::".parse::<std::net::IpAddr>().unwrap());
    let v4: SocketAddr = ([127, 0, 0, 1], addr.port()).into();
    assert_eq!(round_trip(connect(v4), b"v4".to_vec()), b"v4");
    // Not loopback-only: no hint about --bind.
    dual.stop();
    assert!(!dual.logged("--bind"), "{:#?}", dual.seen);
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    for (args, expected) in [
        (&["abc"][..], "invalid value 'abc'"),
        (&["70000"], "70000 is not in 0..=65535"),
        (&[], "a PORT is required"),
        (&["--frobnicate", "7"], "--frobnicate"),
        (
            &["--bind", "no such host", "7"],
            "neither an IP address nor a host name",
        ),
        (&["--max-connections", "0", "7"], "at least 1"),
        (&["--idle-timeout", "soon", "7"], "not a number of seconds"),
        // Not "address in use", as if another program held the port.
        (&["7", "7"], "port 7 is given twice"),
        (
            &["--tls", "7", "--tls", "7"],
            "port 7 is given twice (--tls)",
        ),
        (
            &["7", "--tls", "7"],
            "port 7 is given both as PORT and with --tls",
        ),
    ] {
        let (status, stderr) = run_binary(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn help_explains_every_option_and_exits_0() {
    let out = Binary::command().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "PORT",
        "--bind",
        "--max-connections",
        "--idle-timeout",
        "--log-data",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
    assert!(help.contains("[default: 127.0.0.1]"), "{help}");
    assert!(help.contains("[default: 4096]"), "{help}");
}

#[test]
fn an_unresolvable_host_name_exits_1_naming_it() {
    let (status, stderr) = run_binary(&["--bind", "no-such-host.invalid", "7"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot resolve --bind no-such-host.invalid"),
        "{stderr}"
    );
}

#[test]
fn port_in_use_exits_1_naming_address_and_reason() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (status, stderr) = run_binary(&[&port]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("tcp 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("in use"), "{stderr}");
}

/// Every address of every `--bind` (host names resolved) on every PORT, one
/// `listening on` line each, each echoing.
#[test]
fn several_binds_ports_and_host_names_are_all_served() {
    let mut server = Binary::spawn(&["--bind", "localhost", "--bind", "127.0.0.1", "0", "0"]);
    let first = server.tcp_addr();
    // Resolving localhost gives 127.0.0.1 and, where configured, ::1; the
    // repeated 127.0.0.1 is served once. Two ports each.
    let mut addrs = vec![first];
    let more = server.expect_line("the second listener", |l| {
        l.starts_with("listening on tcp ")
    });
    addrs.push(more["listening on tcp ".len()..].parse().unwrap());
    server.stop();
    let listening: Vec<SocketAddr> = server
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("listening on tcp "))
        .map(|a| a.parse().unwrap())
        .collect();
    let v4 = listening
        .iter()
        .filter(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST)
        .count();
    assert_eq!(v4, 2, "127.0.0.1 on two ports, once each: {listening:?}");
    assert!(
        listening.iter().all(|a| a.ip().is_loopback()),
        "{listening:?}"
    );
    assert_eq!(
        listening.len() % 2,
        0,
        "every address on both ports: {listening:?}"
    );

    // Echo on each, with a fresh server (the first one is gone).
    let mut server = Binary::spawn(&["--bind", "127.0.0.1", "--bind", "::1", "0"]);
    let a = server.tcp_addr();
    let b = server.expect_line("the ::1 listener", |l| l.starts_with("listening on tcp "));
    let b: SocketAddr = b["listening on tcp ".len()..].parse().unwrap();
    assert!(a.is_ipv4() && b.is_ipv6(), "{a} {b}");
    for addr in [a, b] {
        assert_eq!(round_trip(connect(addr), b"both".to_vec()), b"both");
    }
}

/// One address that cannot be bound fails the start (exit 1, naming it),
/// and nothing is left bound: the other port is free again at once.
#[test]
fn one_unbindable_address_fails_the_start_and_leaves_nothing_bound() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let free_port = free.local_addr().unwrap().port();
    drop(free);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let (status, stderr) = run_binary(&[&free_port.to_string(), &taken_port.to_string()]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("tcp 127.0.0.1:{taken_port}")),
        "{stderr}"
    );
    assert!(
        TcpListener::bind(("127.0.0.1", free_port)).is_ok(),
        "the first port was left bound"
    );
}

/// SIGUSR1 logs the counters and the server keeps serving;
/// --stats-interval logs them when they changed, and only then.
#[test]
fn sigusr1_and_stats_interval_log_the_counters() {
    let mut server = Binary::spawn(&["--stats-interval", "0.2", "0"]);
    let addr = server.tcp_addr();
    assert_eq!(round_trip(connect(addr), b"abc".to_vec()), b"abc");
    server.expect_line("a periodic stats line", |l| {
        l.starts_with("stats: 1 connections accepted, 1 closed")
    });
    // Nothing changes now: no more periodic lines.
    let quiet_from = server.seen.len();
    std::thread::sleep(Duration::from_millis(800));
    server.signal(libc::SIGUSR1);
    let line = server.expect_line("the SIGUSR1 stats line", |l| l.starts_with("stats: "));
    assert!(line.contains("3 bytes received, 3 echoed"), "{line}");
    let periodic = server.seen[quiet_from..]
        .iter()
        .filter(|l| l.starts_with("stats: "))
        .count();
    assert_eq!(
        periodic, 1,
        "only the SIGUSR1 line while idle: {:#?}",
        server.seen
    );
    // Still serving.
    assert_eq!(round_trip(connect(addr), b"more".to_vec()), b"more");
    server.stop();
}

/// --log-format json: every log line is one JSON object, the listening
/// lines stay plain; --metrics serves the counters beside the echo.
#[test]
fn json_logs_and_a_metrics_endpoint_from_the_command_line() {
    let mut server = Binary::spawn(&["--log-format", "json", "--log-data", "--metrics", "0", "0"]);
    let addr = server.tcp_addr();
    let metrics = server.metrics_addr();
    assert_eq!(round_trip(connect(addr), b"json".to_vec()), b"json");
    let mut s = connect(metrics);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    std::io::Read::read_to_string(&mut s, &mut page).unwrap();
    assert!(page.contains("echo_server_bytes_echoed_total 4"), "{page}");
    server.stop();
    let logs: Vec<&String> = server
        .seen
        .iter()
        .filter(|l| !l.starts_with("listening on ") && !l.starts_with("metrics on "))
        .collect();
    assert!(!logs.is_empty());
    for line in logs {
        assert!(
            line.starts_with("{\"time\":\"")
                && line.contains("\"level\":\"")
                && line.ends_with("\"}"),
            "not a JSON log line: {line}"
        );
    }
    assert!(server.logged("\"message\":\"shut down: 1 connections"));
    // The --log-data line carries its fields for a log shipper to index.
    assert!(
        server.logged(",\"peer\":\"127.0.0.1:") && server.logged(",\"bytes\":\"4\""),
        "{:#?}",
        server.seen
    );
}

/// Collects `--log-data` lines until they add up to `len` bytes (a chunk may
/// arrive in pieces) and returns the unescaped data. Each line names the
/// client.
fn logged_data(server: &mut Binary, len: usize) -> Vec<u8> {
    let mut logged = Vec::new();
    while logged.len() < len {
        let line = server.expect_line("a logged chunk", |l| l.contains(" bytes: \""));
        assert!(line.starts_with("127.0.0.1:"), "names the client: {line}");
        let (_, quoted) = line.split_once(" bytes: \"").unwrap();
        let quoted = quoted.strip_suffix('"').unwrap();
        logged.extend(echo_server::unescape(quoted).expect("valid escapes"));
    }
    logged
}

fn log_data_escapes_control_bytes_and_invalid_utf8(engine: Engine) {
    let mut server = Binary::spawn(&on_engine(engine, &["--log-data", "0"]));
    let addr = server.tcp_addr();
    let payload = b"hi\x1b[2J\x00\xff\n".to_vec();
    assert_eq!(round_trip(connect(addr), payload.clone()), payload);
    // The chunk may arrive in pieces: unescape every logged piece and
    // check they add up to the payload.
    assert_eq!(logged_data(&mut server, payload.len()), payload);
    for line in &server.seen {
        assert!(
            line.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "raw byte in {line:?}"
        );
    }
}

fn log_data_sees_bulk_traffic_too(engine: Engine) {
    // Bulk traffic would go through splice(2), which never sees the bytes:
    // with --log-data every byte must still be logged, --splice or not.
    let mut server = Binary::spawn(&on_engine(engine, &["--splice", "--log-data", "0"]));
    let addr = server.tcp_addr();
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 256) as u8).collect();
    assert_eq!(round_trip(connect(addr), payload.clone()), payload);
    assert_eq!(logged_data(&mut server, payload.len()), payload);
    server.stop();
    // End of file is not data.
    assert!(!server.logged("sent 0 bytes"), "{:#?}", server.seen);
}

fn max_connections_from_the_command_line(engine: Engine) {
    let mut server = Binary::spawn(&on_engine(engine, &["--max-connections", "1", "0"]));
    let addr = server.tcp_addr();
    let mut first = connect(addr);
    first.write_all(b"a").unwrap();
    assert_eq!(read_n(&mut first, 1), b"a");
    let mut second = connect(addr);
    second.write_all(b"queued").unwrap();
    assert!(!is_closed(&mut second, Duration::from_millis(300)));
    first.shutdown(Shutdown::Write).unwrap();
    assert!(is_closed(&mut first, DEADLINE));
    assert_eq!(read_n(&mut second, 6), b"queued");
}

fn idle_timeout_from_the_command_line(engine: Engine) {
    let mut server = Binary::spawn(&on_engine(engine, &["--idle-timeout", "0.3", "0"]));
    let addr = server.tcp_addr();
    let mut c = connect(addr);
    c.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut c, 1), b"x");
    assert!(is_closed(&mut c, DEADLINE));
    server.stop();
    assert!(server.logged("1 idle timeouts"), "{:#?}", server.seen);
}

#[test]
fn serves_tcp_and_udp_sockets_passed_by_systemd() {
    use std::os::fd::AsRawFd;
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp_addr, udp_addr) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    let mut server = spawn_activated(&[tcp.as_raw_fd(), udp.as_raw_fd()], "");
    assert_eq!(server.tcp_addr(), tcp_addr);
    assert_eq!(server.listening("udp"), udp_addr.to_string());
    // Passed without close-on-exec (they had to survive exec), the server
    // marks them so that they cannot leak into anything it might run.
    for fd in [3, 4] {
        let info =
            std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", server.child.id())).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "fd {fd}: {info}");
    }
    // Our copies would otherwise keep the sockets alive after the server exits.
    drop((tcp, udp));
    assert_eq!(
        round_trip(connect(tcp_addr), b"activated".to_vec()),
        b"activated"
    );
    let c = udp_client(udp_addr, DEADLINE);
    assert_eq!(udp_round_trip(&c, b"dgram").as_deref(), Some(&b"dgram"[..]));
    server.stop();
}

/// LISTEN_FDS announcing descriptors that are not open is an error that
/// names the first missing one, not a server on closed descriptors.
#[test]
fn activation_with_missing_descriptors_is_refused() {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!(
        "export LISTEN_PID=$$ LISTEN_FDS=1000; exec '{}'",
        env!("CARGO_BIN_EXE_echo-server")
    ));
    let mut server = Binary::spawn_command(cmd);
    assert_eq!(server.wait_exit().code(), Some(1), "{:#?}", server.seen);
    assert!(server.logged("which is not open"), "{:#?}", server.seen);
}

#[test]
fn activation_for_another_process_is_ignored() {
    let mut cmd = Binary::command();
    cmd.env("LISTEN_PID", "1").env("LISTEN_FDS", "1");
    let mut server = Binary::spawn_command(cmd);
    // Not for us: no sockets, and no PORT either, so a usage error.
    assert_eq!(server.wait_exit().code(), Some(2), "{:#?}", server.seen);
}

engine_tests! {
    prints_the_listening_line_echoes_and_exits_0_on_sigterm,
    sigint_with_idle_clients_exits_0_promptly,
    log_data_escapes_control_bytes_and_invalid_utf8,
    log_data_sees_bulk_traffic_too,
    max_connections_from_the_command_line,
    idle_timeout_from_the_command_line,
}

/// The names of `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    threads_of(&pid.to_string())
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

/// One event loop and one UDP receive thread per core unless told
/// otherwise, and exactly as many as told.
#[test]
fn event_loops_and_udp_threads_are_one_per_core_by_default() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cases: [(&[&str], usize, usize); 2] = [
        (&["--engine", "events", "--udp", "0"], cores, cores),
        (
            &[
                "--engine",
                "events",
                "--udp",
                "--event-loops",
                "3",
                "--udp-threads",
                "5",
                "0",
            ],
            3,
            5,
        ),
    ];
    for (args, loops, receivers) in cases {
        let mut server = Binary::spawn(args);
        let udp: SocketAddr = server.listening("udp").parse().unwrap();
        // Answering means the receive threads are up; the loops started
        // before the listening line.
        let c = udp_client(udp, DEADLINE);
        assert!(udp_round_trip(&c, b"up").is_some());
        let count = |name: &str| {
            thread_names(server.child.id())
                .iter()
                .filter(|n| *n == name)
                .count()
        };
        // The first UDP socket is served by its listener's own thread.
        let want = (loops, receivers - 1, 2);
        let counts = || {
            (
                count("echo-events"),
                count("echo-udp"),
                count("echo-listen"),
            )
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while counts() != want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            counts(),
            want,
            "{args:?}: {:?}",
            thread_names(server.child.id())
        );
        server.stop();
    }
}

/// Thread-per-connection wants a descriptor per client: the server lifts
/// its soft descriptor limit to the hard one at start-up.
#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Binary::command();
    cmd.args(["-v", "0"]);
    // SAFETY: only setrlimit, which is async-signal-safe, runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 1000,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Binary::spawn_command(cmd);
    let _ = server.tcp_addr();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().collect())
        .unwrap();
    assert_eq!(&open_files[3..5], ["1000", "1000"], "{limits}");
    server.stop();
    assert!(!server.logged("could not raise"), "{:#?}", server.seen);
}

/// At -v each connection's close names the bytes it echoed: all of them,
/// for a bulk connection too (the small-buffer phase plus the bulk phase,
/// spliced or copied).
#[test]
fn the_close_line_counts_every_byte_echoed() {
    for splice in ["--splice", "--no-splice"] {
        let mut server = Binary::spawn(&["--engine", "threads", splice, "-v", "0"]);
        let addr = server.tcp_addr();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(round_trip(connect(addr), payload.clone()), payload);
        server.expect_line("the close", |l| l.contains("closed after echoing"));
        server.stop();
        assert!(
            server.logged("closed after echoing 300000 bytes"),
            "{splice}: {:#?}",
            server.seen
        );
    }
}

/// Under --splice a reset is reported as a reset wherever it comes: on the
/// first splice(2) read (the client sent exactly one small buffer's worth,
/// which starts bulk mode) and on a later one. It is not taken for
/// "splice unsupported", whose fallback would read end of file after the
/// reset and log a normal close.
#[test]
fn a_reset_during_splice_is_a_reset() {
    let mut server = Binary::spawn(&["--engine", "threads", "--splice", "-v", "0"]);
    let addr = server.tcp_addr();
    for sent in [1024, 1024 + 70_000] {
        let s = connect(addr);
        let payload = vec![7u8; sent];
        let mut reader = s.try_clone().unwrap();
        (&s).write_all(&payload).unwrap();
        assert_eq!(read_n(&mut reader, sent), payload);
        // Give the server time to be back in splice, waiting for more.
        std::thread::sleep(Duration::from_millis(200));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop((s, reader));
        server.expect_line("the reset, logged", |l| {
            l.contains("Connection reset by peer")
        });
    }
    server.stop();
    assert!(!server.logged("closed after echoing"), "{:#?}", server.seen);
}

/// Even at -v, an idle UDP server says nothing (its one-second receive
/// timeouts are not errors), and datagrams are logged only with --log-data.
#[test]
fn udp_logs_only_what_was_asked_for() {
    let mut server = Binary::spawn(&["--udp", "-v", "0"]);
    let udp: SocketAddr = server.listening("udp").parse().unwrap();
    let c = udp_client(udp, DEADLINE);
    assert_eq!(udp_round_trip(&c, b"quiet").as_deref(), Some(&b"quiet"[..]));
    // Past two receive timeouts of each socket.
    std::thread::sleep(Duration::from_millis(2500));
    server.stop();
    assert!(
        !server
            .seen
            .iter()
            .any(|l| l.contains("byte datagram") || l.contains(": recv: ")),
        "{:#?}",
        server.seen
    );
}

/// --log-data logs each datagram's bytes, escaped; an empty datagram has
/// no data to log.
#[test]
fn log_data_shows_datagrams_too() {
    let mut server = Binary::spawn(&["--udp", "--log-data", "0"]);
    let udp: SocketAddr = server.listening("udp").parse().unwrap();
    let c = udp_client(udp, DEADLINE);
    assert_eq!(udp_round_trip(&c, b"").as_deref(), Some(&b""[..]));
    assert_eq!(udp_round_trip(&c, b"ab\n").as_deref(), Some(&b"ab\n"[..]));
    let line = server.expect_line("the datagram's data", |l| l.contains("byte datagram"));
    assert!(
        line.ends_with("sent a 3 byte datagram: \"ab\\n\""),
        "{line}"
    );
    server.stop();
    let logged = server.count_lines("byte datagram");
    assert_eq!(logged, 1, "{:#?}", server.seen);
}

/// --max-threads below what the system allows caps the thread engine, and
/// the warning gives that as the reason.
#[test]
fn max_threads_caps_the_thread_engine_and_says_so() {
    let mut server = Binary::spawn(&["--engine", "threads", "--max-threads", "3", "0"]);
    let _ = server.tcp_addr();
    let warning = server.line_containing("serving at most 3 connections at once");
    assert!(
        warning.contains("at most 3 connection threads were asked for"),
        "{warning}"
    );
    server.stop();
}

/// `--generate` into a full disk: exit 1, naming what could not be written.
#[cfg(target_os = "linux")]
#[test]
fn generate_into_a_full_disk_says_what_it_could_not_write() {
    for (what, named) in [
        ("man", "the man page output"),
        ("bash", "the bash completion output"),
        ("zsh", "the zsh completion output"),
        ("fish", "the fish completion output"),
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let out = Binary::command()
            .args(["--generate", what])
            .stdout(full)
            .output()
            .expect("run echo-server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot write {named}")),
            "{what}: {stderr}"
        );
    }
}

/// Where io_uring is refused (here by a seccomp filter, as a container
/// runtime's default profile refuses it), `auto` says so, and why, in one
/// line, and serves what threads do not on event loops; `--engine uring`
/// exits 1 with the reason. Where it is not refused, `auto` serves them on
/// io_uring loops. Refusing only `io_uring_enter` (setting a ring up still
/// allowed), or only its form with a timeout (`IORING_ENTER_EXT_ARG`, the
/// loops' wait), counts as refused too: outside attacks found the loops
/// started then, and every connection handed to them hung.
#[cfg(all(target_os = "linux", feature = "uring"))]
#[test]
fn auto_serves_on_io_uring_and_falls_back_to_event_loops_where_it_is_refused() {
    let fallback = "engine auto: event loops instead of io_uring: io_uring is not permitted";
    // io_uring_enter's flags are its fourth argument.
    const EXT_ARG: Option<(u32, u32)> = Some((3, 8));
    let refusals = [
        None,
        Some((libc::SYS_io_uring_setup, None)),
        Some((libc::SYS_io_uring_enter, None)),
        Some((libc::SYS_io_uring_enter, EXT_ARG)),
    ];
    for refused in refusals {
        let mut command = Binary::command();
        command.args(["--thread-connections", "0", "0"]);
        if let Some((nr, flag)) = refused {
            refusing_syscall(&mut command, nr, flag);
        }
        let mut server = Binary::spawn_command(command);
        let addr = server.tcp_addr();
        assert_eq!(round_trip(connect(addr), b"hello".to_vec()), b"hello");
        let mut client = connect(addr);
        client.write_all(b"held").unwrap();
        assert_eq!(read_n(&mut client, 4), b"held");
        let placed = match refused {
            Some(_) => "1 on event loops",
            None => "1 on io_uring loops",
        };
        server.wait_for_stats(placed);
        server.stop();
        let lines = server.count_lines("engine auto: event loops instead of io_uring");
        assert_eq!(lines, usize::from(refused.is_some()), "{:#?}", server.seen);
        if refused.is_some() {
            assert!(server.logged(fallback), "{:#?}", server.seen);
        }
    }
    for (nr, flag) in refusals.into_iter().flatten() {
        let mut command = Binary::command();
        command.args(["--engine", "uring", "0"]);
        refusing_syscall(&mut command, nr, flag);
        let mut server = Binary::spawn_command(command);
        assert_eq!(server.wait_exit().code(), Some(1));
        let why = "the uring engine cannot run: io_uring is not permitted to this process";
        assert!(server.logged(why), "{:#?}", server.seen);
    }
}
