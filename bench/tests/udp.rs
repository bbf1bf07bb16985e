//! End-to-end tests of `echo-bench udp` against a tiny UDP echo thread
//! started inside each test on 127.0.0.1:0, well-behaved or broken in one
//! way. Every run is short (`--duration 0.5`), the echo thread's reads time
//! out so it notices when to stop, and nothing talks to anything but
//! 127.0.0.1.

use serde_json::Value;
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How the echo thread treats datagram number `n` (counted from 1, over
/// all clients).
#[derive(Clone, Copy)]
enum Behaviour {
    Echo,
    /// Flip the last byte of every k-th datagram.
    CorruptEvery(u64),
    /// Answer every k-th datagram twice.
    DuplicateEvery(u64),
    /// Answer every k-th datagram without its last byte.
    TruncateEvery(u64),
    /// Never answer every k-th datagram.
    DropEvery(u64),
    /// Answer every k-th datagram only after this long.
    DelayEvery(u64, Duration),
    /// Send the answer to every k-th datagram to another client.
    MisdeliverEvery(u64),
}

struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(behaviour: Behaviour) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("read timeout");
        let addr = sock.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || serve(&sock, behaviour, &stopping));
        UdpEcho {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(sock: &UdpSocket, behaviour: Behaviour, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    let mut n = 0u64;
    // Every client socket seen so far: a misdelivery goes to one that is not
    // the sender (the last sender alone may be the same socket every time,
    // as batched sends arrive in runs).
    let mut peers: Vec<SocketAddr> = Vec::new();
    let mut delayed: VecDeque<(Instant, Vec<u8>, SocketAddr)> = VecDeque::new();
    // Bounded: the test ends within seconds and sets `stop`.
    while !stop.load(Ordering::SeqCst) {
        while delayed.front().is_some_and(|d| d.0 <= Instant::now()) {
            let (_, data, peer) = delayed.pop_front().expect("front");
            let _ = sock.send_to(&data, peer);
        }
        let Ok((len, peer)) = sock.recv_from(&mut buf) else {
            continue; // timeout: look at the flag again
        };
        n += 1;
        let data = &mut buf[..len];
        let every = |k: u64| n.is_multiple_of(k);
        match behaviour {
            Behaviour::Echo => {
                let _ = sock.send_to(data, peer);
            }
            Behaviour::CorruptEvery(k) => {
                if every(k) {
                    data[len - 1] ^= 0x55;
                }
                let _ = sock.send_to(data, peer);
            }
            Behaviour::DuplicateEvery(k) => {
                let _ = sock.send_to(data, peer);
                if every(k) {
                    let _ = sock.send_to(data, peer);
                }
            }
            Behaviour::TruncateEvery(k) => {
                let end = if every(k) { len - 1 } else { len };
                let _ = sock.send_to(&data[..end], peer);
            }
            Behaviour::DropEvery(k) => {
                if !every(k) {
                    let _ = sock.send_to(data, peer);
                }
            }
            Behaviour::DelayEvery(k, by) => {
                if every(k) {
                    delayed.push_back((Instant::now() + by, data.to_vec(), peer));
                } else {
                    let _ = sock.send_to(data, peer);
                }
            }
            Behaviour::MisdeliverEvery(k) => {
                let other = peers.iter().copied().find(|p| *p != peer);
                let to = match other {
                    Some(other) if every(k) => other,
                    _ => peer,
                };
                let _ = sock.send_to(data, to);
            }
        }
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }
}

/// Runs `echo-bench udp` against `addr` for 0.5 s with --json; returns the
/// exit code, the parsed JSON line and stderr.
fn bench(addr: SocketAddr, args: &[&str]) -> (i32, Value, String) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_echo-bench"))
        .arg("udp")
        .args(args)
        .args(["--addr", &addr.to_string(), "--duration", "0.5", "--json"])
        .output()
        .expect("run echo-bench");
    assert!(started.elapsed() < Duration::from_secs(10));
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("one JSON line expected ({e}): {stdout:?} (stderr {stderr})"));
    (out.status.code().expect("exit code"), json, stderr)
}

fn num(json: &Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {json}"))
}

/// What holds for every run that got going: every datagram sent was
/// answered or lost, and something was answered.
fn assert_accounted(json: &Value) {
    assert_eq!(json["mode"], "udp");
    assert_eq!(
        num(json, "sent"),
        num(json, "answered") + num(json, "lost"),
        "{json}"
    );
    assert!(num(json, "answered") > 0, "{json}");
    assert!(num(json, "answered_in_window") <= num(json, "answered"));
}

fn bad(json: &Value) -> u64 {
    ["duplicates", "corrupted", "wrong_size", "crosstalk"]
        .iter()
        .map(|k| num(json, k))
        .sum()
}

#[test]
fn clean_echo_is_measured_and_nothing_is_lost() {
    let server = UdpEcho::start(Behaviour::Echo);
    let (code, json, stderr) = bench(
        server.addr,
        &[
            "--sockets",
            "4",
            "--inflight",
            "4",
            "--threads",
            "2",
            "--loss-timeout-ms",
            "2000",
        ],
    );
    assert_eq!(code, 0, "{json} {stderr}");
    assert_accounted(&json);
    assert_eq!(num(&json, "lost"), 0, "{json}");
    assert_eq!(num(&json, "errors"), 0, "{json}");
    assert_eq!(bad(&json), 0, "{json}");
    assert_eq!(num(&json, "sockets"), 4);
    assert_eq!(num(&json, "inflight"), 4);
    assert_eq!(num(&json, "size"), 64);
    assert_eq!(num(&json, "threads"), 2);
    assert!(json["answered_per_sec"].as_f64().is_some_and(|r| r > 0.0));
    let p50 = num(&json, "p50_us");
    assert!(p50 <= num(&json, "p99_us") && num(&json, "p999_us") <= num(&json, "max_us"));
    assert!(!stderr.contains("LOST"), "{stderr}");
}

