//! UDP echo over loopback: one datagram in, the same datagram back, and the
//! filters that keep the server from being abused.

mod support;

use echo_server::{RateLimit, Server};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;
use support::*;

fn udp_server() -> TestServer {
    TestServer::start(Server::builder().udp(([127, 0, 0, 1], 0)))
}

/// A socket the caller bound is served as it is, on its address.
#[test]
fn serves_an_existing_std_socket() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let server = TestServer::start(Server::builder().udp_socket(socket));
    assert_eq!(server.udp_addr(), addr);
    let c = udp_client(addr, DEADLINE);
    assert_eq!(
        udp_round_trip(&c, b"adopted").as_deref(),
        Some(&b"adopted"[..])
    );
    assert_eq!(server.stop().datagrams_echoed, 1);
}

#[test]
fn small_empty_and_60000_byte_datagrams_come_back_whole() {
    let server = udp_server();
    let c = udp_client(server.udp_addr(), DEADLINE);
    assert_eq!(udp_round_trip(&c, b"ping").as_deref(), Some(&b"ping"[..]));
    assert_eq!(udp_round_trip(&c, b"").as_deref(), Some(&b""[..]));
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(udp_round_trip(&c, &big), Some(big.clone()));
    let max = vec![0xA5u8; 65_507]; // the IPv4 maximum
    assert_eq!(udp_round_trip(&c, &max), Some(max.clone()));
    let stats = server.stop();
    assert_eq!(stats.datagrams_echoed, 4);
    assert_eq!(stats.bytes_echoed, 4 + 60_000 + 65_507);
}

