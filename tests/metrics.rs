//! The Prometheus endpoint: scraped over loopback while clients are served,
//! its numbers are the server's own counters, and bad requests get a 4xx
//! without disturbing the echo service.

mod support;

use echo_server::metrics::MetricsServer;
use echo_server::Engine;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
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
    wait_for("every connection closed", || {
        server.handle.stats().active == 0
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
