//! The server over real TCP loopback sockets, driven through the library.

mod support;

use echo_server::Engine;
use rand::{Rng, RngCore, SeedableRng};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

fn echoes_a_line(engine: Engine) {
    let server = TestServer::loopback(engine);
    let mut c = connect(server.addr);
    c.write_all(b"hello\n").unwrap();
    assert_eq!(read_n(&mut c, 6), b"hello\n");
    c.write_all(b"again").unwrap();
    assert_eq!(read_n(&mut c, 5), b"again");
}

fn echoes_every_byte_value_including_nul(engine: Engine) {
    let server = TestServer::loopback(engine);
    let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    assert_eq!(round_trip(connect(server.addr), data.clone()), data);
}

fn echoes_one_mebibyte_written_in_random_chunks(engine: Engine) {
    // Bulk goes through splice(2) on Linux, and through the portable loop
    // with the switch off: both engines must be exact.
    for splice in [true, false] {
        let server = TestServer::start(builder(engine).tcp(([127, 0, 0, 1], 0)).splice(splice));
        one_mebibyte_in_random_chunks(&server);
        assert_eq!(server.stop().bytes_echoed, 1 << 20, "splice {splice}");
    }
}

fn one_mebibyte_in_random_chunks(server: &TestServer) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut data = vec![0u8; 1 << 20];
    rng.fill_bytes(&mut data);
    let stream = connect(server.addr);
    let mut reader = stream.try_clone().unwrap();
    let expected = data.clone();
    let collector = thread::spawn(move || {
        let mut got = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut buf = vec![0u8; 70_000];
        loop {
            let n = rng.random_range(1..=buf.len());
            match reader.read(&mut buf[..n]).expect("read") {
                0 => break,
                k => got.extend_from_slice(&buf[..k]),
            }
        }
        got
    });
    let mut writer = stream;
    let mut rest = &data[..];
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(100_000));
        writer.write_all(&rest[..n]).unwrap();
        rest = &rest[n..];
    }
    writer.shutdown(Shutdown::Write).unwrap();
    let got = collector.join().unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "echo differs from what was sent");
}

fn serves_128_concurrent_clients_each_its_own_bytes(engine: Engine) {
    let server = TestServer::loopback(engine);
    let clients: Vec<_> = (0..128u32)
        .map(|i| {
            let addr = server.addr;
            thread::spawn(move || {
                let data: Vec<u8> = format!("client {i} ")
                    .into_bytes()
                    .into_iter()
                    .cycle()
                    .take(1000 + i as usize * 37)
                    .collect();
                let mut s = connect(addr);
                // Interleave: write half, read it back, then the rest.
                let half = data.len() / 2;
                s.write_all(&data[..half]).unwrap();
                assert_eq!(read_n(&mut s, half), &data[..half]);
                assert_eq!(round_trip(s, data[half..].to_vec()), &data[half..]);
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client saw its own bytes");
    }
    wait_for("all connections to end", || {
        server.handle.stats().active == 0
    });
    let stats = server.stop();
    assert_eq!(stats.accepted, 128);
    let expected: u64 = (0..128u64).map(|i| 1000 + i * 37).sum();
    assert_eq!(stats.bytes_echoed, expected);
    // The counters add up.
    assert_eq!((stats.closed, stats.active), (128, 0));
    assert_eq!(stats.bytes_received, expected);
}

fn half_close_gets_everything_back_then_eof(engine: Engine) {
    let server = TestServer::loopback(engine);
    let mut c = connect(server.addr);
    c.write_all(b"first ").unwrap();
    c.write_all(b"second").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"first second");
}

fn ipv6_loopback(engine: Engine) {
    let server =
        TestServer::start(builder(engine).tcp(("::1".parse::<std::net::IpAddr>().unwrap(), 0)));
    assert!(server.addr.is_ipv6());
    assert_eq!(
        round_trip(connect(server.addr), b"over v6".to_vec()),
        b"over v6"
    );
}

fn dual_stack_on_unspecified_ipv6_accepts_ipv4_and_ipv6(engine: Engine) {
    let server =
        TestServer::start(builder(engine).tcp(("::".parse::<std::net::IpAddr>().unwrap(), 0)));
    let port = server.addr.port();
    let v4: SocketAddr = ([127, 0, 0, 1], port).into();
    let v6: SocketAddr = ("::1".parse::<std::net::IpAddr>().unwrap(), port).into();
    assert_eq!(round_trip(connect(v4), b"v4".to_vec()), b"v4");
    assert_eq!(round_trip(connect(v6), b"v6".to_vec()), b"v6");
}

fn port_zero_reports_the_real_port(engine: Engine) {
    let server = TestServer::loopback(engine);
    assert_ne!(server.addr.port(), 0);
    assert_eq!(round_trip(connect(server.addr), b"x".to_vec()), b"x");
}

fn serves_an_existing_std_listener(engine: Engine) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TestServer::start(builder(engine).tcp_listener(listener));
    assert_eq!(server.addr, addr);
    assert_eq!(round_trip(connect(addr), b"adopted".to_vec()), b"adopted");
}

fn binding_a_busy_port_names_the_address(engine: Engine) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = builder(engine).tcp(addr).build().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&format!("tcp {addr}")), "{err}");
}

