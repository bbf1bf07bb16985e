//! The PROXY protocol through the real binary, under every engine: a load
//! balancer's connections (`--proxy-protocol`) begin with a header that is
//! consumed, never echoed, and names the client everywhere (logs, the
//! per-source cap); a header that is malformed, too long or late closes the
//! connection without an echo; other connections are served as they are.

mod support;

use echo_server::Engine;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

engine_tests!(
    headers_are_consumed_and_name_the_client,
    the_per_source_cap_counts_the_clients_behind_a_balancer,
    bad_late_and_dripping_headers_close_without_an_echo,
    connections_from_other_networks_are_echoed_as_they_are,
    health_checks_keep_the_balancers_address,
    a_reset_in_the_header_is_closed_at_once,
    a_silent_header_costs_no_cpu,
    the_idle_timeout_counts_from_the_end_of_the_header,
    reclaim_counts_idleness_from_the_end_of_the_header,
    a_mapped_network_holds_its_ipv4_clients,
);

fn spawn(engine: Engine, args: &[&str]) -> (Binary, SocketAddr) {
    let mut args = on_engine(engine, args);
    args.push("0");
    let mut server = Binary::spawn(&args);
    let addr = server.tcp_addr();
    (server, addr)
}

fn v1(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let server = if client.is_ipv4() {
        "198.51.100.1"
    } else {
        "2001:db8::1"
    };
    format!(
        "PROXY {family} {} {server} {} 7\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A v2 header for an IPv4 client (`local`: the balancer's own check).
fn v2(client: &str, local: bool) -> Vec<u8> {
    let client: std::net::SocketAddrV4 = client.parse().unwrap();
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(if local { 0x20 } else { 0x21 });
    h.push(0x11);
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&client.ip().octets());
    h.extend_from_slice(&[198, 51, 100, 1]);
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&7u16.to_be_bytes());
    h
}

/// Sends `pieces` one by one (a pause between, so each is a segment of
/// its own), half-closes, and returns everything read until the end.
fn send_in_pieces(addr: SocketAddr, pieces: &[&[u8]]) -> Vec<u8> {
    let mut s = connect(addr);
    s.set_nodelay(true).unwrap();
    for piece in pieces {
        // The server may close as soon as it has judged a bad header.
        if s.write_all(piece).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    let _ = s.shutdown(Shutdown::Write);
    read_until_closed(&mut s)
}

/// Everything the server sends until it closes (a reset ends it too).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("reading the echo: {e} (after {got:?})"),
        }
    }
}

fn headers_are_consumed_and_name_the_client(engine: Engine) {
    let (mut server, addr) = spawn(engine, &["--proxy-protocol", "127.0.0.0/8", "-v"]);
    for (header, client) in [
        (v1("192.0.2.7:40000"), "192.0.2.7:40000"),
        (v1("[2001:db8::7]:40001"), "[2001:db8::7]:40001"),
        (v2("192.0.2.8:40002", false), "192.0.2.8:40002"),
    ] {
        // Whole, with the data in the same segment.
        let mut whole = header.clone();
        whole.extend_from_slice(b"same segment");
        assert_eq!(send_in_pieces(addr, &[&whole]), b"same segment", "{client}");
        // A byte per segment, the data after it.
        let mut pieces: Vec<&[u8]> = header.chunks(1).collect();
        pieces.push(b"after a split header");
        assert_eq!(
            send_in_pieces(addr, &pieces),
            b"after a split header",
            "{client}"
        );
        let line = format!("PROXY protocol: client {client}");
        server.expect_line(&line, |l| l.contains(&line));
        // The client, not the balancer, is who the connection was.
        let closed = format!("{client}: closed after echoing");
        server.expect_line(&closed, |l| l.contains(&closed));
    }
    server.stop();
    // Only what followed the headers counts: 32 bytes a connection, twice
    // for each of the three headers.
    let summary = server.summary();
    assert!(
        summary
            .contains("6 connections accepted, 6 closed, 0 active; 96 bytes received, 96 echoed"),
        "{summary}"
    );
}

