//! The Prometheus endpoint: scraped over loopback while clients are served,
//! its numbers are the server's own counters, and bad requests get a 4xx
//! without disturbing the echo service.

mod support;

use echo_server::metrics::{MetricsServer, MAX_CONNECTIONS, THREADS, TIMEOUT};
use echo_server::Engine;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Sends `request` as is and returns the status code and the body.
fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

fn scrape(addr: SocketAddr) -> HashMap<String, u64> {
    let (status, body) = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_owned(), value.parse().expect("an integer"))
        })
        .collect()
}

#[test]
fn scraped_while_serving_the_numbers_are_the_servers_counters() {
    let server = TestServer::start(builder(Engine::Auto).tcp(([127, 0, 0, 1], 0)));
    let metrics = MetricsServer::start(([127, 0, 0, 1], 0).into(), server.handle.clone()).unwrap();
    let addr = server.addr;
    let clients: Vec<_> = (0..8)
        .map(|i| {
            thread::spawn(move || {
                for _ in 0..20 {
                    let data = vec![i as u8; 100];
                    assert_eq!(round_trip(connect(addr), data.clone()), data);
                }
            })
        })
        .collect();
    // Scrapes during the traffic are well formed and never go backwards.
    let mut last = 0;
    for _ in 0..5 {
        let m = scrape(metrics.local_addr());
        let accepted = m["echo_server_connections_accepted_total"];
        assert!(accepted >= last);
        last = accepted;
    }
    for c in clients {
        c.join().unwrap();
    }
    // Closing a connection moves several counters (active, closed, its
    // engine's gauge), not at one instant: wait until all have moved.
    wait_for("every connection closed", || {
        let s = server.handle.stats();
        s.active == 0 && s.closed == s.accepted && s.active_threads == 0 && s.active_events == 0
    });
    let stats = server.handle.stats();
    let m = scrape(metrics.local_addr());
    assert_eq!(m["echo_server_connections_accepted_total"], stats.accepted);
    assert_eq!(m["echo_server_connections_accepted_total"], 160);
    assert_eq!(m["echo_server_connections_closed_total"], stats.closed);
    assert_eq!(m["echo_server_bytes_received_total"], 16_000);
    assert_eq!(m["echo_server_bytes_echoed_total"], stats.bytes_echoed);
    assert_eq!(m["echo_server_active_connections{engine=\"threads\"}"], 0);
    assert_eq!(m["echo_server_active_connections{engine=\"events\"}"], 0);
    assert_eq!(m["echo_server_refused_total{reason=\"rate_limited\"}"], 0);
}

#[test]
fn bad_requests_get_a_4xx_and_the_echo_goes_on() {
    let server = TestServer::loopback(Engine::Events);
    let metrics = MetricsServer::start(([127, 0, 0, 1], 0).into(), server.handle.clone()).unwrap();
    let at = metrics.local_addr();
    let (status, _) = http(
        at,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 404);
    let (status, _) = http(
        at,
        "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 405);
    let (status, _) = http(at, "\x00\x01 garbage \r\n\r\n");
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(round_trip(connect(server.addr), b"fine".to_vec()), b"fine");
    assert_eq!(scrape(at)["echo_server_connections_accepted_total"], 1);
}

/// HEAD gets the headers of GET; the content type is Prometheus' text
/// format; dropping the endpoint closes it.
#[test]
fn head_content_type_and_drop() {
    let server = TestServer::loopback(Engine::Threads);
    let metrics = MetricsServer::start(([127, 0, 0, 1], 0).into(), server.handle.clone()).unwrap();
    let at = metrics.local_addr();
    assert_eq!(
        format!("{metrics:?}"),
        format!("MetricsServer {{ addr: {at}, .. }}")
    );
    let mut s = connect(at);
    s.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{response}"
    );
    // Dropping joins the endpoint's thread, which owns the listener.
    drop(metrics);
    assert!(std::net::TcpStream::connect(at).is_err());
}