fn invalid_configurations_are_refused(engine: Engine) {
    assert!(builder(engine).build().is_err());
    assert!(builder(engine)
        .tcp(([127, 0, 0, 1], 0))
        .max_connections(0)
        .build()
        .is_err());
    assert!(builder(engine)
        .tcp(([127, 0, 0, 1], 0))
        .idle_timeout(Some(Duration::ZERO))
        .build()
        .is_err());
}

fn max_connections_applies_backpressure_and_loses_nothing(engine: Engine) {
    let server = TestServer::start(builder(engine).tcp(([127, 0, 0, 1], 0)).max_connections(2));
    let mut first = connect(server.addr);
    let mut second = connect(server.addr);
    first.write_all(b"1").unwrap();
    second.write_all(b"2").unwrap();
    assert_eq!(read_n(&mut first, 1), b"1");
    assert_eq!(read_n(&mut second, 1), b"2");

    // The third client connects (the kernel completes the handshake into
    // the backlog) but is not served while both slots are taken.
    let mut third = connect(server.addr);
    third.write_all(b"waiting").unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let early = third.read(&mut b);
    assert!(
        early.is_err(),
        "third client was served while at the limit: {early:?}"
    );
    assert_eq!(server.handle.stats().active, 2);
    assert_eq!(server.handle.stats().accepted, 2);

    // A slot frees: the third client is served, its early bytes intact.
    drop(first);
    third.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(read_n(&mut third, 7), b"waiting");
    assert_eq!(server.handle.stats().accepted, 3);
    second.write_all(b"still").unwrap();
    assert_eq!(read_n(&mut second, 5), b"still");
}

fn idle_timeout_closes_silent_clients_only(engine: Engine) {
    let server = TestServer::start(
        builder(engine)
            .tcp(([127, 0, 0, 1], 0))
            .idle_timeout(Some(Duration::from_millis(300))),
    );
    let mut silent = connect(server.addr);
    let mut chatty = connect(server.addr);
    let start = Instant::now();
    // The chatty client keeps talking, more often than the timeout.
    while start.elapsed() < Duration::from_millis(900) {
        chatty.write_all(b"tick").unwrap();
        assert_eq!(read_n(&mut chatty, 4), b"tick");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        is_closed(&mut silent, DEADLINE),
        "silent client was not closed"
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    chatty.write_all(b"alive").unwrap();
    assert_eq!(read_n(&mut chatty, 5), b"alive");
    wait_for("the idle timeout to be counted", || {
        server.handle.stats().idle_timeouts == 1
    });
}

fn shutdown_unblocks_run_with_idle_clients_connected(engine: Engine) {
    let server = TestServer::loopback(engine);
    let mut idle: Vec<_> = (0..5).map(|_| connect(server.addr)).collect();
    wait_for("clients to be accepted", || {
        server.handle.stats().active == 5
    });
    assert!(!server.handle.is_shutdown());
    let handle = server.handle.clone();
    let stats = server.stop(); // asserts run() returns within the deadline
    assert!(handle.is_shutdown());
    assert_eq!(stats.active, 0);
    for c in &mut idle {
        assert!(is_closed(c, DEADLINE));
    }
}

fn shutdown_echoes_what_was_already_sent(engine: Engine) {
    let server = TestServer::loopback(engine);
    let mut c = connect(server.addr);
    c.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut c, 4), b"ping");
    c.write_all(b"in flight").unwrap();
    wait_for("the bytes to be echoed", || {
        server.handle.stats().bytes_echoed == 13
    });
    let port = server.addr;
    server.stop();
    assert_eq!(read_n(&mut c, 9), b"in flight");
    assert!(is_closed(&mut c, DEADLINE));
    // The listener is gone: the port can be bound again.
    TcpListener::bind(port).expect("port is free after shutdown");
}