fn the_per_source_cap_counts_the_clients_behind_a_balancer(engine: Engine) {
    let (mut server, addr) = spawn(
        engine,
        &["--proxy-protocol", "127.0.0.1", "--max-per-source", "1"],
    );
    // Two clients behind one balancer address: each has a slot of its own.
    let mut a = connect(addr);
    a.write_all(&[v1("192.0.2.1:1000"), b"a".to_vec()].concat())
        .unwrap();
    assert_eq!(read_n(&mut a, 1), b"a");
    let mut b = connect(addr);
    b.write_all(&[v1("192.0.2.2:1000"), b"b".to_vec()].concat())
        .unwrap();
    assert_eq!(read_n(&mut b, 1), b"b");
    // The first client again, while its first connection is open: capped.
    let again = send_in_pieces(addr, &[&[v1("192.0.2.1:1001"), b"x".to_vec()].concat()]);
    assert_eq!(again, b"", "a client at the cap got an echo");
    server.wait_for_stats("1 at the per-source cap");
    drop((a, b));
    server.stop();
}

fn bad_late_and_dripping_headers_close_without_an_echo(engine: Engine) {
    let (mut server, addr) = spawn(
        engine,
        &["--proxy-protocol", "127.0.0.1", "--proxy-timeout", "1"],
    );
    let mut long_v2 = v2("192.0.2.9:9", false);
    long_v2[14..16].copy_from_slice(&2000u16.to_be_bytes());
    let endless = format!("PROXY UNKNOWN {}", "x".repeat(300)).into_bytes();
    for bad in [
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.1 198.51.100.1 1 99999\r\nX".to_vec(),
        b"PROXY TCP4 192.0.2.1 198.51.100.1 1 2\rX".to_vec(),
        endless,
        long_v2,
        // The client closes before its header is complete.
        b"PROXY TCP4 192.0.2.1".to_vec(),
    ] {
        assert_eq!(send_in_pieces(addr, &[&bad]), b"", "{bad:?}");
    }
    // Silent, then dripping a byte at a time (the header would take 20 s):
    // each is closed by the 1 s deadline, the drip no later than the
    // silent one.
    let started = Instant::now();
    let mut silent = connect(addr);
    assert_eq!(read_until_closed(&mut silent), b"");
    let mut drip = connect(addr);
    drip.set_nodelay(true).unwrap();
    let header = v1("192.0.2.3:3");
    let mut sent = 0;
    let mut closed = false;
    while !closed && sent < header.len() {
        closed = drip.write_all(&header[sent..=sent]).is_err()
            || is_closed(&mut drip, Duration::from_millis(400));
        sent += 1;
    }
    assert!(closed && sent < header.len(), "the drip was never closed");
    assert!(started.elapsed() < DEADLINE);
    // The client that closed mid-header left of its own accord: 7 refused.
    let stats = server.wait_for_stats("8 closed, 0 active");
    assert!(
        stats.contains("refused: 7 without a valid PROXY header"),
        "{stats}"
    );
    // A late header is no keepalive death.
    assert!(!stats.contains("keepalive"), "{stats}");
    server.stop();
    let summary = server.summary();
    assert!(summary.contains("0 bytes received, 0 echoed"), "{summary}");
}

fn connections_from_other_networks_are_echoed_as_they_are(engine: Engine) {
    let (mut server, addr) = spawn(engine, &["--proxy-protocol", "10.0.0.0/8,192.0.2.1"]);
    let header = v1("192.0.2.7:40000");
    let mut sent = header.clone();
    sent.extend_from_slice(b"data");
    assert_eq!(round_trip(connect(addr), sent.clone()), sent);
    server.stop();
}

