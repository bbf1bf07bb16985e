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
//! Usage: tokio-echo [--buf BYTES] [--udp] PORT   (listens on 127.0.0.1:PORT only)

use std::io;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

struct Options {
    port: u16,
    buf: usize,
    udp: bool,
}

/// `[--buf BYTES] [--udp] PORT`, the port last, as every peer takes it.
fn parse(args: &[String]) -> Option<Options> {
    let (port, flags) = args.split_last()?;
    let mut opts = Options {
        port: port.parse().ok().filter(|&p| p > 0)?,
        buf: 4096,
        udp: false,
    };
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        match flag.as_str() {
            "--buf" => opts.buf = flags.next()?.parse().ok().filter(|&n| n > 0)?,
            "--udp" => opts.udp = true,
            _ => return None,
        }
    }
    Some(opts)
}

async fn echo_tcp(mut socket: TcpStream, buf_size: usize) {
    let mut buf = vec![0u8; buf_size];
    loop {
        // A read error (reset) ends the connection like EOF does: there is
        // nobody left to answer.
        let n = match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if socket.write_all(&buf[..n]).await.is_err() {
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

async fn serve(opts: Options) -> io::Result<()> {
    let addr = (Ipv4Addr::LOCALHOST, opts.port);
    let listener = TcpListener::bind(addr).await?;
    if opts.udp {
        tokio::spawn(echo_udp(UdpSocket::bind(addr).await?));
    }
    eprintln!(
        "tokio-echo: listening on tcp{} 127.0.0.1:{}",
        if opts.udp { "+udp" } else { "" },
        opts.port
    );
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                tokio::spawn(echo_tcp(socket, opts.buf));
            }
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
        eprintln!("usage: tokio-echo [--buf BYTES] [--udp] PORT");
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