fn shutdown_while_waiting_for_a_slot(engine: Engine) {
    let server = TestServer::start(builder(engine).tcp(([127, 0, 0, 1], 0)).max_connections(1));
    let _held = connect(server.addr);
    let _queued = connect(server.addr);
    wait_for("the first client to be served", || {
        server.handle.stats().active == 1
    });
    server.stop();
}

fn a_reset_client_does_not_disturb_others(engine: Engine) {
    let server = TestServer::loopback(engine);
    let mut steady = connect(server.addr);
    for _ in 0..20 {
        let s = socket2::Socket::from(connect(server.addr));
        (&s).write_all(b"bye").unwrap();
        // Linger 0: close sends RST instead of FIN.
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    }
    steady.write_all(b"still here").unwrap();
    assert_eq!(read_n(&mut steady, 10), b"still here");
}

fn shutdown_closes_a_client_that_never_reads_after_the_grace_period(engine: Engine) {
    let server = TestServer::start(
        builder(engine)
            .tcp(([127, 0, 0, 1], 0))
            .shutdown_grace(Duration::from_millis(200))
            .write_timeout(None),
    );
    // Fill every buffer between us and the server, then never read: the
    // server's thread is stuck in a write that only a forced close ends.
    let mut s = connect(server.addr);
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < DEADLINE && s.write_all(&[3; 65536]).is_ok() {}
    wait_for("the server to be blocked writing", || {
        server.handle.stats().bytes_echoed > 0
    });
    let stats = server.stop(); // returns within the deadline, or panics
    assert_eq!(stats.active, 0);
    assert!(is_closed(&mut drained(s), DEADLINE));
}

/// Reads and discards whatever is buffered, so EOF or a reset shows next.
fn drained(mut s: std::net::TcpStream) -> std::net::TcpStream {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    s
}

/// Each engine serves where it says, `auto` on both at once (threads for
/// the first two, event loops for the rest), and shutdown drains every
/// engine: each client gets what it sent before the request, then EOF.
fn connections_are_served_on_their_engine_and_shutdown_drains_all(engine: Engine) {
    let server = TestServer::loopback(engine);
    let mut clients: Vec<_> = (0..5).map(|_| connect(server.addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("hello {i}");
        c.write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_n(c, msg.len()), msg.as_bytes());
    }
    let stats = server.handle.stats();
    let expected = match engine {
        Engine::Threads => (5, 0, 0),
        Engine::Events => (0, 5, 0),
        Engine::Uring => (0, 0, 5),
        // Under auto, what threads do not serve goes to io_uring loops
        // where there are any.
        _ if cfg!(all(target_os = "linux", feature = "uring")) => (
            AUTO_THREAD_CONNECTIONS as u64,
            0,
            5 - AUTO_THREAD_CONNECTIONS as u64,
        ),
        _ => (
            AUTO_THREAD_CONNECTIONS as u64,
            5 - AUTO_THREAD_CONNECTIONS as u64,
            0,
        ),
    };
    let placed = (
        stats.active_threads,
        stats.active_events,
        stats.active_uring,
    );
    assert_eq!(placed, expected);
    assert_eq!(stats.active, 5);
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("bye {i}").as_bytes()).unwrap();
    }
    // Every byte written is in the server's receive buffers before the
    // request: they come back once both ends have seen them echoed.
    wait_for("the goodbyes to be echoed", || {
        server.handle.stats().bytes_echoed == 5 * 7 + 5 * 5
    });
    let stats = server.stop();
    assert_eq!(
        (
            stats.active,
            stats.active_threads,
            stats.active_events,
            stats.active_uring
        ),
        (0, 0, 0, 0)
    );
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, format!("bye {i}").as_bytes());
    }
}

fn a_full_server_reclaims_the_idlest_slot_for_a_waiting_client(engine: Engine) {
    let server = TestServer::start(
        builder(engine)
            .tcp(([127, 0, 0, 1], 0))
            .max_connections(2)
            .reclaim_idle(Some(Duration::from_millis(300))),
    );
    let addr = server.addr;
    reclaims_the_idlest_slot(server, || connect(addr));
}