/// Everything the server sends until it closes (or resets, or the read
/// timeout passes), as text.
fn read_all(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A full endpoint gives the slot of its oldest connection to a new one: a
/// scrape gets through however many idle connections came first.
#[test]
fn a_full_endpoint_gives_the_oldest_slot_to_a_new_client() {
    let server = TestServer::loopback(Engine::Events);
    let metrics = MetricsServer::start(([127, 0, 0, 1], 0).into(), server.handle.clone()).unwrap();
    let at = metrics.local_addr();
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(connect(at));
        // Each accepted before the next connects, so the first is the oldest.
        let (status, _) = http(at, "GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
    }
    assert_eq!(scrape(at)["echo_server_connections_accepted_total"], 0);
    assert!(
        is_closed(&mut idle[0], DEADLINE),
        "the oldest kept its slot"
    );
    let newest = idle.last_mut().unwrap();
    assert!(
        !is_closed(newest, Duration::from_millis(200)),
        "a newer one was closed"
    );
}

/// A flood of connections from one address displaces its own oldest, not
/// a client of another address that came first: a scraper keeps its slot
/// however fast another address connects (a flood of ~900 connections a
/// second once stopped every scrape).
#[test]
fn a_flood_from_one_address_displaces_only_its_own_connections() {
    let server = TestServer::loopback(Engine::Events);
    let metrics = MetricsServer::start(([127, 0, 0, 1], 0).into(), server.handle.clone()).unwrap();
    let at = metrics.local_addr();
    let from = |last: u8| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, last], 0)).into())
            .unwrap();
        s.connect_timeout(&at.into(), DEADLINE).unwrap();
        let s = TcpStream::from(s);
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s
    };
    // The scraper is the oldest connection of all.
    let mut scraper = from(1);
    assert_eq!(http(at, "GET /healthz HTTP/1.1\r\n\r\n").0, 200);
    let mut flood: Vec<TcpStream> = Vec::new();
    for _ in 0..3 * MAX_CONNECTIONS {
        flood.push(from(2));
    }
    // The last of the flood is surely admitted once this is answered.
    let mut probe = from(2);
    probe.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    assert!(read_all(&mut probe).starts_with("HTTP/1.1 200 "));
    scraper.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let answer = read_all(&mut scraper);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(
        is_closed(&mut flood[0], DEADLINE),
        "the flood's oldest kept its slot"
    );
}

/// A silent client and one sending a byte every half second are each closed
/// once TIMEOUT has passed without a whole request head. Each on an
/// endpoint of its own: the slow client's bytes would wake the loop that
/// must close the silent one, which nothing else wakes.
#[test]
fn slow_and_silent_clients_are_closed_after_the_timeout() {
    let server = TestServer::loopback(Engine::Events);
    let metrics = MetricsServer::start(([127, 0, 0, 1], 0).into(), server.handle.clone()).unwrap();
    let other = MetricsServer::start(([127, 0, 0, 1], 0).into(), server.handle.clone()).unwrap();
    let at = metrics.local_addr();
    let slow_at = other.local_addr();
    let start = Instant::now();
    let mut silent = connect(at);
    let slow = thread::spawn(move || {
        let mut s = connect(slow_at);
        for &b in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if s.write_all(&[b]).is_err() || start.elapsed() > DEADLINE {
                break;
            }
            thread::sleep(Duration::from_millis(500));
        }
        start.elapsed()
    });
    assert_eq!(read_all(&mut silent), "", "the silent client got an answer");
    let silent_for = start.elapsed();
    let slow_for = slow.join().unwrap();
    assert!(silent_for >= TIMEOUT - Duration::from_millis(100));
    assert!(silent_for < DEADLINE, "the silent client was never closed");
    assert!(slow_for < DEADLINE, "the slow client was never closed");
    // Meanwhile and after, scrapes are answered.
    assert_eq!(http(at, "GET /readyz HTTP/1.1\r\n\r\n").0, 200);
    assert_eq!(http(slow_at, "GET /readyz HTTP/1.1\r\n\r\n").0, 200);
}

/// A signal handled on the endpoint's thread interrupts its wait for
/// events (EINTR): it waits again and goes on serving.
#[cfg(target_os = "linux")]
#[test]
fn a_signal_handled_on_the_endpoints_thread_does_not_stop_it() {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: installs a handler that does nothing, without SA_RESTART (a
    // wait for events is never restarted anyway).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
            0
        );
    }
    let server = TestServer::loopback(Engine::Events);
    let metrics = MetricsServer::start(([127, 0, 0, 1], 0).into(), server.handle.clone()).unwrap();
    let at = metrics.local_addr();
    assert_eq!(http(at, "GET /healthz HTTP/1.1\r\n\r\n").0, 200);
    // Every endpoint thread of this process: all of them handle it alike.
    for _ in 0..3 {
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.trim_end() != "echo-metrics" {
                continue;
            }
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            // SAFETY: a signal to one thread of this process, handled.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR2) };
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http(at, "GET /healthz HTTP/1.1\r\n\r\n").0, 200);
    assert_eq!(scrape(at)["echo_server_connections_accepted_total"], 0);
}