#[test]
fn largest_and_smallest_datagrams() {
    for size in ["65507", "16"] {
        let server = UdpEcho::start(Behaviour::Echo);
        let (code, json, stderr) = bench(
            server.addr,
            &[
                "--sockets",
                "2",
                "--inflight",
                "2",
                "--size",
                size,
                "--loss-timeout-ms",
                "2000",
            ],
        );
        assert_eq!(code, 0, "{json} {stderr}");
        assert_accounted(&json);
        assert_eq!(json["size"].to_string(), size);
        assert_eq!(bad(&json), 0, "{json}");
    }
}

#[test]
fn corrupted_replies_fail_the_run() {
    let server = UdpEcho::start(Behaviour::CorruptEvery(50));
    let (code, json, stderr) = bench(server.addr, &["--sockets", "2", "--inflight", "2"]);
    assert_eq!(code, 1, "{json}");
    assert!(num(&json, "corrupted") > 0, "{json}");
    assert!(num(&json, "verify_errors") > 0, "{json}");
    assert!(stderr.contains("corrupted reply"), "{stderr}");
    // A corrupted reply answers nothing: its datagram is lost.
    assert!(num(&json, "lost") > 0, "{json}");
    assert_accounted(&json);
}

#[test]
fn duplicated_replies_fail_the_run() {
    let server = UdpEcho::start(Behaviour::DuplicateEvery(50));
    let (code, json, stderr) = bench(server.addr, &["--sockets", "2", "--inflight", "2"]);
    assert_eq!(code, 1, "{json}");
    assert!(num(&json, "duplicates") > 0, "{json}");
    assert_eq!(num(&json, "corrupted"), 0, "{json}");
    assert!(stderr.contains("second reply"), "{stderr}");
    assert_accounted(&json);
}

#[test]
fn wrong_size_replies_fail_the_run() {
    let server = UdpEcho::start(Behaviour::TruncateEvery(50));
    let (code, json, _) = bench(server.addr, &["--size", "1000"]);
    assert_eq!(code, 1, "{json}");
    assert!(num(&json, "wrong_size") > 0, "{json}");
    assert_accounted(&json);
}

#[test]
fn replies_to_the_wrong_socket_fail_the_run() {
    let server = UdpEcho::start(Behaviour::MisdeliverEvery(20));
    let (code, json, _) = bench(server.addr, &["--sockets", "4", "--inflight", "2"]);
    assert_eq!(code, 1, "{json}");
    assert!(num(&json, "crosstalk") > 0, "{json}");
    assert_eq!(num(&json, "corrupted"), 0, "{json}");
    assert_accounted(&json);
}

#[test]
fn dropped_datagrams_are_counted_lost_not_errors() {
    let server = UdpEcho::start(Behaviour::DropEvery(10));
    let (code, json, stderr) = bench(
        server.addr,
        &[
            "--sockets",
            "2",
            "--inflight",
            "4",
            "--loss-timeout-ms",
            "20",
        ],
    );
    assert_eq!(code, 0, "{json} {stderr}");
    assert_accounted(&json);
    let (lost, sent) = (num(&json, "lost"), num(&json, "sent"));
    // About one in ten, give or take what was in flight at the end.
    assert!(lost * 20 > sent && lost * 5 < sent, "{json}");
    assert_eq!(bad(&json), 0, "{json}");
    assert_eq!(num(&json, "errors"), 0, "{json}");
    assert!(json["lost_pct"].as_f64().is_some_and(|p| p > 0.0), "{json}");
    assert!(stderr.contains("datagrams LOST"), "{stderr}");
}

#[test]
fn late_replies_are_lost_then_late_not_errors() {
    let server = UdpEcho::start(Behaviour::DelayEvery(10, Duration::from_millis(60)));
    let (code, json, stderr) = bench(
        server.addr,
        &[
            "--sockets",
            "2",
            "--inflight",
            "2",
            "--loss-timeout-ms",
            "20",
        ],
    );
    assert_eq!(code, 0, "{json} {stderr}");
    assert_accounted(&json);
    assert!(num(&json, "lost") > 0, "{json}");
    assert!(num(&json, "late") > 0, "{json}");
    assert_eq!(bad(&json), 0, "{json}");
}

#[test]
fn no_server_measures_nothing() {
    // A port that was just free: bind, note it, release it.
    let addr = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port");
    let (code, json, _) = bench(addr, &["--loss-timeout-ms", "20"]);
    assert_eq!(code, 1, "{json}");
    assert_eq!(num(&json, "answered"), 0, "{json}");
    assert!(json["p50_us"].is_null());
}

#[test]
fn udp_usage_errors_exit_2() {
    for args in [
        &["--size", "15"][..],
        &["--size", "65508"],
        &["--sockets", "0"],
        &["--inflight", "0"],
        &["--inflight", "1025"],
        &["--loss-timeout-ms", "0"],
    ] {
        let status = Command::new(env!("CARGO_BIN_EXE_echo-bench"))
            .arg("udp")
            .args(args)
            .args(["--addr", "127.0.0.1:9", "--duration", "0.1"])
            .output()
            .expect("run echo-bench")
            .status;
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}
