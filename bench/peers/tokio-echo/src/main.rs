//! tokio-echo: the echo server as most tokio users would write it, a peer in
//! the comparison for "idiomatic async Rust".
//!
//! The multi-thread runtime (one worker per core, work stealing), an accept
//! loop, and one spawned task per connection that reads into its own buffer
//! (`--buf BYTES`, default 4096) and `write_all`s each piece back until the
//! client closes. Nothing tuned beyond that: the point is the cost of the
//! ordinary design.
//!
//! `--udp` also serves UDP echo on the same port: one task on one socket,
//! `recv_from` into a 64 KiB buffer (the largest datagram fits) and
//! `send_to` the same bytes back to the sender.
//!
//! `--tls CERT KEY` serves TLS instead (tokio-rustls on rustls with ring, the
//! same TLS library and crypto provider as echo-server, with its defaults:
//! TLS 1.2 and 1.3, session tickets as rustls sends them): the peer of the
//! comparison's TLS rows, "TLS as a tokio user adds it". The echo loop is the
//! same, plus a `flush` after each `write_all` so that records rustls holds
//! back reach the socket before the next read.
//!
//! Usage: tokio-echo [--buf BYTES] [--udp | --tls CERT KEY] PORT   (listens on 127.0.0.1:PORT only)

use std::io;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

struct Options {
    port: u16,
    buf: usize,
    udp: bool,
    /// Certificate chain and key files (PEM) when serving TLS.
    tls: Option<(String, String)>,
}

/// `[--buf BYTES] [--udp] PORT`, the port last, as every peer takes it.
fn parse(args: &[String]) -> Option<Options> {
    let (port, flags) = args.split_last()?;
    let mut opts = Options {
        port: port.parse().ok().filter(|&p| p > 0)?,
        buf: 4096,
        udp: false,
        tls: None,
    };
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        match flag.as_str() {
            "--buf" => opts.buf = flags.next()?.parse().ok().filter(|&n| n > 0)?,
            "--udp" => opts.udp = true,
            "--tls" => opts.tls = Some((flags.next()?.clone(), flags.next()?.clone())),
            _ => return None,
        }
    }
    if opts.udp && opts.tls.is_some() {
        return None;
    }
    Some(opts)
}

async fn echo_tcp<S: AsyncRead + AsyncWrite + Unpin>(mut socket: S, buf_size: usize) {
    let mut buf = vec![0u8; buf_size];
    loop {
        // A read error (reset) ends the connection like EOF does: there is
        // nobody left to answer.
        let n = match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if socket.write_all(&buf[..n]).await.is_err() || socket.flush().await.is_err() {
            return;
        }
    }
}

async fn echo_udp(socket: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            // A send that fails (a full socket buffer) loses this one
            // datagram, as UDP may; the loop goes on.
            Ok((n, peer)) => drop(socket.send_to(&buf[..n], peer).await),
            Err(e) => {
                // ICMP errors can surface here on Linux; do not spin on them.
                eprintln!("tokio-echo: udp recv_from: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The acceptor for `--tls CERT KEY`: rustls' defaults on the ring provider.
fn tls_acceptor(cert: &str, key: &str) -> io::Result<TlsAcceptor> {
    let bad = |file: &str, e: &dyn std::fmt::Display| io::Error::other(format!("{file}: {e}"));
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    // Deprecated in rustls 0.23.48 for want of post-quantum key exchange;
    // echo-server makes the same choice (classical X25519/P-256), so the
    // handshakes compared are the same.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(cert, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(opts: Options) -> io::Result<()> {
    let addr = (Ipv4Addr::LOCALHOST, opts.port);
    let acceptor = match &opts.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let listener = TcpListener::bind(addr).await?;
    if opts.udp {
        tokio::spawn(echo_udp(UdpSocket::bind(addr).await?));
    }
    eprintln!(
        "tokio-echo: listening on {} 127.0.0.1:{}",
        if opts.udp {
            "tcp+udp"
        } else if acceptor.is_some() {
            "tls"
        } else {
            "tcp"
        },
        opts.port
    );
    loop {
        match listener.accept().await {
            Ok((socket, _)) => match &acceptor {
                None => drop(tokio::spawn(echo_tcp(socket, opts.buf))),
                Some(acceptor) => {
                    // A TLS server writes several records in a row (its
                    // handshake flight, then session tickets, then the
                    // echo): without this, Nagle holds the echo back for a
                    // delayed ACK, and the comparison would measure that.
                    // echo-server sets it on every connection.
                    let _ = socket.set_nodelay(true);
                    let accept = acceptor.accept(socket);
                    let buf = opts.buf;
                    // A failed handshake ends that connection only.
                    tokio::spawn(async move {
                        if let Ok(tls) = accept.await {
                            echo_tcp(tls, buf).await;
                        }
                    });
                }
            },
            Err(e) => {
                // Out of descriptors (EMFILE) repeats at once: back off a
                // little instead of spinning, as hyper and others do.
                eprintln!("tokio-echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(opts) = parse(&args) else {
        eprintln!("usage: tokio-echo [--buf BYTES] [--udp | --tls CERT KEY] PORT");
        return ExitCode::from(2);
    };
    // What #[tokio::main] builds: the multi-thread runtime with I/O and timers.
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .and_then(|rt| rt.block_on(serve(opts)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