/// The binary with `--metrics 0` and the echo port 0 (plus `args`), with the
/// echo and metrics addresses.
fn spawn_with_metrics(args: &[&str]) -> (Binary, SocketAddr, SocketAddr) {
    let mut all = vec!["--metrics", "0"];
    all.extend_from_slice(args);
    all.push("0");
    let mut server = Binary::spawn(&all);
    let echo = server.tcp_addr();
    let metrics = server.metrics_addr();
    (server, echo, metrics)
}

fn is_running(server: &mut Binary) -> bool {
    server.child.try_wait().expect("try_wait").is_none()
}

/// tiny_http allocated a declared Content-Length when it dropped the
/// request: 1 TiB, and the whole process aborted.
#[test]
fn a_huge_content_length_gets_405_and_the_process_lives() {
    let (mut server, echo, at) = spawn_with_metrics(&[]);
    let mut s = connect(at);
    s.write_all(
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\nsome body",
    )
    .unwrap();
    let response = read_all(&mut s);
    assert_method_not_allowed(&response);
    drop(s);
    assert!(is_running(&mut server), "{:#?}", server.seen);
    assert_eq!(round_trip(connect(echo), b"alive".to_vec()), b"alive");
    assert_eq!(scrape(at)["echo_server_connections_accepted_total"], 1);
    server.stop();
}

/// A request line without end: answered 431 and closed after MAX_HEAD
/// bytes, whatever else comes; the process's memory does not follow what
/// the client sends.
#[cfg(target_os = "linux")]
#[test]
fn an_endless_request_line_is_cut_off_and_memory_stays_bounded() {
    let (mut server, _, at) = spawn_with_metrics(&[]);
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut s = connect(at);
    let mut writer = s.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    const ENDLESS: usize = 64 << 20;
    let sending = thread::spawn(move || {
        let start = Instant::now();
        let mut chunk = vec![b'a'; 64 << 10];
        chunk[..5].copy_from_slice(b"GET /");
        let mut sent = 0;
        while sent < ENDLESS && start.elapsed() < DEADLINE {
            match writer.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
            chunk[..5].copy_from_slice(b"aaaaa");
        }
        sent
    });
    let response = read_all(&mut s);
    let sent = sending.join().unwrap();
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 16 << 10, "RSS grew by {grown} KiB");
    assert!(sent < ENDLESS, "all of the 64 MiB request line was taken");
    assert!(response.starts_with("HTTP/1.1 431 "), "{response:?}");
    assert!(is_running(&mut server), "{:#?}", server.seen);
    assert_eq!(http(at, "GET /healthz HTTP/1.1\r\n\r\n").0, 200);
    server.stop();
}

