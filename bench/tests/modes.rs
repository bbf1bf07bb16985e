//! End-to-end tests: the built `echo-bench` binary against a tiny
//! thread-per-connection echo server started inside each test on
//! 127.0.0.1:0. Every run is short (`--duration 0.5`), every socket read in
//! the server has a timeout, and nothing talks to anything but 127.0.0.1.

mod support;

use serde_json::Value;
use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use support::{bench, num};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How the test server treats what it receives.
#[derive(Clone, Copy)]
enum Behaviour {
    Echo,
    /// Echo, but flip the byte at this offset of each connection's stream.
    CorruptAt(u64),
    /// Close every connection without reading.
    Close,
}

struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    /// Every client address the server has accepted a connection from.
    sources: Arc<Mutex<HashSet<IpAddr>>>,
}

impl EchoServer {
    fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let sources = Arc::new(Mutex::new(HashSet::new()));
        let seen = Arc::clone(&sources);
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(peer) = stream.peer_addr() {
                    seen.lock().expect("sources lock").insert(peer.ip());
                }
                thread::spawn(move || serve(stream, behaviour));
            }
        });
        EchoServer {
            addr,
            stop,
            acceptor: Some(acceptor),
            sources,
        }
    }

    fn sources(&self) -> HashSet<IpAddr> {
        self.sources.lock().expect("sources lock").clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve(mut stream: TcpStream, behaviour: Behaviour) {
    if matches!(behaviour, Behaviour::Close) {
        return;
    }
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if let Behaviour::CorruptAt(at) = behaviour {
            if (offset..offset + n as u64).contains(&at) {
                buf[(at - offset) as usize] ^= 0xff;
            }
        }
        offset += n as u64;
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn assert_clean(code: i32, json: &Value, mode: &str) {
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["mode"], mode);
    assert_eq!(num(json, "errors"), 0, "{json}");
    assert!(
        json["duration_s"].as_f64().is_some_and(|d| d > 0.0),
        "{json}"
    );
}

#[test]
fn pingpong_measures_round_trips() {
    let server = EchoServer::start(Behaviour::Echo);
    let (code, json) = bench(
        server.addr,
        &["pingpong", "--connections", "4", "--threads", "2"],
    );
    assert_clean(code, &json, "pingpong");
    assert!(num(&json, "round_trips") > 0, "{json}");
    assert!(json["round_trips_per_sec"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
    let p50 = num(&json, "p50_us");
    assert!(p50 <= num(&json, "p99_us") && num(&json, "p999_us") <= num(&json, "max_us"));
    assert_eq!(num(&json, "connections"), 4);
    assert_eq!(num(&json, "size"), 64);
}

#[test]
fn pingpong_large_messages_span_many_writes() {
    let server = EchoServer::start(Behaviour::Echo);
    let (code, json) = bench(server.addr, &["pingpong", "--size", "300000"]);
    assert_clean(code, &json, "pingpong");
    assert!(num(&json, "round_trips") > 0, "{json}");
}

#[test]
fn bulk_streams_and_completes() {
    let server = EchoServer::start(Behaviour::Echo);
    let (code, json) = bench(
        server.addr,
        &[
            "bulk",
            "--connections",
            "2",
            "--bytes",
            "4194304",
            "--threads",
            "2",
        ],
    );
    assert_clean(code, &json, "bulk");
    assert_eq!(num(&json, "completed"), 2, "{json}");
    assert_eq!(num(&json, "bytes_echoed"), 2 * 4_194_304);
    assert!(json["mib_per_sec"].as_f64().is_some_and(|r| r > 0.0));
}

#[test]
fn connrate_makes_connections() {
    let server = EchoServer::start(Behaviour::Echo);
    let (code, json) = bench(server.addr, &["connrate", "--parallel", "8"]);
    assert_clean(code, &json, "connrate");
    assert!(num(&json, "connections_made") > 0, "{json}");
    assert!(json["connections_per_sec"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
    assert_eq!(num(&json, "parallel"), 8);
}

#[test]
fn hold_keeps_200_connections() {
    let server = EchoServer::start(Behaviour::Echo);
    let (code, json) = bench(
        server.addr,
        &["hold", "--connections", "200", "--threads", "2"],
    );
    assert_clean(code, &json, "hold");
    assert_eq!(num(&json, "held"), 200, "{json}");
    assert_eq!(num(&json, "failed"), 0);
}

#[test]
fn hold_spreads_over_source_addresses() {
    let server = EchoServer::start(Behaviour::Echo);
    let (code, json) = bench(
        server.addr,
        &[
            "hold",
            "--connections",
            "60",
            "--sources",
            "3",
            "--threads",
            "2",
        ],
    );
    assert_clean(code, &json, "hold");
    assert_eq!(num(&json, "held"), 60, "{json}");
    assert_eq!(num(&json, "open"), 60, "{json}");
    assert_eq!(num(&json, "sources"), 3, "{json}");
    let expected: HashSet<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| ip.parse().expect("ip"))
        .collect();
    assert_eq!(server.sources(), expected);
}

#[test]
fn connrate_spreads_over_source_addresses() {
    let server = EchoServer::start(Behaviour::Echo);
    let (code, json) = bench(
        server.addr,
        &["connrate", "--parallel", "4", "--sources", "2"],
    );
    assert_clean(code, &json, "connrate");
    assert_eq!(server.sources().len(), 2);
}

#[test]
fn hold_idles_until_stdin_then_echoes_on_every_connection() {
    let server = EchoServer::start(Behaviour::Echo);
    let started = Instant::now();
    // stdin is closed at once, which releases the idle phase: the run must
    // end long before --duration.
    let out = Command::new(env!("CARGO_BIN_EXE_echo-bench"))
        .args(["hold", "--addr", &server.addr.to_string()])
        .args(["--connections", "50", "--threads", "2", "--duration", "20"])
        .args(["--idle-until-stdin", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run echo-bench");
    assert!(started.elapsed() < Duration::from_secs(10));
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let json: Value = serde_json::from_str(stdout.trim()).expect("valid JSON");
    assert_clean(out.status.code().expect("exit code"), &json, "hold");
    assert_eq!(num(&json, "held"), 50, "{json}");
    assert!(json["all_open_s"].as_f64().is_some(), "{json}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hold: 50 of 50 connections open after"),
        "{stderr}"
    );
}

#[test]
fn corrupted_echo_fails_the_run() {
    let server = EchoServer::start(Behaviour::CorruptAt(1000));
    let (code, json) = bench(server.addr, &["pingpong", "--connections", "2"]);
    assert_eq!(code, 1, "{json}");
    assert!(num(&json, "errors") > 0, "{json}");
    assert!(num(&json, "verify_errors") > 0, "{json}");

    let server = EchoServer::start(Behaviour::CorruptAt(100_000));
    let (code, json) = bench(server.addr, &["bulk", "--bytes", "1048576"]);
    assert_eq!(code, 1, "{json}");
    assert!(num(&json, "verify_errors") > 0, "{json}");
}

#[test]
fn server_closing_at_once_is_an_error_not_a_result() {
    let server = EchoServer::start(Behaviour::Close);
    let (code, json) = bench(server.addr, &["pingpong"]);
    assert_eq!(code, 1, "{json}");
    assert!(num(&json, "errors") > 0);
    assert_eq!(num(&json, "round_trips"), 0);
    assert!(json["p50_us"].is_null());
}

#[test]
fn refused_connection_measures_nothing() {
    // A port that was just free: bind, note it, release it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let (code, json) = bench(addr, &["connrate", "--parallel", "2"]);
    assert_eq!(code, 1, "{json}");
    assert_eq!(num(&json, "connections_made"), 0);
    assert!(num(&json, "errors") > 0);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["nosuchmode"][..],
        &["pingpong", "--connections", "0"],
        &["pingpong", "--duration", "-1"],
        &["pingpong", "--addr", "not-an-address"],
        &["hold", "--sources", "0"],
        &["hold", "--sources", "255"],
        &["hold", "--sources", "2", "--addr", "[::1]:7"],
    ] {
        let status = Command::new(env!("CARGO_BIN_EXE_echo-bench"))
            .args(args)
            .output()
            .expect("run echo-bench")
            .status;
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn table_is_the_default_output() {
    let server = EchoServer::start(Behaviour::Echo);
    let out = Command::new(env!("CARGO_BIN_EXE_echo-bench"))
        .args([
            "pingpong",
            "--addr",
            &server.addr.to_string(),
            "--duration",
            "0.2",
        ])
        .output()
        .expect("run echo-bench");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("round trips/s"), "{text}");
    assert!(text.contains("latency p99"), "{text}");
}
