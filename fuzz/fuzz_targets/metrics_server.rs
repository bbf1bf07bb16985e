//! The metrics endpoint, live: a real `MetricsServer` on 127.0.0.1 (started
//! once per process and shared by every input) sent arbitrary bytes over
//! real connections, split into writes of arbitrary sizes.
//!
//! Input: `[conns][split][request bytes]*`. `1 + conns % 3` connections
//! each send the request bytes (the same for each, so a connection cannot
//! depend on another's), in writes of `1 + split × k % 61` bytes; then each
//! half-closes and reads until end of file.
//!
//! Properties: every connection is closed by the server within the
//! endpoint's timeout; what comes back is nothing (a head that never
//! completed) or one well-formed answer with a known status, whose status
//! is what `metrics::answer` gives for the whole request in memory (when
//! that is an answer); and after every input a fresh `GET /healthz` is
//! answered 200, with the endpoint's one thread still the only one.
#![no_main]

#[path = "../support/live_server.rs"]
#[allow(dead_code, unused_macros)] // the script reader is for the echo targets
mod live_server;

use echo_server::metrics::{answer, MetricsServer, MAX_HEAD, TIMEOUT};
use echo_server::{Server, Stats};
use libfuzzer_sys::fuzz_target;
use live_server::{serve_forever, IO_TIMEOUT};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;

fn endpoint() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let server = Server::builder()
            .tcp(([127, 0, 0, 1], 0))
            .build()
            .expect("an echo server");
        let handle = serve_forever("echo", server);
        let metrics =
            MetricsServer::start(([127, 0, 0, 1], 0).into(), handle).expect("a metrics endpoint");
        let addr = metrics.local_addr();
        // Serves for the rest of the process.
        std::mem::forget(metrics);
        addr
    })
}

/// Connects with timeouts on every operation.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to metrics");
    s.set_read_timeout(Some(TIMEOUT + IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Reads until end of file (a reset after the answer counts as its end).
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("no end of file from the metrics endpoint: {e} after {got:?}"),
        }
        assert!(got.len() < 1 << 20, "an answer of over 1 MiB");
    }
}

/// The status of a response, which must be well formed.
fn status(response: &[u8]) -> u16 {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(response) {
        Ok(httparse::Status::Complete(_)) => {}
        other => panic!(
            "not a response ({other:?}): {:?}",
            String::from_utf8_lossy(response)
        ),
    }
    let code = parsed.code.expect("a status");
    assert!(
        [200, 400, 404, 405, 431, 503].contains(&code),
        "status {code}"
    );
    code
}

fuzz_target!(|data: &[u8]| {
    let addr = endpoint();
    let (conns, split, request) = match data {
        [c, s, rest @ ..] => (1 + usize::from(*c % 3), usize::from(*s), rest),
        _ => return,
    };
    // Beyond a head's limit nothing more is read: keep inputs short.
    let request = &request[..request.len().min(MAX_HEAD + 64)];
    let mut streams: Vec<TcpStream> = (0..conns).map(|_| connect(addr)).collect();
    for s in &mut streams {
        let mut at = 0;
        let mut k = 0;
        while at < request.len() {
            k += 1;
            let n = (1 + split * k % 61).min(request.len() - at);
            // The server may answer and close before it has it all.
            if s.write_all(&request[at..at + n]).is_err() {
                break;
            }
            at += n;
        }
        let _ = s.shutdown(Shutdown::Write);
    }
    // Readiness is not asked of this server: it is serving.
    let expected = answer(request, &Stats::default(), true).map(|a| a.status);
    for mut s in streams {
        let got = read_all(&mut s);
        if got.is_empty() {
            continue; // never a complete head, or cut off by the timeout
        }
        let code = status(&got);
        // The server answers at the first read that completes a head; the
        // whole request's answer in memory is the same one.
        if let Some(want) = expected {
            assert_eq!(code, want, "{:?}", String::from_utf8_lossy(request));
        }
    }
    let mut probe = connect(addr);
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send a probe");
    assert_eq!(
        status(&read_all(&mut probe)),
        200,
        "the endpoint stopped answering"
    );
});
