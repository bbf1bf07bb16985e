//! Clients nobody here wrote: OpenBSD netcat, socat, Python's `socket`
//! module and curl's telnet, driven against the real binary over TCP, UDP
//! and a Unix socket. Each must get exactly its bytes back and exit on its
//! own. And HAProxy in front of it, speaking the PROXY protocol. A client that is not installed is skipped with a message (`.ci/run`
//! installs them from Debian packages).
#![cfg(unix)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Whether `program` can be run at all.
fn installed(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs `program args` with `input` on stdin; returns its stdout once it
/// exits by itself (killed and failed after the deadline).
fn run_client(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    // Both pipes at once, so a large echo cannot stall on a full pipe.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("{program} {args:?} did not exit on its own");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(
        status.success(),
        "{program} {args:?}: {status:?}; stderr: {stderr}"
    );
    writer.join().unwrap().expect("write the client's stdin");
    reader.join().unwrap().expect("read the client's stdout")
}

/// The binary on TCP and UDP (one port) and a Unix socket. The idle
/// timeout lets clients that never half-close (curl) see the end.
struct Served {
    _server: Binary,
    _dir: tempfile::TempDir,
    port: String,
    path: String,
}

fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let path = path.to_str().unwrap().to_owned();
    let mut server = Binary::spawn(&["--udp", "--unix", &path, "--idle-timeout", "1", "0"]);
    let port = server.tcp_addr().port().to_string();
    Served {
        _server: server,
        _dir: dir,
        port,
        path,
    }
}

#[test]
fn openbsd_netcat_over_tcp_udp_and_unix() {
    if !installed("nc", "-h") {
        eprintln!("skipped: nc (netcat-openbsd) is not installed");
        return;
    }
    let s = serve();
    let tcp = run_client("nc", &["-N", "127.0.0.1", &s.port], b"over tcp\n");
    assert_eq!(tcp, b"over tcp\n");
    let unix = run_client("nc", &["-N", "-U", &s.path], b"over unix\n");
    assert_eq!(unix, b"over unix\n");
    // -w 1: UDP has no end of stream; nc gives up a second after the reply.
    let udp = run_client(
        "nc",
        &["-u", "-w", "1", "127.0.0.1", &s.port],
        b"over udp\n",
    );
    assert_eq!(udp, b"over udp\n");
}

#[test]
fn socat_over_tcp_udp_and_unix() {
    if !installed("socat", "-V") {
        eprintln!("skipped: socat is not installed");
        return;
    }
    let s = serve();
    let bulk: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    // -t 10: after stdin's end, wait up to 10 s for the server's (not the
    // default 0.5 s, which a loaded machine can overrun mid-echo).
    let tcp = run_client(
        "socat",
        &["-t", "10", "-", &format!("TCP:127.0.0.1:{}", s.port)],
        &bulk,
    );
    assert!(
        tcp == bulk,
        "socat got {} bytes back of {}",
        tcp.len(),
        bulk.len()
    );
    let udp = run_client(
        "socat",
        &["-t", "1", "-", &format!("UDP:127.0.0.1:{}", s.port)],
        b"datagram",
    );
    assert_eq!(udp, b"datagram");
    let unix = run_client(
        "socat",
        &["-t", "10", "-", &format!("UNIX-CONNECT:{}", s.path)],
        b"unix\0bytes",
    );
    assert_eq!(unix, b"unix\0bytes");
}

#[test]
fn pythons_socket_module() {
    if !installed("python3", "-V") {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    let s = serve();
    let script = r#"
import socket, sys
port = int(sys.argv[1])
with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
    c.sendall(b"from python")
    c.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        chunk = c.recv(4096)
        if not chunk:
            break
        got += chunk
sys.stdout.write(got.decode())
"#;
    let out = run_client("python3", &["-c", script, &s.port], b"");
    assert_eq!(out, b"from python");
}

#[test]
fn curls_telnet_for_a_line_of_text() {
    if !installed("curl", "--version") {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let s = serve();
    // curl never half-closes: the server's idle timeout ends the session.
    let out = run_client(
        "curl",
        &[
            "-s",
            "--max-time",
            "15",
            &format!("telnet://127.0.0.1:{}", s.port),
        ],
        b"a line for curl\n",
    );
    assert_eq!(out, b"a line for curl\n");
}

/// HAProxy in TCP mode in front of the binary, sending a PROXY protocol
/// header (v2, then v1) before the client's bytes: the echo comes back
/// through it, and the server's log names the client (this test's socket,
/// as HAProxy saw it), not HAProxy's own connection.
#[test]
fn haproxy_in_front_sends_the_proxy_protocol() {
    if !installed("haproxy", "-v") {
        eprintln!("skipped: haproxy is not installed");
        return;
    }
    let mut server = Binary::spawn(&["--proxy-protocol", "127.0.0.1", "-v", "0"]);
    let echo = server.tcp_addr();
    for send_proxy in ["send-proxy-v2", "send-proxy"] {
        let haproxy = Haproxy::start(echo, send_proxy);
        let client = connect(haproxy.addr);
        let me = client.local_addr().unwrap();
        let data = format!("through haproxy, {send_proxy}\n").into_bytes();
        assert_eq!(round_trip(client, data.clone()), data, "{send_proxy}");
        // The header named this socket's address: the server took it for
        // the peer, and the connection's end is logged under it.
        let named = format!("PROXY protocol: client {me}");
        let line = server.expect_line(&named, |l| l.contains(&named));
        assert!(
            !line.starts_with(&format!("{me}:")),
            "the balancer's connection is the one the header arrived on: {line}"
        );
        let closed = format!("{me}: closed after echoing {} bytes", data.len());
        server.expect_line(&closed, |l| l.contains(&closed));
    }
    server.stop();
    // Every header HAProxy sent was taken (the connection counts vary: the
    // readiness checks in `Haproxy::start` may reach the server too).
    let summary = server.summary();
    assert!(
        !summary.contains("without a valid PROXY header"),
        "{summary}"
    );
}

/// HAProxy in the foreground on a free 127.0.0.1 port, forwarding to
/// `server` with `send_proxy`; killed when dropped.
struct Haproxy {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(server: std::net::SocketAddr, send_proxy: &str) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        // A port that was free a moment ago (HAProxy binds it itself).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 64\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 30s\n  timeout server 30s\n\
                 frontend in\n  bind {addr}\n  default_backend echo\n\
                 backend echo\n  server echo {server} {send_proxy}\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db") // the foreground, no daemon: its pid is ours to kill
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start haproxy");
        let mut haproxy = Haproxy {
            child,
            addr,
            _dir: dir,
        };
        // Listening once a connection is accepted (this probe connection
        // reaches the server as an empty one: no bytes, so no header).
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            let exited = haproxy.child.try_wait().unwrap();
            if exited.is_some() || start.elapsed() > DEADLINE {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("haproxy did not listen on {addr} ({exited:?}): {said}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