#[test]
fn several_clients_each_get_their_own_datagrams() {
    let server = udp_server();
    let addr = server.udp_addr();
    let clients: Vec<_> = (0..8u8)
        .map(|id| {
            thread::spawn(move || {
                let c = udp_client(addr, DEADLINE);
                for seq in 0..50u8 {
                    let msg = [id, seq, id ^ seq];
                    assert_eq!(udp_round_trip(&c, &msg).as_deref(), Some(&msg[..]));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client got its own replies");
    }
    assert_eq!(server.stop().datagrams_echoed, 400);
}

#[test]
fn ipv6_and_dual_stack() {
    let server = TestServer::start(Server::builder().udp((IpAddr::from([0u16; 8]), 0)));
    let port = server.udp_addr().port();
    let v6 = udp_client((std::net::Ipv6Addr::LOCALHOST, port).into(), DEADLINE);
    assert_eq!(udp_round_trip(&v6, b"six").as_deref(), Some(&b"six"[..]));
    let v4 = udp_client(([127, 0, 0, 1], port).into(), DEADLINE);
    assert_eq!(udp_round_trip(&v4, b"four").as_deref(), Some(&b"four"[..]));
}

#[cfg(target_os = "linux")]
#[test]
fn replies_leave_from_the_address_the_request_arrived_on() {
    // Bound to the wildcard; the request goes to 127.0.0.2. A connected
    // client socket only accepts a reply from exactly 127.0.0.2.
    for wildcard in [IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::from([0u16; 8])] {
        let server = TestServer::start(Server::builder().udp((wildcard, 0)));
        let to: SocketAddr = ([127, 0, 0, 2], server.udp_addr().port()).into();
        let c = udp_client(to, DEADLINE);
        assert_eq!(
            udp_round_trip(&c, b"from .2?").as_deref(),
            Some(&b"from .2?"[..]),
            "bound to {wildcard}"
        );
    }
}

#[test]
fn oversized_datagrams_are_dropped_whole_and_counted() {
    let server = TestServer::start(
        Server::builder()
            .udp(([127, 0, 0, 1], 0))
            .udp_max_datagram(1000),
    );
    let c = udp_client(server.udp_addr(), Duration::from_millis(500));
    assert_eq!(udp_round_trip(&c, &[1; 1001]), None);
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(udp_round_trip(&c, &[2; 1000]), Some(vec![2; 1000]));
    let stats = server.stop();
    assert_eq!((stats.too_large, stats.datagrams_echoed), (1, 1));
}

#[test]
fn a_source_over_its_rate_gets_no_answers() {
    let burst = 5 * (100 + 64); // five 100-byte datagrams
    let server = TestServer::start(
        Server::builder()
            .udp(([127, 0, 0, 1], 0))
            .udp_rate_limit(Some(RateLimit { rate: 1, burst })),
    );
    let c = udp_client(server.udp_addr(), DEADLINE);
    for _ in 0..20 {
        c.send(&[7; 100]).unwrap();
    }
    wait_for("20 datagrams judged", || {
        let s = server.handle.stats();
        s.datagrams_echoed + s.rate_limited == 20
    });
    let mut answered = 0;
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while c.recv(&mut [0; 200]).is_ok() {
        answered += 1;
    }
    assert_eq!(answered, 5);
    // Another source network has its own budget.
    let other = UdpSocket::bind("127.0.1.2:0").unwrap();
    other.connect(server.udp_addr()).unwrap();
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(udp_round_trip(&other, b"hi").as_deref(), Some(&b"hi"[..]));
    let stats = server.stop();
    assert_eq!((stats.datagrams_echoed, stats.rate_limited), (6, 15));
}

#[test]
fn the_default_rate_limit_answers_an_ordinary_burst_in_full() {
    let server = udp_server();
    let c = udp_client(server.udp_addr(), DEADLINE);
    // 300 datagrams and then ~3 MB, one at a time: nothing is refused.
    for i in 0..300u32 {
        let msg = i.to_be_bytes();
        assert_eq!(udp_round_trip(&c, &msg).as_deref(), Some(&msg[..]));
    }
    for _ in 0..50 {
        assert!(udp_round_trip(&c, &[9; 60_000]).is_some());
    }
    assert_eq!(server.stop().rate_limited, 0);
}

/// Binds a UDP socket to a privileged port, if this process may.
fn privileged_socket() -> Option<UdpSocket> {
    (900..1000).find_map(|port| UdpSocket::bind(("127.0.0.1", port)).ok())
}

#[test]
fn privileged_source_ports_get_no_answer_unless_the_filter_is_off() {
    let Some(sock) = privileged_socket() else {
        eprintln!("skipped: binding a port below 1024 needs privileges");
        return;
    };
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let filtered = udp_server();
    sock.send_to(b"loop?", filtered.udp_addr()).unwrap();
    wait_for("the refusal to be counted", || {
        filtered.handle.stats().refused_privileged_port == 1
    });
    assert!(
        sock.recv(&mut [0; 16]).is_err(),
        "answered a privileged port"
    );

    let lab = TestServer::start(
        Server::builder()
            .udp(([127, 0, 0, 1], 0))
            .udp_source_filter(false),
    );
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    sock.send_to(b"lab", lab.udp_addr()).unwrap();
    let mut buf = [0; 16];
    let (n, from) = sock.recv_from(&mut buf).expect("lab mode answers");
    assert_eq!((&buf[..n], from), (&b"lab"[..], lab.udp_addr()));
}

#[test]
fn tcp_and_udp_share_a_port_chosen_by_the_os() {
    let server = TestServer::start(
        Server::builder()
            .tcp(([127, 0, 0, 1], 0))
            .udp(([127, 0, 0, 1], 0)),
    );
    assert_eq!(server.addr.port(), server.udp_addr().port());
    let c = udp_client(server.udp_addr(), DEADLINE);
    assert_eq!(udp_round_trip(&c, b"u").as_deref(), Some(&b"u"[..]));
    assert_eq!(round_trip(connect(server.addr), b"t".to_vec()), b"t");
}

/// Only a TCP listener on the same address lends UDP its port: UDP on
/// another address with port 0 gets a port of its own. (Here the TCP
/// port is taken for UDP on that other address, so borrowing it fails.)
#[test]
fn udp_borrows_the_port_of_tcp_on_the_same_address_only() {
    for _ in 0..20 {
        let held = UdpSocket::bind("127.0.0.2:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let built = Server::builder()
            .tcp(([127, 0, 0, 1], port))
            .udp(([127, 0, 0, 2], 0))
            .build();
        let server = match built {
            Ok(server) => server,
            // TCP `port` on 127.0.0.1 happened to be busy: another port.
            Err(e) if e.to_string().contains("tcp 127.0.0.1") => continue,
            Err(e) => panic!("UDP on 127.0.0.2 took the TCP port: {e}"),
        };
        let udp = server
            .listen_addrs()
            .find_map(|a| match a {
                echo_server::ListenAddr::Udp(a) => Some(*a),
                _ => None,
            })
            .unwrap();
        assert_ne!(udp.port(), port);
        return;
    }
    panic!("no free TCP port found");
}

#[test]
fn shutdown_stops_an_idle_udp_server_promptly() {
    let server = udp_server();
    server.stop(); // asserts run() returns within the deadline
}

/// A datagram that says who sent it and which one it is: client id and
/// sequence number, then a pattern of both, `len` bytes in all (at least 1).
fn tagged(client: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut d = vec![client];
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend((0..len.saturating_sub(5)).map(|i| (i as u32 ^ seq ^ u32::from(client)) as u8));
    d.truncate(len.max(1));
    d
}

/// Batching never merges, splits, reorders (per source) or drops a datagram
/// that fits: 12 clients, 40 datagrams each of mixed sizes from 1 byte to the
/// IPv4 maximum, two in flight per client (a bounded load loopback does not
/// drop), each gets exactly its own datagrams back, in order.
#[test]
fn batches_keep_every_datagram_whole_in_order_and_to_its_sender() {
    let server = TestServer::start(
        Server::builder()
            .udp(([127, 0, 0, 1], 0))
            .udp_rate_limit(None)
            .udp_total_rate_limit(None),
    );
    let addr = server.udp_addr();
    const SIZES: [usize; 8] = [1, 5, 64, 1400, 1473, 9000, 32_768, 65_507];
    let clients: Vec<_> = (0..12u8)
        .map(|id| {
            thread::spawn(move || {
                let c = udp_client(addr, DEADLINE);
                let sizes = |seq: u32| SIZES[(seq as usize * 7 + id as usize) % SIZES.len()];
                let mut buf = vec![0u8; 70_000];
                let (mut sent, mut got) = (0u32, 0u32);
                while got < 40 {
                    while sent < 40 && sent - got < 2 {
                        c.send(&tagged(id, sent, sizes(sent))).unwrap();
                        sent += 1;
                    }
                    let n = c.recv(&mut buf).expect("a reply within the deadline");
                    assert_eq!(
                        &buf[..n],
                        &tagged(id, got, sizes(got))[..],
                        "client {id} #{got}"
                    );
                    got += 1;
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("each client got its own datagrams back");
    }
    let stats = server.stop();
    assert_eq!(stats.datagrams_echoed, 12 * 40);
    assert_eq!(stats.udp_kernel_drops, 0);
}

/// One burst mixing a good source, an oversized datagram, a privileged
/// port (when this process may bind one) and a source over its rate: only
/// the good ones are answered, and each refusal is counted under its reason.
#[test]
fn a_mixed_burst_answers_exactly_the_good_datagrams() {
    // Each datagram costs its length + 64: five empty ones fit the burst,
    // one 100-byte one does, a second does not.
    let server = TestServer::start(
        Server::builder()
            .udp(([127, 0, 0, 1], 0))
            .udp_max_datagram(1000)
            .udp_rate_limit(Some(RateLimit {
                rate: 1,
                burst: 5 * 64,
            })),
    );
    let addr = server.udp_addr();
    let good = udp_client(addr, DEADLINE);
    // Another /24: a budget of its own.
    let limited = UdpSocket::bind("127.0.1.2:0").unwrap();
    limited.connect(addr).unwrap();
    limited.set_read_timeout(Some(DEADLINE)).unwrap();
    let privileged = privileged_socket();
    for _ in 0..5 {
        good.send(b"").unwrap();
        limited.send(&[1; 100]).unwrap();
    }
    good.send(&[2; 1001]).unwrap();
    if let Some(p) = &privileged {
        p.send_to(b"loop?", addr).unwrap();
    }
    let expected_privileged = u64::from(privileged.is_some());
    wait_for("every datagram judged", || {
        let s = server.handle.stats();
        s.datagrams_echoed + s.rate_limited + s.too_large + s.refused_privileged_port
            == 11 + expected_privileged
    });
    let mut buf = [0u8; 2000];
    for _ in 0..5 {
        assert_eq!(
            good.recv(&mut buf).unwrap(),
            0,
            "the empty datagrams come back"
        );
    }
    assert_eq!(limited.recv(&mut buf).unwrap(), 100);
    for s in [&good, &limited] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(s.recv(&mut buf).is_err(), "one answer too many");
    }
    let stats = server.stop();
    assert_eq!(
        (stats.datagrams_echoed, stats.rate_limited, stats.too_large),
        (6, 4, 1)
    );
    assert_eq!(stats.refused_privileged_port, expected_privileged);
}

/// The rate limit is one budget per source for the whole server: a source
/// spraying two UDP addresses, each served by several threads, from many
/// sockets gets no more than one burst answered.
#[test]
fn a_source_spraying_sockets_and_threads_gets_one_budget() {
    let burst = 10 * (100 + 64); // ten 100-byte datagrams
    let server = TestServer::start(
        Server::builder()
            .udp(([127, 0, 0, 1], 0))
            .udp(([127, 0, 0, 1], 0))
            .udp_threads(3)
            .udp_rate_limit(Some(RateLimit { rate: 1, burst })),
    );
    let targets: Vec<SocketAddr> = server
        .addrs
        .iter()
        .filter_map(|a| match a {
            echo_server::ListenAddr::Udp(addr) => Some(*addr),
            _ => None,
        })
        .collect();
    assert_eq!(targets.len(), 2);
    // 8 client sockets per address: different ports hash to different
    // receive sockets of the SO_REUSEPORT group.
    let clients: Vec<UdpSocket> = (0..16)
        .map(|i| udp_client(targets[i % 2], Duration::from_millis(300)))
        .collect();
    for c in &clients {
        for _ in 0..5 {
            c.send(&[3; 100]).unwrap();
        }
    }
    wait_for("all 80 datagrams judged", || {
        let s = server.handle.stats();
        s.datagrams_echoed + s.rate_limited == 80
    });
    let stats = server.stop();
    assert_eq!((stats.datagrams_echoed, stats.rate_limited), (10, 70));
}

/// Datagrams the kernel drops for want of buffer (a tiny buffer and a
/// burst) are counted, so every datagram sent is accounted for.
#[cfg(target_os = "linux")]
#[test]
fn kernel_drops_are_counted() {
    let server = TestServer::start(
        Server::builder()
            .udp(([127, 0, 0, 1], 0))
            .udp_threads(1)
            .udp_buffer(4096)
            .udp_rate_limit(None)
            .udp_total_rate_limit(None),
    );
    let addr = server.udp_addr();
    let mut sent = 0u64;
    for _ in 0..20 {
        let senders: Vec<_> = (0..4)
            .map(|_| {
                thread::spawn(move || {
                    let c = udp_client(addr, DEADLINE);
                    for _ in 0..200 {
                        c.send(&[4; 1400]).unwrap();
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        sent += 800;
        // A socket's drop count arrives with the next datagram it takes:
        // probe until the last drops are reported.
        let probe = udp_client(addr, DEADLINE);
        wait_for("every datagram answered or counted as dropped", || {
            probe.send(b"probe").unwrap();
            sent += 1;
            thread::sleep(Duration::from_millis(20));
            let s = server.handle.stats();
            s.datagrams_echoed + s.udp_kernel_drops == sent
        });
        if server.handle.stats().udp_kernel_drops > 0 {
            break;
        }
    }
    assert!(
        server.handle.stats().udp_kernel_drops > 0,
        "16,000 datagrams into a 4 KiB buffer and not one dropped"
    );
}

/// What a flood from many source addresses got answered, through the real
/// binary.
struct Flood {
    /// Reply bytes the clients received.
    answered: u64,
    /// From the first datagram sent to the last reply read.
    elapsed: Duration,
    /// Replies from each source address, in order.
    per_source: Vec<u64>,
}

/// Sends `count` datagrams of `size` bytes from each of `sources` (each a
/// loopback address of its own, port chosen by the OS) to `server`,
/// round-robin, then reads every reply that comes. Bounded: the sends by
/// count, the reads by a quiet period and the deadline.
fn flood(server: SocketAddr, sources: &[Ipv4Addr], count: usize, size: usize) -> Flood {
    let clients: Vec<UdpSocket> = sources
        .iter()
        .map(|&ip| {
            let c = UdpSocket::bind((ip, 0)).expect("127.0.0.0/8 is all loopback on Linux");
            c.connect(server).unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let payload = vec![0x5a; size];
    let start = std::time::Instant::now();
    for _ in 0..count {
        for c in &clients {
            // A full send buffer is the client's problem, not the server's:
            // such a datagram was never offered.
            let _ = c.send(&payload);
        }
    }
    let mut per_source = vec![0u64; clients.len()];
    let mut buf = vec![0u8; 70_000];
    let mut last_reply = std::time::Instant::now();
    // Non-blocking reads: the wait is bounded by the quiet period.
    while last_reply.elapsed() < Duration::from_millis(500) && start.elapsed() < DEADLINE {
        let mut got = false;
        for (i, c) in clients.iter().enumerate() {
            while let Ok(n) = c.recv(&mut buf) {
                per_source[i] += n as u64;
                got = true;
            }
        }
        if got {
            last_reply = std::time::Instant::now();
        } else {
            thread::sleep(Duration::from_millis(5));
        }
    }
    Flood {
        answered: per_source.iter().sum(),
        elapsed: start.elapsed().saturating_sub(Duration::from_millis(500)),
        per_source,
    }
}

/// The most a token bucket of `rate` and `burst` lets through in `elapsed`
/// for datagrams of `size` bytes, in reply bytes: the burst and the refill,
/// plus one datagram, doubled and more for a shared, slow machine.
fn budget(rate: u64, burst: u64, elapsed: Duration, size: usize) -> u64 {
    let cost = size as f64 + 64.0;
    let tokens = burst as f64 + rate as f64 * (elapsed.as_secs_f64() + 0.5) + cost;
    // Tokens to reply bytes: each datagram answered used `cost` of them.
    (2.0 * tokens * size as f64 / cost) as u64
}

/// The echo-server binary with UDP on a free port, and that port.
#[cfg(unix)]
fn udp_binary(options: &[&str]) -> (Binary, SocketAddr) {
    let mut args = vec!["--udp"];
    args.extend_from_slice(options);
    args.push("0");
    let mut server = Binary::spawn(&args);
    let addr = server.listening("udp").parse().expect("an address");
    (server, addr)
}

/// 100 sources of one /24 (forged sources rotating through a victim's
/// network, say) are answered at about one budget between them, not 100;
/// a source of another /24 still has its own, untouched budget.
#[cfg(target_os = "linux")]
#[test]
fn a_network_of_sources_shares_one_budget() {
    let (rate, burst) = (65_536, 65_536);
    let (mut server, addr) =
        udp_binary(&["--udp-rate=64K", "--udp-burst=64K", "--udp-total-rate=0"]);
    let sources: Vec<Ipv4Addr> = (10..110).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let f = flood(addr, &sources, 20, 1000);
    let most = budget(rate, burst, f.elapsed, 1000);
    assert!(
        f.answered <= most,
        "{} of 2,000,000 bytes answered in {:?}: more than one budget ({most})",
        f.answered,
        f.elapsed
    );
    assert!(f.answered >= 30_000, "not even the burst: {}", f.answered);
    let other = UdpSocket::bind("127.0.1.10:0").unwrap();
    other.connect(addr).unwrap();
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(
        udp_round_trip(&other, &[1; 1000]).as_deref(),
        Some(&[1u8; 1000][..]),
        "another /24 lost its budget too"
    );
    server.stop();
    assert!(
        server.summary().contains(" rate limited"),
        "{}",
        server.summary()
    );
}

/// `--udp-prefix 32,128`: a budget per address again, so the same 100
/// sources each get their (smaller) load answered in full.
#[cfg(target_os = "linux")]
#[test]
fn a_prefix_of_32_gives_each_address_its_own_budget() {
    let (mut server, addr) = udp_binary(&[
        "--udp-rate=64K",
        "--udp-burst=64K",
        "--udp-total-rate=0",
        "--udp-prefix=32,128",
    ]);
    let sources: Vec<Ipv4Addr> = (10..110).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    // 10 KB per source: well within each address's 64 KiB burst.
    let f = flood(addr, &sources, 10, 1000);
    let short: Vec<_> = f.per_source.iter().filter(|&&n| n < 10_000).collect();
    assert!(
        short.len() <= 5,
        "{} of 100 addresses were not answered in full: {short:?}",
        short.len()
    );
    server.stop();
    assert!(
        !server.summary().contains("rate limited"),
        "{}",
        server.summary()
    );
}

/// `--udp-total-rate` caps the sum over networks: 100 sources, each of its
/// own /24 and each far below its own budget, are answered at about the
/// server-wide budget in all, the rest counted under its own reason.
#[cfg(target_os = "linux")]
#[test]
fn the_server_wide_rate_caps_the_sum_over_networks() {
    let (rate, burst) = (65_536, 65_536);
    let (mut server, addr) = udp_binary(&[
        "--udp-rate=1M",
        "--udp-burst=1M",
        "--udp-total-rate=64K",
        "--udp-total-burst=64K",
    ]);
    let sources: Vec<Ipv4Addr> = (10..110).map(|i| Ipv4Addr::new(127, 0, i, 1)).collect();
    let f = flood(addr, &sources, 20, 1000);
    let most = budget(rate, burst, f.elapsed, 1000);
    assert!(
        f.answered <= most,
        "{} of 2,000,000 bytes answered in {:?}: more than the server-wide budget ({most})",
        f.answered,
        f.elapsed
    );
    assert!(f.answered >= 30_000, "not even the burst: {}", f.answered);
    server.stop();
    let summary = server.summary();
    assert!(summary.contains("over the server-wide rate"), "{summary}");
    assert!(
        !summary.contains(" rate limited"),
        "no network was over its own: {summary}"
    );
}

/// A zero burst would answer nothing: a usage error, exit 2.
#[test]
fn a_zero_burst_is_a_usage_error() {
    for option in ["--udp-burst=0", "--udp-total-burst=0"] {
        let (status, stderr) = run_binary(&["--udp", option, "0"]);
        assert_eq!(status.code(), Some(2), "{option}: {stderr}");
        assert!(stderr.contains("must be above 0"), "{option}: {stderr}");
    }
    let (status, stderr) = run_binary(&["--udp", "--udp-prefix=33,56", "0"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("IPv4 0-32"), "{stderr}");
}

/// A burst below what the largest datagram answered costs: one start-up
/// line says which datagrams will never be answered; and indeed a datagram
/// over that size is not, while one at it is.
#[cfg(unix)]
#[test]
fn a_burst_too_small_for_the_largest_datagram_is_warned_about() {
    let (mut server, addr) = udp_binary(&["--udp-burst=1000", "--udp-rate=1M"]);
    // Logged before the `listening on` lines, which udp_binary waited for.
    let warning = server.line_containing("will never be answered");
    assert!(warning.contains("datagrams over 936 bytes"), "{warning}");
    let c = udp_client(addr, Duration::from_millis(500));
    assert_eq!(udp_round_trip(&c, &[1; 937]), None);
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(udp_round_trip(&c, &[2; 936]), Some(vec![2; 936]));
    server.stop();
    assert_eq!(server.count_lines("will never be answered"), 1);
    // Large enough: no warning.
    let (mut quiet, _) = udp_binary(&["--udp-max-datagram=1000"]);
    quiet.stop();
    assert!(!quiet.logged("will never be answered"), "{:#?}", quiet.seen);
}

/// Sends `datagrams` (by client index) in windows of `window` and reads
/// every reply of a window before the next, so no socket buffer on
/// loopback overflows; returns what each client got back, in order.
fn bursts(
    clients: &[UdpSocket],
    datagrams: &[(usize, Vec<u8>)],
    window: usize,
) -> Vec<Vec<Vec<u8>>> {
    let mut got = vec![Vec::new(); clients.len()];
    let mut buf = vec![0u8; 70_000];
    for chunk in datagrams.chunks(window) {
        for (who, d) in chunk {
            clients[*who].send(d).unwrap();
        }
        for (who, c) in clients.iter().enumerate() {
            for _ in chunk.iter().filter(|d| d.0 == who) {
                let n = c.recv(&mut buf).expect("a reply within the deadline");
                got[who].push(buf[..n].to_vec());
            }
        }
    }
    // Nothing more: one reply per datagram.
    for c in clients {
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(c.recv(&mut buf).is_err(), "a reply too many");
    }
    got
}

/// Replies to a burst of same-size datagrams from one source leave the
/// server merged (UDP_SEGMENT, where the kernel has it) and arrive as the
/// datagrams they answer: 200 × 1000 bytes, each numbered, each answered
/// once with its own bytes, in order; the counters as unmerged.
#[test]
fn a_burst_of_same_size_datagrams_is_answered_one_for_one() {
    let server = TestServer::start(
        Server::builder()
            .udp(([127, 0, 0, 1], 0))
            .udp_rate_limit(None)
            .udp_total_rate_limit(None),
    );
    let c = udp_client(server.udp_addr(), DEADLINE);
    let sent: Vec<(usize, Vec<u8>)> = (0..200).map(|seq| (0, tagged(0, seq, 1000))).collect();
    let got = bursts(&[c], &sent, 50);
    let want: Vec<Vec<u8>> = sent.iter().map(|d| d.1.clone()).collect();
    assert_eq!(got[0], want);
    let stats = server.stop();
    assert_eq!(stats.datagrams_echoed, 200);
    assert_eq!(stats.bytes_echoed, 200 * 1000);
}

/// Two sources interleaved, sizes changing every few datagrams (a
/// shorter one after a run, empty ones, the IPv4 maximum): each source
/// gets exactly its own datagrams back, in order, and nothing else.
#[test]
fn interleaved_sources_and_mixed_sizes_are_never_merged_across() {
    let server = TestServer::start(
        Server::builder()
            .udp(([127, 0, 0, 1], 0))
            .udp_rate_limit(None)
            .udp_total_rate_limit(None),
    );
    let clients = [
        udp_client(server.udp_addr(), DEADLINE),
        udp_client(server.udp_addr(), DEADLINE),
    ];
    const SIZES: [usize; 12] = [1000, 1000, 1000, 999, 1000, 7, 7, 0, 0, 1500, 65_507, 64];
    let mut sent = Vec::new();
    for seq in 0..120u32 {
        let a = SIZES[seq as usize % SIZES.len()];
        let b = SIZES[(seq as usize + 5) % SIZES.len()];
        // Client 0 twice in a row, then client 1: runs of one source
        // broken by the other.
        sent.push((0, tagged(0, 2 * seq, a)));
        sent.push((0, tagged(0, 2 * seq + 1, a)));
        sent.push((1, tagged(1, seq, b)));
    }
    // `tagged` makes at least 1 byte; empty datagrams too.
    for d in sent.iter_mut().filter(|d| d.1.len() == 1) {
        d.1.clear();
    }
    let got = bursts(&clients, &sent, 24);
    for (who, got) in got.iter().enumerate() {
        let want: Vec<Vec<u8>> = sent
            .iter()
            .filter(|d| d.0 == who)
            .map(|d| d.1.clone())
            .collect();
        assert_eq!(*got, want, "client {who}");
    }
    let stats = server.stop();
    assert_eq!(stats.datagrams_echoed, sent.len() as u64);
    let bytes: usize = sent.iter().map(|d| d.1.len()).sum();
    assert_eq!(stats.bytes_echoed, bytes as u64);
}