/// 64 idle clients and one that pipelines requests without ever reading
/// the answers: a scrape is still answered, and SIGTERM still ends the
/// process promptly (with tiny_http it took over 15 s: dropping it joined
/// the thread stuck writing to the pipelining client).
#[cfg(unix)]
#[test]
fn idle_and_never_reading_clients_hold_up_neither_scrapes_nor_shutdown() {
    let (mut server, _, at) = spawn_with_metrics(&[]);
    let idle: Vec<TcpStream> = (0..64).map(|_| connect(at)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pipelining = {
        let stop = stop.clone();
        thread::spawn(move || {
            let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(64);
            // Reconnects whenever the server closes it, until told to stop.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect_timeout(&at, Duration::from_secs(2)) else {
                    break;
                };
                s.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.write_all(&request).is_err() {
                        break;
                    }
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(500));
    let mut scraper = connect(at);
    scraper
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    scraper
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let page = read_all(&mut scraper);
    assert!(page.starts_with("HTTP/1.1 200 "), "no scrape: {page:?}");
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit();
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pipelining.join().unwrap();
    assert_eq!(status.code(), Some(0), "{:#?}", server.seen);
    assert!(took < Duration::from_secs(6), "exit took {took:?}");
    drop(idle);
}

/// /healthz and /readyz answer 200 while serving; from SIGTERM on, while
/// the connections drain, /readyz answers 503 so a load balancer stops
/// sending clients.
#[cfg(unix)]
#[test]
fn readyz_says_503_while_draining() {
    // A drain that lasts until the stalled client below goes away.
    let (mut server, echo, at) =
        spawn_with_metrics(&["--engine", "threads", "--shutdown-grace", "60"]);
    let (status, body) = http(at, "GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(http(at, "GET /readyz?verbose HTTP/1.1\r\n\r\n").0, 200);
    // An echo client that never reads: its echo cannot be written, so the
    // drain lasts the whole shutdown grace, or until the client goes.
    let mut stalled = connect(echo);
    stalled
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = vec![0u8; 64 << 10];
    let start = Instant::now();
    while stalled.write(&chunk).is_ok() {
        assert!(start.elapsed() < DEADLINE, "the buffers never filled");
    }
    server.signal(libc::SIGTERM);
    let mut saw = Vec::new();
    loop {
        let Ok(mut s) = TcpStream::connect_timeout(&at, Duration::from_secs(2)) else {
            panic!("gone before /readyz said 503: {saw:?}");
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n");
        let response = read_all(&mut s);
        if response.starts_with("HTTP/1.1 503 ") {
            break;
        }
        saw.push(response);
        assert!(start.elapsed() < DEADLINE, "{saw:?}");
    }
    // Still alive (draining) and healthy, even if not ready.
    assert_eq!(http(at, "GET /healthz HTTP/1.1\r\n\r\n").0, 200);
    // The client goes (a reset: its echo was never read), the drain ends.
    drop(stalled);
    assert_eq!(server.wait_exit().code(), Some(0), "{:#?}", server.seen);
}

/// Only GET and HEAD, only the three paths, HEAD without a body, and
/// a malformed request 400, logged only escaped.
#[test]
fn methods_paths_head_and_malformed_requests() {
    let (mut server, _, at) = spawn_with_metrics(&["-v"]);
    let mut s = connect(at);
    s.write_all(b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let response = read_all(&mut s);
    assert_method_not_allowed(&response);
    assert_eq!(http(at, "GET /metricsz HTTP/1.1\r\n\r\n").0, 404);
    let mut s = connect(at);
    s.write_all(b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
    let response = read_all(&mut s);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response:?}");
    assert!(response.ends_with("\r\n\r\n"), "a body: {response:?}");
    assert!(
        !response.contains("\r\nContent-Length: 0\r\n"),
        "{response:?}"
    );
    let (status, _) = http(at, "GET /\x1b[2J HTTP/1.1\r\n\r\n");
    assert_eq!(status, 400);
    server.stop();
    let line = server.line_containing("metrics endpoint: 400");
    assert!(line.contains(r"GET /\x1b[2J HTTP/1.1"), "{line}");
    assert!(
        server.seen.iter().all(|l| !l.contains('\x1b')),
        "{:#?}",
        server.seen
    );
}

/// 64 connections to the endpoint start no thread: it serves on its own
/// THREADS, whatever the clients do.
#[cfg(target_os = "linux")]
#[test]
fn connections_to_the_endpoint_start_no_threads() {
    let (mut server, echo, at) = spawn_with_metrics(&["--engine", "events"]);
    let pid = server.child.id().to_string();
    // Once an echo is served, every thread of the running server is up.
    assert_eq!(round_trip(connect(echo), b"up".to_vec()), b"up");
    let before = threads_of(&pid).len();
    let mut open = Vec::new();
    for i in 0..64 {
        let mut s = connect(at);
        // Half of them start a request and stall.
        if i % 2 == 0 {
            s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        }
        open.push(s);
    }
    // Answered after all of the above were accepted (in order).
    scrape(at);
    let during = threads_of(&pid);
    assert!(
        during.len() <= before + THREADS,
        "{before} threads before, then {during:?}"
    );
    assert_eq!(
        during.iter().filter(|(_, n)| n == "echo-metrics").count(),
        THREADS
    );
    drop(open);
    server.stop();
}

/// A 405 that says which methods are allowed.
fn assert_method_not_allowed(response: &str) {
    assert!(response.starts_with("HTTP/1.1 405 "), "{response:?}");
    assert!(
        response.contains("\r\nAllow: GET, HEAD\r\n"),
        "{response:?}"
    );
}
