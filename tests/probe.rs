//! `echo-server probe` through the real binary: it passes against the
//! server over TCP, UDP and a Unix socket, and fails (exit 1, the reason on
//! stderr, within its timeout) against servers that do not echo: small std
//! listeners here that answer wrong bytes, close early or never answer.
//! Over TLS (`--tls`, certificates made by `openssl`): with and without a
//! CA file, a client certificate for mutual TLS, and each way a handshake
//! fails named. Usage errors exit 2.
#![cfg(unix)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use support::pki::Pki;
use support::*;

/// What a probe did: its exit status, stdout, stderr and how long it took.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `echo-server probe ARGS` to its end (killed and failed past the
/// deadline: the probe must end by itself).
fn probe(args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_echo-server"))
        .arg("probe")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echo-server probe");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("probe {args:?} did not end by itself");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let took = start.elapsed();
    // A line or two each: the pipes never filled while it ran.
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        code: status.code(),
        stdout,
        stderr,
        took,
    }
}

/// Asserts that `run` failed (exit 1) with `reason` on stderr, nothing on
/// stdout.
fn assert_fails(run: &Run, reason: &str) {
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
    assert!(
        run.stderr.contains(reason),
        "stderr lacks {reason:?}: {}",
        run.stderr
    );
}

/// Asserts a usage error: exit 2, a message, nothing on stdout.
fn assert_usage_error(args: &[&str], needle: &str) {
    let run = probe(args);
    assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
}

/// Asserts success: exit 0 and `ok: SIZE bytes echoed by BY in N ms`.
fn assert_echoed(run: &Run, size: usize, by: &str) {
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let prefix = format!("ok: {size} bytes echoed by {by} in ");
    let line = run.stdout.trim_end();
    let ms = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(" ms"))
        .unwrap_or_else(|| panic!("{line:?} is not {prefix}N ms"));
    assert!(ms.parse::<f64>().is_ok_and(|ms| ms >= 0.0), "{line}");
    assert_eq!(run.stdout.lines().count(), 1, "one line: {}", run.stdout);
}

#[test]
fn passes_against_the_server_over_tcp_udp_and_unix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let path = path.to_str().unwrap();
    let mut server = Binary::spawn(&["--udp", "--unix", path, "0"]);
    let addr = server.tcp_addr().to_string();
    assert_echoed(&probe(&[&addr]), 32, &format!("tcp {addr}"));
    assert_echoed(&probe(&["--udp", &addr]), 32, &format!("udp {addr}"));
    assert_echoed(&probe(&["--unix", path]), 32, &format!("unix {path}"));
    // Larger than a piece (16 KiB) and a socket buffer or two; the largest
    // datagram; one byte.
    assert_echoed(
        &probe(&["--size", "1M", &addr]),
        1 << 20,
        &format!("tcp {addr}"),
    );
    assert_echoed(
        &probe(&["--udp", "--size", "65507", &addr]),
        65_507,
        &format!("udp {addr}"),
    );
    assert_echoed(
        &probe(&["--size=1", "--unix", path]),
        1,
        &format!("unix {path}"),
    );
    // A name: `localhost` may resolve to ::1 first, which nothing serves
    // here; the probe goes on to 127.0.0.1.
    let port = addr.rsplit_once(':').unwrap().1;
    let run = probe(&[&format!("localhost:{port}")]);
    assert_echoed(&run, 32, &format!("tcp {addr}"));
    server.stop();
}

/// A TCP server on 127.0.0.1 that takes one connection and hands it to
/// `answer`; the handle ends when `answer` does.
fn one_connection(
    answer: impl FnOnce(std::net::TcpStream) + Send + 'static,
) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        answer(stream);
    });
    (addr, handle)
}