fn health_checks_keep_the_balancers_address(engine: Engine) {
    let (mut server, addr) = spawn(engine, &["--proxy-protocol", "127.0.0.1", "-v"]);
    let local = [v2("192.0.2.7:40000", true), b"health".to_vec()].concat();
    assert_eq!(send_in_pieces(addr, &[&local]), b"health");
    let unknown = b"PROXY UNKNOWN\r\nunknown".to_vec();
    assert_eq!(send_in_pieces(addr, &[&unknown]), b"unknown");
    server.stop();
    assert!(!server.logged("PROXY protocol: client"));
    assert!(server.logged("127.0.0.1:"));
}

fn a_reset_in_the_header_is_closed_at_once(engine: Engine) {
    // A deadline far beyond the test's: only the reset can end it in time.
    let (mut server, addr) = spawn(
        engine,
        &["--proxy-protocol", "127.0.0.1", "--proxy-timeout", "600"],
    );
    let s = connect(addr);
    (&s).write_all(b"PROXY TCP4 192.0.2.1 198.").unwrap();
    thread::sleep(Duration::from_millis(50));
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    // Closed at once; the client left, which is no refusal of ours.
    let stats = server.wait_for_stats("1 closed, 0 active");
    assert!(!stats.contains("PROXY header"), "{stats}");
    server.stop();
}

/// A balancer connection waiting for the rest of its header waits without
/// spinning, on every engine.
#[cfg(target_os = "linux")]
fn a_silent_header_costs_no_cpu(engine: Engine) {
    let (mut server, addr) = spawn(
        engine,
        &["--proxy-protocol", "127.0.0.1", "--proxy-timeout", "60"],
    );
    let mut silent = connect(addr);
    silent.write_all(b"PROXY TCP4 192.0.2.1").unwrap();
    let mut check = connect(addr);
    check
        .write_all(&[v1("192.0.2.2:2"), b"up".to_vec()].concat())
        .unwrap();
    assert_eq!(
        read_n(&mut check, 2),
        b"up",
        "the server serves others meanwhile"
    );
    let pid = server.child.id();
    let before = cpu_ticks(pid);
    let start = Instant::now();
    thread::sleep(Duration::from_millis(1500));
    let used = cpu_ticks(pid) - before;
    // 10% of the wall time (ticks are 1/100 s): far above a wait (nothing),
    // far below a spinning loop (a whole core).
    let allowed = start.elapsed().as_millis() as u64 / 100;
    assert!(used <= allowed, "{used} ticks in {:?}", start.elapsed());
    drop((silent, check));
    server.stop();
}

#[cfg(not(target_os = "linux"))]
fn a_silent_header_costs_no_cpu(_: Engine) {}

/// A client whose header came late (within its own deadline) still has
/// the whole idle timeout for its first bytes.
fn the_idle_timeout_counts_from_the_end_of_the_header(engine: Engine) {
    let (mut server, addr) = spawn(
        engine,
        &[
            "--proxy-protocol",
            "127.0.0.1",
            "--proxy-timeout",
            "10",
            "--idle-timeout",
            "1",
        ],
    );
    let mut s = connect(addr);
    thread::sleep(Duration::from_millis(1500));
    s.write_all(&v1("192.0.2.4:4")).unwrap();
    thread::sleep(Duration::from_millis(300));
    s.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut s, 4), b"ping");
    server.stop();
}

/// The same for reclaim: a full server with a client waiting takes the
/// slot of a connection idle for --reclaim-idle, counted from the end of
/// its header, not from accept.
fn reclaim_counts_idleness_from_the_end_of_the_header(engine: Engine) {
    let (mut server, addr) = spawn(
        engine,
        &[
            "--proxy-protocol",
            "127.0.0.1",
            "--proxy-timeout",
            "10",
            "--max-connections",
            "1",
            "--reclaim-idle",
            "1",
        ],
    );
    let mut late = connect(addr);
    thread::sleep(Duration::from_millis(1500));
    late.write_all(&v1("192.0.2.5:5")).unwrap();
    thread::sleep(Duration::from_millis(100));
    // A client waits for the one slot; the late one has been idle 0.1 s.
    let waiting = connect(addr);
    thread::sleep(Duration::from_millis(300));
    late.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut late, 4), b"ping", "reclaimed too early");
    drop((late, waiting));
    server.stop();
}

