//! Impairments (`--chunk`, `--delay`, `--rate`, `--reset-after`,
//! `--close-after`, `--stall-after`, `--drop`, `--duplicate`,
//! `--impair-port`, `--seed`) through the real binary under every engine,
//! and properties through the in-process `echo_server::testing::TestServer`.

mod support;

use echo_server::testing::TestServer;
use proptest::prelude::*;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

/// Starts the binary on a free port with `args` under `engine`.
fn impaired(engine: echo_server::Engine, args: &[&str]) -> (Binary, SocketAddr) {
    let mut all = on_engine(engine, args);
    all.push("0");
    let mut server = Binary::spawn(&all);
    let addr = server.tcp_addr();
    (server, addr)
}

/// Every read until end of file or an error: the sizes, the bytes, and the
/// error that ended it (`None` for end of file).
fn read_all(s: &mut TcpStream) -> (Vec<usize>, Vec<u8>, Option<io::ErrorKind>) {
    let (mut sizes, mut bytes) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        match s.read(&mut buf) {
            Ok(0) => return (sizes, bytes, None),
            Ok(n) => {
                sizes.push(n);
                bytes.extend_from_slice(&buf[..n]);
            }
            Err(e) => return (sizes, bytes, Some(e.kind())),
        }
    }
    panic!("no end after {DEADLINE:?}");
}

fn message(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// `--chunk 1-1`: the echo of a 64-byte message comes back a byte per
/// write; with a small delay between pieces the client's reads see them
/// apart (many reads, not one).
fn one_byte_chunks_arrive_as_separate_reads(engine: echo_server::Engine) {
    let (mut server, addr) = impaired(engine, &["--chunk", "1-1", "--delay", "3"]);
    let mut client = connect(addr);
    let sent = message(64);
    client.write_all(&sent).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let (sizes, bytes, error) = read_all(&mut client);
    assert_eq!((bytes, error), (sent, None));
    assert!(sizes.len() >= 16, "only {} reads: {sizes:?}", sizes.len());
    server.stop();
    assert!(
        server.summary().contains("impaired: 64 pieces sent"),
        "{}",
        server.summary()
    );
}

/// `--reset-after 10`: exactly the first 10 bytes, then a reset (not an
/// end of file).
fn reset_after_gives_the_first_bytes_then_a_reset(engine: echo_server::Engine) {
    let (mut server, addr) = impaired(engine, &["--reset-after", "10", "--chunk", "3-7"]);
    let mut client = connect(addr);
    let sent = message(64);
    client.write_all(&sent).unwrap();
    let (_, bytes, error) = read_all(&mut client);
    assert_eq!(bytes, &sent[..10]);
    assert_eq!(error, Some(io::ErrorKind::ConnectionReset));
    server.stop();
    assert!(
        server.summary().contains("1 resets"),
        "{}",
        server.summary()
    );
}

/// `--close-after 10`: the first 10 bytes, then a clean end of file.
fn close_after_gives_the_first_bytes_then_eof(engine: echo_server::Engine) {
    let (mut server, addr) = impaired(engine, &["--close-after", "10"]);
    let mut client = connect(addr);
    let sent = message(64);
    client.write_all(&sent).unwrap();
    let (_, bytes, error) = read_all(&mut client);
    assert_eq!((bytes.as_slice(), error), (&sent[..10], None));
    server.stop();
    assert!(
        server.summary().contains("1 closes"),
        "{}",
        server.summary()
    );
}

/// `--stall-after 10`: 10 bytes come back, then nothing however much the
/// client sends, and the server closes the connection at its idle timeout.
fn stall_after_stops_echoing_until_the_idle_timeout(engine: echo_server::Engine) {
    let (mut server, addr) = impaired(engine, &["--stall-after", "10", "--idle-timeout", "1"]);
    let mut client = connect(addr);
    client.write_all(&message(64)).unwrap();
    assert_eq!(read_n(&mut client, 10), &message(64)[..10]);
    client.write_all(b"more").unwrap();
    assert!(
        !is_closed(&mut client, Duration::from_millis(300)),
        "echoed or closed at once"
    );
    let (_, bytes, _) = read_all(&mut client);
    assert!(bytes.is_empty(), "echoed after the stall: {bytes:?}");
    server.stop();
    assert!(
        server.summary().contains("1 stalls"),
        "{}",
        server.summary()
    );
}

/// The same seed gives the same choices: with `--reset-after 1-5000` the
/// reset comes after the same number of bytes, run after run (whatever the
/// timing); the seed is logged, and `-v` logs each connection's index.
fn the_same_seed_resets_at_the_same_byte(engine: echo_server::Engine) {
    let bytes_before_reset = |seed: &str| {
        let (mut server, addr) = impaired(
            engine,
            &[
                "--reset-after",
                "1-5000",
                "--chunk",
                "1-500",
                "--seed",
                seed,
                "-v",
            ],
        );
        let mut client = connect(addr);
        let mut writer = client.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(&message(10_000));
        });
        let (_, bytes, error) = read_all(&mut client);
        let _ = sender.join();
        assert_eq!(error, Some(io::ErrorKind::ConnectionReset));
        server.stop();
        assert!(
            server.logged(&format!("impairments on (seed {seed})")),
            "{:#?}",
            server.seen
        );
        assert!(server.logged("connection index 0"), "{:#?}", server.seen);
        bytes.len()
    };
    let first = bytes_before_reset("12345");
    assert_eq!(bytes_before_reset("12345"), first);
    assert_ne!(bytes_before_reset("54321"), first);
}

