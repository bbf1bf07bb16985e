//! A thread-per-connection echo server (RFC 862) that is hard to knock over.
//!
//! Every byte a client sends comes back, in order, over TCP (IPv4, IPv6,
//! dual-stack; plain, TLS, or behind a load balancer's PROXY protocol
//! header), Unix sockets and UDP. One verified echo core, [`Echo`] (and
//! the blocking [`echo`] on top of it), copies any `Read + Write` back onto
//! itself and never touches a socket, so that the property tests and fuzz
//! targets exercise exactly the code that serves real clients. It is served
//! by a thread per connection at the heart (small-stack threads, the first
//! connections under the default `auto` engine, every one under `threads`)
//! and by event loops (epoll, or io_uring with `--engine uring`) for the
//! rest. Around it sit a
//! connection limit that applies backpressure instead of refusing clients,
//! idle timeouts, counters, and a shutdown that lets connections finish what
//! they have read.
//!
//! # Features
//!
//! - `cli` (default): the `echo-server` command, `echo_server::cli` (clap, signals,
//!   the logger, the man page and completions). Needs `metrics`.
//! - `metrics` (default): `echo_server::metrics`, the Prometheus endpoint and probes
//!   (httparse).
//! - `tls` (default): TLS listeners (`ServerBuilder::tls`), mutual TLS and
//!   certificate reload, on rustls with its `ring` provider.
//! - `uring` (default): the io_uring engine, `Engine::Uring` (Linux), on
//!   the io-uring crate.
//! - `scripted`: `echo_server::scripted`, the scripted in-memory stream the fuzz
//!   targets drive the echo core with.
//!
//! With `default-features = false` the library builds on socket2, mio,
//! libc and log alone, which is what a test suite starting a server
//! in-process needs.
//!
//! # Examples
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{Shutdown, TcpStream};
//!
//! # fn main() -> std::io::Result<()> {
//! let server = echo_server::Server::builder().tcp(([127, 0, 0, 1], 0)).build()?;
//! let addr = server.local_addr().expect("a TCP listener was added");
//! let handle = server.handle();
//! let running = std::thread::spawn(move || server.run());
//!
//! let mut client = TcpStream::connect(addr)?;
//! client.write_all(b"hello")?;
//! client.shutdown(Shutdown::Write)?; // half-close: the server answers, then closes
//! let mut reply = Vec::new();
//! client.read_to_end(&mut reply)?;
//! assert_eq!(reply, b"hello");
//!
//! handle.shutdown();
//! let stats = running.join().expect("server thread")?;
//! assert_eq!(stats.bytes_echoed, 5);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs, missing_debug_implementations)]
#![warn(rust_2018_idioms, unreachable_pub)]
// Every unsafe block is in `sys`, which wraps each system call once.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

// Layers, bottom up; a module imports only from layers below it.
// 0. The system calls, each wrapped once in a safe function: imports
//    nothing of the crate.
// The only place `unsafe` is allowed: every libc call and every raw
// pointer of the crate is here, behind safe functions.
#[allow(unsafe_code)]
mod sys;
// 1. The echo core and plain values: addresses, the datagram filter, rate
//    limits, settings, budgets (within it, settings -> rate_limit ->
//    datagram_filter -> address -> escape, and shutdown -> sync; impairment
//    is a value on its own).
mod address;
mod datagram_filter;
mod descriptor_budget;
mod echo;
mod escape;
mod fault;
mod impairment;
pub mod proxy_protocol;
mod rate_limit;
mod settings;
mod shutdown;
mod sync;
mod thread_budget;
// TLS (feature `tls`): the Read + Write adapter over rustls, and the
// certificates it serves with (read at start-up, re-read on reload).
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
mod tls_config;
// 2. Shared state: counters, limits, the stream type, the connection table.
mod context;
mod limit;
mod stats;
mod stream;
mod table;
// 3. One connection's life, and the engines that serve connections.
mod connection;
mod engine;
#[cfg(target_os = "linux")]
mod splice;
// 4. Transports: listeners and their accept loop, Unix paths, UDP, systemd.
#[cfg(unix)]
pub mod activation;
mod listener;
pub mod udp;
#[cfg(unix)]
mod unix;
// 5. The server, its builder, and the command line.
mod builder;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "metrics")]
pub mod metrics;
mod server;

// 6. Tests and test support, never part of serving: the in-process,
//    impairable test server for clients' test suites (public), the
//    properties over real sockets, the model checks, and the scripted
//    stream the unit tests and fuzz targets drive the echo core with.
pub mod testing;

#[cfg(any(test, feature = "scripted"))]
pub use testing::scripted;

pub use address::{ListenAddr, Network};
pub use builder::{
    ServerBuilder, DEFAULT_BACKLOG, DEFAULT_KEEPALIVE, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PROXY_TIMEOUT, DEFAULT_RECLAIM_IDLE, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_THREAD_CONNECTIONS, DEFAULT_TLS_HANDSHAKE_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
};
pub use echo::{
    echo, echo_until_bulk, echo_with_buffer, Echo, Progress, Status, DEFAULT_BUFFER_SIZE,
    SMALL_BUFFER_SIZE,
};
pub use escape::{escape, unescape};
pub use impairment::Impairments;
pub use rate_limit::{
    RateLimit, SourcePrefix, DEFAULT_UDP_BURST, DEFAULT_UDP_RATE, DEFAULT_UDP_TOTAL_BURST,
    DEFAULT_UDP_TOTAL_RATE,
};
pub use server::{Server, ServerHandle};
pub use settings::Engine;
pub use stats::Stats;