/// Waits for the client to be gone (end of file, a reset, or the deadline).
fn until_closed(mut stream: std::net::TcpStream) {
    let mut buf = [0u8; 1024];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

#[test]
fn a_wrong_byte_is_named() {
    let (addr, server) = one_connection(|mut s| {
        let mut got = [0u8; 32];
        s.read_exact(&mut got).unwrap();
        got[5] ^= 0xff;
        s.write_all(&got).unwrap();
        until_closed(s);
    });
    let run = probe(&[&addr]);
    assert_fails(
        &run,
        &format!("error: tcp {addr}: wrong reply: byte 5 (from 0) of 32"),
    );
    server.join().unwrap();
}

#[test]
fn more_bytes_than_sent_are_wrong() {
    let (addr, server) = one_connection(|mut s| {
        let mut got = [0u8; 32];
        s.read_exact(&mut got).unwrap();
        let mut reply = got.to_vec();
        reply.extend_from_slice(b"more");
        s.write_all(&reply).unwrap();
        until_closed(s);
    });
    let run = probe(&[&addr]);
    assert_fails(&run, "wrong reply: more bytes came back than the 32 sent");
    server.join().unwrap();
}

/// Surplus that comes a moment after a correct echo, in a segment of its
/// own, is caught too (outside review: it passed as `ok`).
#[test]
fn more_bytes_a_moment_after_the_echo_are_wrong() {
    let (addr, server) = one_connection(|mut s| {
        let mut got = [0u8; 32];
        s.read_exact(&mut got).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&got).unwrap();
        thread::sleep(std::time::Duration::from_millis(5));
        let _ = s.write_all(b"more");
        until_closed(s);
    });
    let run = probe(&[&addr]);
    assert_fails(&run, "wrong reply: more bytes came back than the 32 sent");
    server.join().unwrap();
}