/// A client whose receive buffer is asked to be `size` before it connects
/// (so that the window it offers stays small).
fn connect_with_receive_buffer(addr: SocketAddr, size: usize) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(size).unwrap();
    socket.connect_timeout(&addr.into(), DEADLINE).unwrap();
    let stream = std::net::TcpStream::from(socket);
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// Bulk echoes, spliced or not: a connection whose echo is stalled (its
/// client sends but does not read yet) is never reclaimed, however long it
/// waits; one that has had its bulk echoed in full and gone quiet is.
fn reclaim_spares_a_stalled_bulk_echo_and_takes_a_finished_one(engine: Engine) {
    for splice in [true, false] {
        let server = TestServer::start(
            builder(engine)
                .tcp(([127, 0, 0, 1], 0))
                .splice(splice)
                .max_connections(2)
                .reclaim_idle(Some(Duration::from_millis(300))),
        );
        // More than the server's socket buffers hold, with a small receive
        // buffer here: the server's echo stalls for sure.
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let stalled = connect_with_receive_buffer(server.addr, 64 << 10);
        let mut writer = stalled.try_clone().unwrap();
        let sent = data.clone();
        let writing = std::thread::spawn(move || writer.write_all(&sent));
        // Stalled for good once the buffers are full: from then on its
        // last write is older than anything the finished one does, and only
        // its unwritten echo says it is busy.
        let mut echoed = server.handle.stats().bytes_echoed;
        wait_for("the stalled echo to stop moving", || {
            std::thread::sleep(Duration::from_millis(300));
            let now = server.handle.stats().bytes_echoed;
            std::mem::replace(&mut echoed, now) == now && now > 0
        });
        let mut finished = connect(server.addr);
        finished.write_all(&data[..256 << 10]).unwrap();
        assert_eq!(read_n(&mut finished, 256 << 10), &data[..256 << 10]);
        std::thread::sleep(Duration::from_millis(500));
        let mut waiting = connect(server.addr);
        waiting.write_all(b"w").unwrap();
        assert_eq!(read_n(&mut waiting, 1), b"w", "splice {splice}");
        assert!(
            is_closed(&mut finished, DEADLINE),
            "the finished echo was not reclaimed (splice {splice})"
        );
        // Nothing of the stalled echo is lost.
        let mut reader = stalled;
        assert_eq!(read_n(&mut reader, data.len()), data, "splice {splice}");
        writing.join().unwrap().unwrap();
        assert_eq!(server.stop().reclaimed, 1, "splice {splice}");
    }
}

engine_tests! {
    a_full_server_reclaims_the_idlest_slot_for_a_waiting_client,
    reclaim_spares_a_stalled_bulk_echo_and_takes_a_finished_one,
    connections_are_served_on_their_engine_and_shutdown_drains_all,
    echoes_a_line,
    echoes_every_byte_value_including_nul,
    echoes_one_mebibyte_written_in_random_chunks,
    serves_128_concurrent_clients_each_its_own_bytes,
    half_close_gets_everything_back_then_eof,
    ipv6_loopback,
    dual_stack_on_unspecified_ipv6_accepts_ipv4_and_ipv6,
    port_zero_reports_the_real_port,
    serves_an_existing_std_listener,
    binding_a_busy_port_names_the_address,
    invalid_configurations_are_refused,
    max_connections_applies_backpressure_and_loses_nothing,
    idle_timeout_closes_silent_clients_only,
    shutdown_unblocks_run_with_idle_clients_connected,
    shutdown_echoes_what_was_already_sent,
    shutdown_while_waiting_for_a_slot,
    a_reset_client_does_not_disturb_others,
    shutdown_closes_a_client_that_never_reads_after_the_grace_period,
}

/// The listen backlog is what was asked for, and the default otherwise
/// (read back with `ss`, which shows a listener's backlog as its Send-Q).
#[test]
fn the_listen_backlog_is_what_was_asked_for() {
    if std::process::Command::new("ss").arg("-V").output().is_err() {
        eprintln!("skipped: no `ss` (iproute2) on this machine");
        return;
    }
    for (asked, want) in [(Some(7), 7), (None, echo_server::DEFAULT_BACKLOG)] {
        let b = builder(Engine::Threads).tcp(([127, 0, 0, 1], 0));
        let server = TestServer::start(match asked {
            Some(n) => b.backlog(n),
            None => b,
        });
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", server.addr.port())])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            fields.get(2).copied(),
            Some(want.to_string().as_str()),
            "{text}"
        );
        server.stop();
    }
}