/// `::ffff:127.0.0.0/104` holds the IPv4 clients of a dual-stack listener
/// (which reports them as `::ffff:127.0.0.1`) and of an IPv4 one alike.
fn a_mapped_network_holds_its_ipv4_clients(engine: Engine) {
    let mut args = on_engine(
        engine,
        &[
            "--bind",
            "::",
            "--bind",
            "127.0.0.1",
            "--proxy-protocol",
            "::ffff:127.0.0.0/104",
            "0",
        ],
    );
    args.retain(|a| !a.is_empty());
    let mut server = Binary::spawn(&args);
    let port = server.tcp_addr().port();
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let sent = [v1("192.0.2.6:6"), b"mapped".to_vec()].concat();
    assert_eq!(send_in_pieces(to, &[&sent]), b"mapped");
    server.stop();
}

/// `--proxy-protocol unix`: clients of a Unix listener (a balancer on the
/// same host) begin with a header too.
#[cfg(unix)]
#[test]
fn unix_listeners_expect_a_header_when_told() {
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let path_str = path.to_str().unwrap();
    let mut server = Binary::spawn(&["--unix", path_str, "--proxy-protocol", "unix", "-v"]);
    server.listening("unix");
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(&[v1("192.0.2.5:5"), b"over unix".to_vec()].concat())
        .unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"over unix");
    let mut bare = UnixStream::connect(&path).unwrap();
    bare.set_read_timeout(Some(DEADLINE)).unwrap();
    bare.write_all(b"no header").unwrap();
    bare.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let _ = bare.read_to_end(&mut got);
    assert_eq!(got, b"");
    server.expect_line("client", |l| {
        l.contains("PROXY protocol: client 192.0.2.5:5")
    });
    server.stop();
}

/// Bad option values are usage errors.
#[test]
fn bad_networks_are_usage_errors() {
    for bad in ["10.0.0.0/33", "somewhere", "10.0.0.0/8,", ""] {
        let (status, stderr) = run_binary(&["--proxy-protocol", bad, "0"]);
        assert_eq!(status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("--proxy-protocol"), "{stderr}");
    }
    // A deadline beyond what the clock can say once crashed the accept
    // loop; and the shutdown grace, shutdown.
    for (option, value) in [("--proxy-timeout", "1e19"), ("--shutdown-grace", "1e19")] {
        let (status, stderr) = run_binary(&["--proxy-protocol", "127.0.0.1", option, value, "0"]);
        assert_eq!(status.code(), Some(2), "{option} {value}: {stderr}");
        assert!(stderr.contains("too long"), "{stderr}");
    }
}

/// A library user may pass any `Duration`: the longest ones mean "no end"
/// and overflow nothing (the command line caps them at a year).
#[test]
fn the_longest_durations_a_library_user_can_pass_overflow_nothing() {
    for engine in Engine::ALL {
        let server = TestServer::start(
            builder(engine)
                .tcp(([127, 0, 0, 1], 0))
                .proxy_protocol(["127.0.0.1".parse().unwrap()])
                .proxy_protocol_timeout(Duration::MAX)
                .shutdown_grace(Duration::MAX),
        );
        // In two pieces, so that the deadline is looked at in between.
        let header = v1("192.0.2.9:9");
        let (first, rest) = header.split_at(10);
        let mut s = connect(server.addr);
        s.write_all(first).unwrap();
        thread::sleep(Duration::from_millis(300));
        s.write_all(&[rest, b"long"].concat()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_until_closed(&mut s), b"long", "{engine}");
        let stats = server.stop();
        assert_eq!(stats.bytes_echoed, 4, "{engine}");
    }
}