#[test]
fn a_reply_cut_short_is_named() {
    let (addr, server) = one_connection(|mut s| {
        let mut got = [0u8; 32];
        s.read_exact(&mut got).unwrap();
        s.write_all(&got[..10]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        until_closed(s);
    });
    let run = probe(&[&addr]);
    assert_fails(&run, "closed by the server after 10 of 32 bytes echoed");
    server.join().unwrap();
}

#[test]
fn a_server_that_closes_at_once_fails() {
    let (addr, server) = one_connection(drop);
    let run = probe(&[&addr]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    // Closed before or after the payload arrived: a FIN, or a reset (the
    // kernel resets a close with unread data).
    assert!(
        run.stderr.contains("closed by the server after 0 of 32")
            || run.stderr.contains("reset by the server after 0 of 32"),
        "{}",
        run.stderr
    );
    server.join().unwrap();
}

#[test]
fn a_server_that_never_answers_times_out_within_the_timeout() {
    let (addr, server) = one_connection(until_closed);
    let run = probe(&["--timeout", "0.5", &addr]);
    assert_fails(&run, "timed out after 0.5 s: 0 of 32 bytes echoed");
    assert!(
        run.took >= Duration::from_millis(500) && run.took < Duration::from_secs(5),
        "took {:?}",
        run.took
    );
    server.join().unwrap();
}

#[test]
fn a_wrong_datagram_is_named() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let server = thread::spawn(move || {
        let mut buf = [0u8; 100];
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(n, 32);
        socket.send_to(&buf[..10], from).unwrap();
    });
    let run = probe(&["--udp", &addr]);
    assert_fails(
        &run,
        "wrong reply: a datagram of 10 bytes came back, sent 32",
    );
    server.join().unwrap();
}

#[test]
fn a_silent_udp_server_times_out() {
    // Bound, so no ICMP "port unreachable" comes back; never read.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let run = probe(&["--udp", "--timeout", "0.3", &addr]);
    assert_fails(&run, "timed out after 0.3 s: 0 of 32 bytes echoed");
    drop(socket);
}

/// A port nothing listens on (bound, then closed: another process could
/// take it in between, but only by chance).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_refused_port_is_named() {
    let addr = free_port().to_string();
    assert_fails(
        &probe(&[&addr]),
        &format!("error: tcp {addr}: connection refused"),
    );
    let udp = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    assert_fails(
        &probe(&["--udp", &udp]),
        &format!("error: udp {udp}: connection refused"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.sock");
    let path = path.to_str().unwrap();
    assert_fails(&probe(&["--unix", path]), "no such socket file");
    // A socket file nobody accepts on any more.
    drop(std::os::unix::net::UnixListener::bind(path).unwrap());
    assert_fails(&probe(&["--unix", path]), "connection refused");
}

#[test]
fn a_name_that_does_not_resolve_exits_1() {
    let run = probe(&["--timeout", "5", "no-such-host.invalid:7007"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    // Whatever the resolver says, or that it said nothing in time.
    assert!(
        run.stderr
            .contains("tcp no-such-host.invalid:7007: cannot resolve")
            || run
                .stderr
                .contains("timed out after 5 s resolving the name"),
        "{}",
        run.stderr
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_usage_error(&[], "<HOST:PORT>");
    assert_usage_error(&["127.0.0.1"], "is not HOST:PORT");
    assert_usage_error(&["::1:7007"], "is not HOST:PORT");
    assert_usage_error(&["127.0.0.1:70000"], "is not HOST:PORT");
    assert_usage_error(&["127.0.0.1:0"], "port 0");
    assert_usage_error(&["a host:7"], "neither an IP address nor a host name");
    assert_usage_error(&["--size", "0", "127.0.0.1:7"], "--size");
    assert_usage_error(&["--size", "17M", "127.0.0.1:7"], "--size");
    assert_usage_error(&["--timeout", "0", "127.0.0.1:7"], "--timeout");
    assert_usage_error(&["--udp", "--size", "65508", "127.0.0.1:7"], "65507");
    assert_usage_error(&["--unix", "/tmp/x.sock", "127.0.0.1:7"], "cannot be used");
    assert_usage_error(&["--udp", "--unix", "/tmp/x.sock"], "cannot be used");
    assert_usage_error(&["--tls", "--udp", "127.0.0.1:7"], "cannot be used");
    assert_usage_error(&["--tls", "--unix", "/tmp/x.sock"], "cannot be used");
    assert_usage_error(&["--ca", "/tmp/ca.pem", "127.0.0.1:7"], "--tls");
    assert_usage_error(&["--server-name", "x", "127.0.0.1:7"], "--tls");
    assert_usage_error(&["--tls", "--cert", "/tmp/c.pem", "127.0.0.1:7"], "--key");
    assert_usage_error(&["--tls", "--key", "/tmp/k.pem", "127.0.0.1:7"], "--cert");
}

/// The server with a TLS port and a plain one; their addresses.
fn tls_server(pki: &Pki, extra: &[&str]) -> (Binary, String, String) {
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let mut args = vec!["--tls", "0", "--tls-cert", &cert, "--tls-key", &key, "0"];
    args.extend_from_slice(extra);
    let mut server = Binary::spawn(&args);
    // Both lines, in whichever order they come.
    let (mut tls, mut tcp) = (None, None);
    while tls.is_none() || tcp.is_none() {
        let line = server.expect_line("listening", |l| l.starts_with("listening on "));
        let (kind, addr) = line["listening on ".len()..].split_once(' ').unwrap();
        match kind {
            "tls" => tls = Some(addr.to_owned()),
            "tcp" => tcp = Some(addr.to_owned()),
            _ => {}
        }
    }
    (server, tls.unwrap(), tcp.unwrap())
}

#[test]
fn passes_over_tls_with_and_without_a_ca() {
    let Some(pki) = Pki::make(&[]) else { return };
    let (mut server, tls, _) = tls_server(&pki, &[]);
    let by = format!("tls {tls}");
    // Without a CA the certificate is not checked: only that TLS echoes.
    assert_echoed(&probe(&["--tls", &tls]), 32, &by);
    let ca = pki.arg("ca.pem");
    assert_echoed(&probe(&["--tls", "--ca", &ca, &tls]), 32, &by);
    // The certificate is for 127.0.0.1 and localhost; a name is looked
    // for as the name it is.
    let port = tls.rsplit_once(':').unwrap().1;
    let run = probe(&["--tls", "--ca", &ca, &format!("localhost:{port}")]);
    assert_echoed(&run, 32, &by);
    // Many TLS records, each piece read back before the next.
    assert_echoed(
        &probe(&["--tls", "--size", "1M", "--ca", &ca, &tls]),
        1 << 20,
        &by,
    );
    server.stop();
}

#[test]
fn a_certificate_not_trusted_or_for_another_name_fails_the_handshake() {
    let Some(pki) = Pki::make(&[]) else { return };
    let (mut server, tls, _) = tls_server(&pki, &[]);
    let ca = pki.arg("ca.pem");
    let run = probe(&["--tls", "--ca", &ca, "--server-name", "example.org", &tls]);
    assert_fails(&run, "TLS handshake failed");
    assert!(run.stderr.contains("example.org"), "{}", run.stderr);
    // The client certificate is no CA of the server's certificate.
    let run = probe(&["--tls", "--ca", &pki.arg("client.pem"), &tls]);
    assert_fails(&run, "TLS handshake failed: invalid peer certificate");
    // A CA file that does not exist is named.
    let run = probe(&["--tls", "--ca", "/nonexistent/ca.pem", &tls]);
    assert_fails(&run, "/nonexistent/ca.pem");
    server.stop();
}

#[test]
fn the_wrong_protocol_for_the_port_is_named() {
    let Some(pki) = Pki::make(&[]) else { return };
    let (mut server, tls, tcp) = tls_server(&pki, &[]);
    // Plaintext to a TLS port: the server's alert comes back.
    assert_fails(&probe(&[&tls]), "probe it with --tls");
    // TLS to a plain echo port: the ClientHello comes back.
    assert_fails(&probe(&["--tls", &tcp]), "does not speak TLS on this port");
    server.stop();
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let Some(pki) = Pki::make(&[]) else { return };
    let ca = pki.arg("ca.pem");
    let (mut server, tls, _) = tls_server(&pki, &["--tls-client-ca", &ca]);
    let (cert, key) = (pki.arg("client.pem"), pki.arg("client.key"));
    let by = format!("tls {tls}");
    assert_echoed(
        &probe(&["--tls", "--cert", &cert, "--key", &key, &tls]),
        32,
        &by,
    );
    // Without one the server refuses (TLS 1.3: with an alert after the
    // client's side of the handshake is done, so on the first read).
    let run = probe(&["--tls", &tls]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("CertificateRequired"), "{}", run.stderr);
    server.stop();
}

#[test]
fn a_server_silent_in_the_handshake_times_out_within_the_timeout() {
    let (addr, server) = one_connection(until_closed);
    let run = probe(&["--tls", "--timeout", "0.5", &addr]);
    assert_fails(&run, "timed out after 0.5 s in the TLS handshake");
    assert!(
        run.took >= Duration::from_millis(500) && run.took < Duration::from_secs(5),
        "took {:?}",
        run.took
    );
    server.join().unwrap();
}

/// `probe` is a command of its own: the server's options do not go with
/// it, and the server's command line reads as before.
#[test]
fn the_server_command_line_is_unchanged() {
    let run = |args: &[&str]| {
        let out = Binary::command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run echo-server");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Each of these ends at once (a usage error, or --version).
    let (code, stderr) = run(&["--udp", "probe", "127.0.0.1:7"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = run(&["7", "probe"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = run(&["help"]);
    assert_eq!(code, Some(2), "`help` is no port, as before: {stderr}");
    assert_eq!(run(&["--version"]).0, Some(0));
    // And a server still starts from ports alone.
    let mut server = Binary::spawn(&["0"]);
    let addr = server.tcp_addr();
    assert_echoed(&probe(&[&addr.to_string()]), 32, &format!("tcp {addr}"));
    server.stop();
}

/// A server that drips its handshake: a record header that promises 16 KiB,
/// then a byte every 100 ms. Each byte comes well within the socket
/// timeout, so only a deadline looked at on every read ends the probe
/// (rustls's `complete_io` reads on until the handshake is done).
#[test]
fn a_server_dripping_the_handshake_times_out_within_the_timeout() {
    let (addr, server) = one_connection(|mut stream| {
        let mut hello = [0u8; 4096];
        let _ = stream.read(&mut hello);
        let _ = stream.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if stream.write_all(&[0x02]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let run = probe(&["--tls", "--timeout", "0.5", &addr]);
    assert_fails(&run, "timed out after 0.5 s in the TLS handshake");
    assert!(run.took < Duration::from_secs(5), "took {:?}", run.took);
    server.join().unwrap();
}
