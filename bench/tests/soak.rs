//! End-to-end tests of `echo-bench soak` against a tiny thread-per-connection
//! TCP echo and a UDP echo thread, started inside each test on 127.0.0.1:0,
//! that count what they accept, receive and echo, so the test can check the
//! byte accounting a real server's shutdown summary is checked with in
//! scripts/soak.py. Runs are short (2 s at most), every socket read in the
//! servers has a timeout, and nothing talks to anything but 127.0.0.1.

use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Longer than any run here: idle connections are held for the whole run.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    closed: AtomicU64,
    received: AtomicU64,
    echoed: AtomicU64,
    datagrams: AtomicU64,
}

struct Echo {
    tcp: SocketAddr,
    udp: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    /// `corrupt_at`: flip the byte at this offset of every TCP stream.
    fn start(corrupt_at: Option<u64>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let tcp = listener.local_addr().expect("tcp addr");
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("udp timeout");
        let udp = sock.local_addr().expect("udp addr");
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (st, c) = (Arc::clone(&stop), Arc::clone(&counters));
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                c.accepted.fetch_add(1, SeqCst);
                let c = Arc::clone(&c);
                thread::spawn(move || {
                    serve(stream, corrupt_at, &c);
                    c.closed.fetch_add(1, SeqCst);
                });
            }
        });
        let (st, c) = (Arc::clone(&stop), Arc::clone(&counters));
        let udp_thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(SeqCst) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue; // timeout: look at the flag again
                };
                if sock.send_to(&buf[..n], peer).is_ok() {
                    c.datagrams.fetch_add(1, SeqCst);
                }
            }
        });
        Echo {
            tcp,
            udp,
            stop,
            counters,
            threads: vec![acceptor, udp_thread],
        }
    }

    fn get(&self, c: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        c(&self.counters).load(SeqCst)
    }

    /// Waits (a little) until every connection thread has finished.
    fn settled(&self) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if self.get(|c| &c.accepted) == self.get(|c| &c.closed) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wake the blocking accept so the acceptor sees the flag.
        let _ = TcpStream::connect_timeout(&self.tcp, IO_TIMEOUT);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Echoes until EOF (then closes: the reply to a half-close) or an error
/// (a client's reset); counts bytes echoed only once written.
fn serve(mut stream: TcpStream, corrupt_at: Option<u64>, c: &Counters) {
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
        c.received.fetch_add(n as u64, SeqCst);
        if let Some(at) = corrupt_at {
            if (offset..offset + n as u64).contains(&at) {
                buf[(at - offset) as usize] ^= 0xff;
            }
        }
        offset += n as u64;
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
        c.echoed.fetch_add(n as u64, SeqCst);
    }
}

fn soak(echo: &Echo, secs: &str, udp: bool) -> (i32, Value, String) {
    soak_with(echo, secs, udp, &[])
}

fn soak_with(echo: &Echo, secs: &str, udp: bool, extra: &[&str]) -> (i32, Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo-bench"));
    cmd.args(["soak", "--addr", &echo.tcp.to_string()])
        .args(["--duration", secs, "--json"])
        .args(extra);
    if udp {
        cmd.args(["--udp-addr", &echo.udp.to_string()]);
    }
    let out = cmd.output().expect("run echo-bench");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("one JSON line expected ({e}): {stdout:?}, stderr {stderr}"));
    (out.status.code().expect("exit code"), json, stderr)
}

fn num(json: &Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {json}"))
}

#[test]
fn soak_mixes_every_kind_and_every_byte_is_accounted_for() {
    let echo = Echo::start(None);
    let (code, json, stderr) = soak(&echo, "2", true);
    assert_eq!(code, 0, "{json} {stderr}");
    assert_eq!(json["mode"], "soak");
    assert_eq!(num(&json, "errors"), 0, "{json} {stderr}");
    assert_eq!(num(&json, "verify_errors"), 0);
    for kind in [
        "churn_plain",
        "churn_reset",
        "churn_half_close",
        "churn_vanish",
        "bulk_streams",
        "udp_answered",
    ] {
        assert!(num(&json, kind) > 0, "no {kind}: {json}");
    }
    let churned = [
        "churn_plain",
        "churn_reset",
        "churn_half_close",
        "churn_vanish",
    ]
    .iter()
    .map(|k| num(&json, k))
    .sum::<u64>();
    assert_eq!(num(&json, "churned"), churned);
    // Paced: at most 200 new connections a second.
    assert!(churned <= 2 * 200 + 48, "{json}");
    assert_eq!(num(&json, "load_churn"), 48, "{json}");
    assert_eq!(num(&json, "load_churn_rate"), 200, "{json}");
    assert_eq!(num(&json, "load_bulk_streams"), 2, "{json}");
    assert_eq!(num(&json, "load_bulk_rate"), 16 << 20, "{json}");
    assert_eq!(num(&json, "idle_opened"), 100, "{json}");
    assert_eq!(num(&json, "idle_held"), 100, "{json}");
    assert_eq!(num(&json, "udp_lost"), 0, "{json}");
    assert_eq!(num(&json, "udp_answered"), num(&json, "udp_sent"));
    assert_eq!(num(&json, "bytes_abandoned"), 0, "{json}");
    let sent = num(&json, "bytes_sent");
    assert_eq!(num(&json, "bytes_echoed"), sent);
    assert!(num(&json, "bulk_bytes") >= num(&json, "bulk_streams") * (4 << 20));

    // What the server saw matches: every connection, every byte, every
    // datagram (the vanishing and resetting clients included).
    assert!(echo.settled(), "connection threads still running");
    assert_eq!(
        echo.get(|c| &c.accepted),
        num(&json, "tcp_connections"),
        "{json}"
    );
    assert_eq!(echo.get(|c| &c.received), sent, "{json}");
    assert_eq!(echo.get(|c| &c.echoed), sent, "{json}");
    assert_eq!(echo.get(|c| &c.datagrams), num(&json, "udp_answered"));
}