/// `--impair-port`: that port is impaired (and listened on), the others
/// stay clean.
fn impair_port_leaves_the_other_port_clean(engine: echo_server::Engine) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let port_arg = port.to_string();
    let (mut server, first) = impaired(engine, &["--impair-port", &port_arg, "--reset-after", "5"]);
    let second: SocketAddr = server.listening("tcp").parse().unwrap();
    let (clean, dirty) = if first.port() == port {
        (second, first)
    } else {
        (first, second)
    };
    assert_eq!(dirty.port(), port);
    let sent = message(64);
    assert_eq!(round_trip(connect(clean), sent.clone()), sent);
    let mut client = connect(dirty);
    client.write_all(&sent).unwrap();
    let (_, bytes, error) = read_all(&mut client);
    assert_eq!(
        (bytes.as_slice(), error),
        (&sent[..5], Some(io::ErrorKind::ConnectionReset))
    );
    server.stop();
}

/// Shutdown with an echo waiting out a 10-minute `--delay`: the delay is
/// dropped, the echo goes at once and the server exits, instead of the
/// drain waiting its whole grace period for a timer (event loops) or a
/// sleeping thread that never looks up.
fn a_long_delay_does_not_hold_up_shutdown(engine: echo_server::Engine) {
    let (mut server, addr) = impaired(engine, &["--delay", "600000"]);
    let mut client = connect(addr);
    client.write_all(b"hello").unwrap();
    server.wait_for_stats("5 bytes received");
    let start = Instant::now();
    server.stop();
    let took = start.elapsed();
    let (_, bytes, _) = read_all(&mut client);
    assert_eq!(bytes, b"hello", "the echo went before the end");
    assert!(
        server.summary().contains("5 bytes received, 5 echoed"),
        "{}",
        server.summary()
    );
    assert!(!server.logged("did not stop"), "{:#?}", server.seen);
    // Far below the drain's grace period (10 s), which a stuck drain waits out.
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

/// Over TLS the impairments apply to the plaintext echo: each piece its
/// own record, and a reset after N bytes of plaintext. Checked with the
/// built-in probe (`--tls`).
fn tls_echoes_are_impaired_too(engine: echo_server::Engine) {
    let Some(pki) = support::pki::Pki::make(&[]) else {
        return;
    };
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let tls = |extra: &[&str]| {
        let mut args = vec!["--tls", "0", "--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra);
        let mut server = Binary::spawn(&on_engine(engine, &args));
        let addr = server.listening("tls");
        (server, addr)
    };
    let probe = |addr: &str| {
        let out = Binary::command()
            .args(["probe", "--tls", "--size", "64", "--timeout", "20", addr])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (mut server, addr) = tls(&["--chunk", "1-3"]);
    let (code, stderr) = probe(&addr);
    assert_eq!(code, Some(0), "{stderr}");
    server.stop();
    let summary = server.summary();
    let pieces: u64 = summary
        .split(" pieces sent")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(pieces >= 22, "64 bytes in pieces of at most 3: {summary}");

    let (mut server, addr) = tls(&["--reset-after", "10"]);
    let (code, stderr) = probe(&addr);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("after 10 of 64 bytes echoed"), "{stderr}");
    server.stop();
}

engine_tests! {
    tls_echoes_are_impaired_too,
    a_long_delay_does_not_hold_up_shutdown,
    one_byte_chunks_arrive_as_separate_reads,
    reset_after_gives_the_first_bytes_then_a_reset,
    close_after_gives_the_first_bytes_then_eof,
    stall_after_stops_echoing_until_the_idle_timeout,
    the_same_seed_resets_at_the_same_byte,
    impair_port_leaves_the_other_port_clean,
}

/// Without `--seed`, one is drawn and logged.
#[test]
fn a_seed_is_drawn_and_logged_when_none_is_given() {
    let (mut server, _) = impaired(echo_server::Engine::Auto, &["--chunk", "1-2"]);
    server.stop();
    let line = server.line_containing("impairments on (seed ");
    let seed = line
        .split("(seed ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse::<u64>().ok());
    assert!(seed.is_some(), "{line}");
}

/// A server without impairments says nothing of them.
#[test]
fn a_clean_server_says_nothing_of_impairments() {
    let (mut server, addr) = impaired(echo_server::Engine::Auto, &[]);
    assert_eq!(round_trip(connect(addr), b"hi".to_vec()), b"hi");
    server.stop();
    assert!(!server.logged("impair"), "{:#?}", server.seen);
}

#[test]
fn bad_values_are_usage_errors() {
    for args in [
        &["--chunk", "5-2", "0"][..],
        &["--chunk", "0-2", "0"],
        &["--chunk", "x", "0"],
        &["--delay", "9-3", "0"],
        &["--delay", "-1", "0"],
        &["--rate", "0", "0"],
        &["--drop", "1.5", "0"],
        &["--duplicate", "-0.1", "0"],
        &["--reorder", "p", "0"],
        &["--reset-after", "9-3", "0"],
        &["--reset-after", "5", "--close-after", "5", "0"],
        &["--close-after", "5", "--stall-after", "5", "0"],
        &["--seed", "-1", "--chunk", "1-2", "0"],
        // Which ports, which seed: with nothing to impair, a mistake.
        &["--impair-port", "7", "0"],
        &["--seed", "5", "0"],
    ] {
        let (status, stderr) = run_binary(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
}

/// UDP: `--drop 1` answers nothing (and counts it); `--duplicate 1`
/// answers every datagram twice.
#[test]
fn udp_drops_and_duplicates() {
    let (mut server, addr) = impaired(echo_server::Engine::Auto, &["--udp", "--drop", "1"]);
    let client = udp_client(addr, Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(udp_round_trip(&client, b"ping"), None);
    }
    server.stop();
    assert!(
        server.summary().contains("impaired: 5 datagrams dropped"),
        "{}",
        server.summary()
    );

    let (mut server, addr) = impaired(echo_server::Engine::Auto, &["--udp", "--duplicate", "1"]);
    let client = udp_client(addr, Duration::from_secs(5));
    client.send(b"ping").unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..2 {
        let n = client.recv(&mut buf).expect("a copy");
        assert_eq!(&buf[..n], b"ping");
    }
    server.stop();
    assert!(
        server.summary().contains("1 duplicated"),
        "{}",
        server.summary()
    );
}

/// Which of 64 datagrams a fresh server with `--drop 0.5 --seed SEED`
/// answers (one source: index 0 of a fresh server).
fn answered_with_seed(seed: &str) -> Vec<u8> {
    let (mut server, addr) = impaired(
        echo_server::Engine::Auto,
        &["--udp", "--drop", "0.5", "--seed", seed],
    );
    let client = udp_client(addr, Duration::from_millis(1500));
    for i in 0..64u8 {
        client.send(&[i]).unwrap();
    }
    let mut answered = Vec::new();
    let mut buf = [0u8; 8];
    // Until a pause of 1.5 s: every reply there is has come by then.
    while let Ok(n) = client.recv(&mut buf) {
        assert_eq!(n, 1);
        answered.push(buf[0]);
    }
    server.stop();
    let dropped = 64 - answered.len();
    assert!(
        server
            .summary()
            .contains(&format!("impaired: {dropped} datagrams dropped")),
        "{} answered; {}",
        answered.len(),
        server.summary()
    );
    answered
}

/// The same seed drops the same datagrams, run after run, over real
/// sockets; another seed drops others.
#[test]
fn the_same_seed_drops_the_same_datagrams() {
    let first = answered_with_seed("42");
    assert!((8..=56).contains(&first.len()), "{first:?}");
    assert_eq!(answered_with_seed("42"), first);
    assert_ne!(answered_with_seed("43"), first);
}

/// UDP `--reorder 1` with a source that sends once: its held reply is not
/// lost for want of a next one, it comes after the hold limit (1 s).
#[test]
fn a_held_reply_comes_even_without_a_next_one() {
    let (mut server, addr) = impaired(echo_server::Engine::Auto, &["--udp", "--reorder", "1"]);
    let client = udp_client(addr, Duration::from_secs(10));
    let start = Instant::now();
    assert_eq!(
        udp_round_trip(&client, b"lonely").as_deref(),
        Some(&b"lonely"[..])
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    server.stop();
    assert!(
        server.summary().contains("1 reordered"),
        "{}",
        server.summary()
    );
}

/// UDP `--delay` of a minute under a flood of 16,000-byte datagrams: what
/// waits is bounded (16 MiB a receive thread); the rest is dropped and
/// counted, and the server still answers afterwards.
#[test]
fn delayed_replies_are_bounded_under_a_flood() {
    let (mut server, addr) = impaired(
        echo_server::Engine::Auto,
        &[
            "--udp",
            "--udp-threads",
            "1",
            "--udp-rate",
            "0",
            "--udp-total-rate",
            "0",
            "--delay",
            "60000",
        ],
    );
    let client = udp_client(addr, Duration::from_secs(5));
    let datagram = vec![7u8; 16_000];
    // 24 MB offered, paced so the socket's receive buffer keeps up.
    for i in 0..1500 {
        client.send(&datagram).unwrap();
        if i % 16 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let stats = server.wait_for_stats("datagrams dropped");
    let dropped: u64 = stats
        .split("impaired: ")
        .nth(1)
        .and_then(|rest| rest.split(" datagrams dropped").next())
        .and_then(|n| n.trim().rsplit(' ').next().map(str::to_owned))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in {stats}"));
    // 16 MiB holds at most 1,040 of them (16,128 bytes each, counted);
    // the kernel may have dropped some before the server read them.
    assert!(dropped > 0, "{stats}");
    server.stop();
}

/// UDP with `--delay 50`: each reply comes at least 50 ms after its
/// request (an upper bound would flake on a busy machine; the measured
/// figure is in the README).
#[test]
fn udp_replies_are_delayed() {
    let (mut server, addr) = impaired(echo_server::Engine::Auto, &["--udp", "--delay", "50"]);
    let client = udp_client(addr, Duration::from_secs(5));
    for _ in 0..3 {
        let start = Instant::now();
        assert_eq!(udp_round_trip(&client, b"x").as_deref(), Some(&b"x"[..]));
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
    }
    server.stop();
}

/// Writes `data` and reads to end of file on another thread.
fn exchange(addr: SocketAddr, data: Vec<u8>) -> Result<Vec<u8>, io::ErrorKind> {
    let mut client = connect(addr);
    let mut writer = client.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&data);
        let _ = writer.shutdown(Shutdown::Write);
    });
    let (_, bytes, error) = read_all(&mut client);
    let _ = sender.join();
    match error {
        None => Ok(bytes),
        Some(kind) => Err(kind),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Any mix of pieces, small delays and a high rate: the client gets
    /// back exactly what it sent, in order.
    #[test]
    fn impaired_echo_is_still_exact(
        data in proptest::collection::vec(any::<u8>(), 1..3000),
        chunk in (1usize..50, 0usize..200),
        delay in proptest::option::of(0u64..3),
        rate in proptest::option::of(200_000u64..2_000_000),
        seed in any::<u64>(),
        engine in prop::sample::select(vec![echo_server::Engine::Threads, echo_server::Engine::Events]),
    ) {
        let mut builder = TestServer::builder()
            .engine(engine)
            .chunk(chunk.0, chunk.0 + chunk.1)
            .seed(seed);
        if let Some(ms) = delay {
            builder = builder.delay(Duration::ZERO, Duration::from_millis(ms));
        }
        if let Some(rate) = rate {
            builder = builder.rate(rate);
        }
        let server = builder.start().unwrap();
        prop_assert_eq!(exchange(server.addr(), data.clone()), Ok(data));
    }

    /// `reset_after(n)`: exactly the first n bytes, then a reset.
    #[test]
    fn reset_after_n_gives_exactly_n_bytes(
        data in proptest::collection::vec(any::<u8>(), 100..3000),
        n in 0u64..100,
        chunk in 1usize..40,
        engine in prop::sample::select(vec![echo_server::Engine::Threads, echo_server::Engine::Events]),
    ) {
        let server = TestServer::builder()
            .engine(engine)
            .chunk(1, chunk)
            .reset_after(n, n)
            .start()
            .unwrap();
        let mut client = connect(server.addr());
        client.write_all(&data).unwrap();
        let (_, bytes, error) = read_all(&mut client);
        prop_assert_eq!(bytes.as_slice(), &data[..n as usize]);
        prop_assert_eq!(error, Some(io::ErrorKind::ConnectionReset));
    }
}

/// Measured (`cargo test --test impair -- --ignored --nocapture`):
/// `--rate` over three seconds, within 10%.
#[test]
#[ignore]
fn measure_rate() {
    let rate = 100_000u64;
    let server = TestServer::builder().rate(rate).start().unwrap();
    let data = message(300_000);
    let start = Instant::now();
    let got = exchange(server.addr(), data.clone());
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, Ok(data));
    let measured = 300_000.0 / secs;
    println!(
        "--rate {rate}: {measured:.0} B/s over {secs:.2} s ({:+.1}%)",
        (measured / rate as f64 - 1.0) * 100.0
    );
    assert!((measured / rate as f64 - 1.0).abs() < 0.10);
}

/// Measured: `--delay 50` adds 50 ms (±10) to each round trip, on each
/// engine.
#[test]
#[ignore]
fn measure_delay() {
    for engine in [echo_server::Engine::Threads, echo_server::Engine::Events] {
        let run = |server: &TestServer| {
            let mut client = connect(server.addr());
            client.set_nodelay(true).unwrap();
            let mut total = Duration::ZERO;
            for _ in 0..20 {
                let start = Instant::now();
                client.write_all(b"ping").unwrap();
                read_n(&mut client, 4);
                total += start.elapsed();
            }
            total / 20
        };
        let clean = run(&TestServer::builder().engine(engine).start().unwrap());
        let delayed = run(&TestServer::builder()
            .engine(engine)
            .delay(Duration::from_millis(50), Duration::from_millis(50))
            .start()
            .unwrap());
        let added = delayed.saturating_sub(clean);
        println!("{engine:?}: clean {clean:?}, --delay 50 {delayed:?}: adds {added:?}");
        assert!((40..=60).contains(&added.as_millis()), "{added:?}");
    }
}

/// UDP with a long `--delay` and `--duplicate 1`: every reply waits in the
/// socket's queue, twice, for an hour. A few seconds of datagrams from a
/// handful of source networks (within the default rate limits: the copies
/// cost no tokens) must not grow the server without bound: what waits is
/// capped at 16 MiB a receive thread, well within 128 MiB. (It grew by
/// about 275 MB in 4 s before the cap.)
#[cfg(target_os = "linux")]
#[test]
fn delayed_udp_replies_are_bounded_in_memory() {
    let (mut server, addr) = impaired(
        echo_server::Engine::Auto,
        &["--udp", "--delay", "3600000", "--duplicate", "1"],
    );
    let before = rss_kib(server.child.id());
    let sockets: Vec<std::net::UdpSocket> = (1..=16)
        .map(|net| std::net::UdpSocket::bind(format!("127.0.{net}.1:0")).unwrap())
        .collect();
    for s in &sockets {
        s.set_nonblocking(true).unwrap();
    }
    let datagram = vec![b'y'; 60_000];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for s in &sockets {
            let _ = s.send_to(&datagram, addr);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_kib(server.child.id()).saturating_sub(before);
    server.stop();
    assert!(grown < 128 << 10, "grew by {grown} KiB");
}

/// `--impair-port 0` would listen on a port the kernel picks, and that
/// listener would not be impaired (its port is not 0): a client's test
/// against it passes without the impairments it asked for. A usage error.
#[test]
fn impair_port_0_is_a_usage_error() {
    let (status, stderr) = run_binary(&["--impair-port", "0", "--close-after", "3", "0"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--impair-port"), "{stderr}");
}
