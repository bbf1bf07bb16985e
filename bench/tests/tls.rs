//! `--tls-ca`: the built `echo-bench` over TLS against a small rustls echo
//! server started in the test on 127.0.0.1:0 (a thread per connection,
//! every read and write with a timeout), with the certificates of
//! `tests/data` (see its README).

mod support;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;
use support::{bench, num};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

struct TlsEchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections whose handshake completed.
    handshakes: Arc<AtomicU64>,
    acceptor: Option<JoinHandle<()>>,
}

impl TlsEchoServer {
    fn start() -> Self {
        let certs = CertificateDer::pem_file_iter(data("tls-cert.pem"))
            .expect("cert file")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert PEM");
        let key = PrivateKeyDer::from_pem_file(data("tls-key.pem")).expect("key PEM");
        #[allow(deprecated)] // as in src/tls.rs
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(AtomicU64::new(0));
        let (stopping, counted) = (Arc::clone(&stop), Arc::clone(&handshakes));
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (config, counted) = (Arc::clone(&config), Arc::clone(&counted));
                thread::spawn(move || serve(stream, config, &counted));
            }
        });
        TlsEchoServer {
            addr,
            stop,
            handshakes,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for TlsEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve(sock: TcpStream, config: Arc<ServerConfig>, handshakes: &AtomicU64) {
    let _ = sock.set_read_timeout(Some(IO_TIMEOUT));
    let _ = sock.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    handshakes.fetch_add(1, Ordering::SeqCst);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tls.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
            return;
        }
    }
}

fn ca(name: &str) -> String {
    data(name).to_str().expect("UTF-8 path").to_owned()
}

#[test]
fn pingpong_over_tls_echoes_through_the_session() {
    let server = TlsEchoServer::start();
    let ca = ca("tls-ca.pem");
    let (code, json) = bench(
        server.addr,
        &[
            "pingpong",
            "--connections",
            "4",
            "--size",
            "40000",
            "--tls-ca",
            &ca,
        ],
    );
    assert_eq!(code, 0, "{json}");
    assert_eq!(num(&json, "errors"), 0, "{json}");
    assert!(num(&json, "round_trips") > 0, "{json}");
    // Every connection made its handshake with the server (a plaintext
    // client would make none).
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 4);
}

#[test]
fn connrate_over_tls_counts_full_handshakes() {
    let server = TlsEchoServer::start();
    let ca = ca("tls-ca.pem");
    let (code, json) = bench(
        server.addr,
        &["connrate", "--parallel", "4", "--tls-ca", &ca],
    );
    assert_eq!(code, 0, "{json}");
    assert_eq!(num(&json, "errors"), 0, "{json}");
    let made = num(&json, "connections_made");
    assert!(made > 0, "{json}");
    // Each connection counted is one handshake the server completed (the
    // loops still running at the deadline may add a few).
    assert!(server.handshakes.load(Ordering::SeqCst) >= made, "{json}");
}

#[test]
fn a_certificate_the_ca_did_not_sign_fails_every_connection() {
    let server = TlsEchoServer::start();
    let ca = ca("tls-other-ca.pem");
    let (code, json) = bench(server.addr, &["pingpong", "--tls-ca", &ca]);
    assert_eq!(code, 1, "{json}");
    assert!(num(&json, "errors") > 0, "{json}");
    assert_eq!(num(&json, "round_trips"), 0, "{json}");
}

#[test]
fn a_name_the_certificate_does_not_carry_fails() {
    let server = TlsEchoServer::start();
    let ca = ca("tls-ca.pem");
    let (code, json) = bench(
        server.addr,
        &["pingpong", "--tls-ca", &ca, "--tls-name", "example.org"],
    );
    assert_eq!(code, 1, "{json}");
    assert_eq!(num(&json, "round_trips"), 0, "{json}");
}

#[test]
fn tls_usage_errors_exit_2() {
    let ca = ca("tls-ca.pem");
    let missing = ca.replace("tls-ca.pem", "no-such-file.pem");
    let key = ca.replace("tls-ca.pem", "tls-key.pem");
    for args in [
        &["bulk", "--tls-ca", &ca][..],
        &["hold", "--tls-ca", &ca],
        &["pingpong", "--tls-ca", &missing],
        &["pingpong", "--tls-ca", &key],
        &["pingpong", "--tls-name", "localhost"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_echo-bench"))
            .args(args)
            .args(["--addr", "127.0.0.1:9", "--duration", "0.1"])
            .output()
            .expect("run echo-bench");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}