#[test]
fn soak_without_udp_reports_no_datagrams() {
    let echo = Echo::start(None);
    let (code, json, stderr) = soak(&echo, "0.5", false);
    assert_eq!(code, 0, "{json} {stderr}");
    assert!(json["udp_sent"].is_null(), "{json}");
    assert!(json["udp_addr"].is_null(), "{json}");
    assert!(num(&json, "churned") > 0, "{json}");
    assert_eq!(echo.get(|c| &c.datagrams), 0);
}

#[test]
fn soak_fails_on_a_corrupted_echo() {
    let echo = Echo::start(Some(3));
    let (code, json, _) = soak(&echo, "0.5", true);
    assert_eq!(code, 1, "{json}");
    assert!(num(&json, "verify_errors") > 0, "{json}");
}

#[test]
fn soak_fails_on_any_error_not_only_wrong_bytes() {
    // Nothing listens on UDP there: every datagram is refused or lost.
    let echo = Echo::start(None);
    let dead = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free udp port");
    let out = Command::new(env!("CARGO_BIN_EXE_echo-bench"))
        .args(["soak", "--addr", &echo.tcp.to_string()])
        .args([
            "--udp-addr",
            &dead.to_string(),
            "--duration",
            "0.3",
            "--json",
        ])
        .output()
        .expect("run echo-bench");
    let json: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("JSON");
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert!(num(&json, "errors") > 0, "{json}");
    assert_eq!(num(&json, "verify_errors"), 0, "{json}");
}

#[test]
fn udp_addr_is_for_soak_only() {
    let status = Command::new(env!("CARGO_BIN_EXE_echo-bench"))
        .args(["pingpong", "--udp-addr", "127.0.0.1:7"])
        .output()
        .expect("run echo-bench")
        .status;
    assert_eq!(status.code(), Some(2));
}

#[test]
fn soak_load_options_raise_churn_and_bulk() {
    let echo = Echo::start(None);
    let extra = [
        "--churn",
        "128",
        "--churn-rate",
        "2000",
        "--bulk-streams",
        "3",
        "--bulk-rate",
        "67108864",
        "--sources",
        "4",
    ];
    let (code, json, stderr) = soak_with(&echo, "1", true, &extra);
    assert_eq!(code, 0, "{json} {stderr}");
    assert_eq!(num(&json, "errors"), 0, "{json} {stderr}");
    assert_eq!(num(&json, "load_churn"), 128, "{json}");
    assert_eq!(num(&json, "load_churn_rate"), 2000, "{json}");
    assert_eq!(num(&json, "load_bulk_streams"), 3, "{json}");
    assert_eq!(num(&json, "load_bulk_rate"), 64 << 20, "{json}");
    let churned = num(&json, "churned");
    // Paced at 2000/s, at most one burst of --churn over it; well above
    // what the default 200/s allows in a second (248), even on a loaded
    // machine.
    assert!(churned <= 2000 + 128, "{json}");
    assert!(churned > 2 * 248, "{json}");
    // More than the default two streams at 16 MiB/s could do in a second.
    assert!(
        num(&json, "bulk_bytes") > 2 * (16 << 20) + (512 << 10),
        "{json}"
    );
    let sent = num(&json, "bytes_sent");
    assert_eq!(num(&json, "bytes_echoed"), sent, "{json}");
    assert!(echo.settled(), "connection threads still running");
    assert_eq!(echo.get(|c| &c.accepted), num(&json, "tcp_connections"));
    assert_eq!(echo.get(|c| &c.received), sent, "{json}");
}

#[test]
fn soak_load_options_are_validated_and_soak_only() {
    let code = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_echo-bench"))
            .args(args)
            .args(["--addr", "127.0.0.1:9", "--duration", "0"])
            .output()
            .expect("run echo-bench")
            .status
            .code()
    };
    for bad in [
        ["--churn", "0"],
        ["--churn", "10001"],
        ["--churn-rate", "0"],
        ["--churn-rate", "1000001"],
        ["--bulk-streams", "0"],
        ["--bulk-streams", "65"],
        ["--bulk-rate", "0"],
        ["--bulk-rate", "4294967297"],
        ["--churn", "-1"],
    ] {
        let mut args = vec!["soak"];
        args.extend(bad);
        assert_eq!(code(&args), Some(2), "{bad:?}");
    }
    for mode in ["pingpong", "connrate", "hold"] {
        for opt in [
            ["--churn", "8"],
            ["--churn-rate", "8"],
            ["--bulk-streams", "1"],
            ["--bulk-rate", "1024"],
        ] {
            let mut args = vec![mode];
            args.extend(opt);
            assert_eq!(code(&args), Some(2), "{mode} {opt:?}");
        }
    }
}

#[test]
fn soak_warns_when_churn_slots_cannot_keep_up_with_the_rate() {
    let echo = Echo::start(None);
    let extra = ["--churn", "4", "--churn-rate", "5000"];
    let (code, json, stderr) = soak_with(&echo, "0.3", false, &extra);
    assert_eq!(code, 0, "{json} {stderr}");
    assert!(stderr.contains("--churn 4 may be too few"), "{stderr}");
    let (_, _, stderr) = soak(&echo, "0.2", false);
    assert!(!stderr.contains("too few"), "{stderr}");
}
