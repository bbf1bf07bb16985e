//! Configuring a server: which sockets to listen on and how to serve them.

use crate::listener::{self, StreamListener};
use crate::server::{Server, Settings};
use socket2::Socket;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Connections served at once unless configured otherwise. Threads are cheap
/// when idle (a small stack, no buffer touched), so this is set by what a
/// default file descriptor limit allows rather than by memory.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Listen backlog: how many clients may wait for `accept` (also while the
/// connection limit is reached). The kernel caps it at `somaxconn`.
pub const DEFAULT_BACKLOG: i32 = 1024;

/// How long shutdown lets connections finish echoing what they have already
/// read before it closes them outright.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Builds a [`Server`]: add listeners, set limits, then [`build`](Self::build)
/// binds every socket.
///
/// # Examples
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// use std::time::Duration;
/// let server = echo_server::Server::builder()
///     .tcp(([127, 0, 0, 1], 0))
///     .max_connections(100)
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .build()?;
/// assert!(server.local_addr().is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ServerBuilder {
    sources: Vec<Source>,
    max_connections: usize,
    backlog: i32,
    settings: Settings,
}

#[derive(Debug)]
enum Source {
    Tcp(SocketAddr),
    TcpListener(TcpListener),
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            sources: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            backlog: DEFAULT_BACKLOG,
            settings: Settings {
                idle_timeout: None,
                log_data: false,
                shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            },
        }
    }
}

impl ServerBuilder {
    /// Listens for TCP on `addr`. Port 0 lets the OS pick one (see
    /// [`Server::local_addr`]). An unspecified IPv6 address (`::`) accepts
    /// IPv4 clients too.
    pub fn tcp(mut self, addr: impl Into<SocketAddr>) -> Self {
        self.sources.push(Source::Tcp(addr.into()));
        self
    }

    /// Serves connections from an already listening TCP socket.
    pub fn tcp_listener(mut self, listener: TcpListener) -> Self {
        self.sources.push(Source::TcpListener(listener));
        self
    }

    /// At most `max` connections are served at once; clients beyond that
    /// wait in the listen backlog until a slot frees. Default
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Closes a connection whose client has sent nothing for `timeout`.
    /// `None` (the default) never does.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.idle_timeout = timeout;
        self
    }

    /// Logs every received chunk, escaped to printable ASCII, at info level
    /// through the `log` crate. Off by default.
    pub fn log_data(mut self, on: bool) -> Self {
        self.settings.log_data = on;
        self
    }

    /// How long shutdown waits for connections to finish echoing before it
    /// closes them. Default [`DEFAULT_SHUTDOWN_GRACE`].
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// Listen backlog for listeners this builder binds. Default
    /// [`DEFAULT_BACKLOG`].
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Binds every listener. Errors name the address that failed, e.g.
    /// `cannot listen on tcp 127.0.0.1:7: Address already in use`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a configuration that cannot serve (no listener, a
    /// limit of 0 connections, a zero idle timeout), or the OS error from
    /// binding, with the address added.
    pub fn build(self) -> io::Result<Server> {
        if self.sources.is_empty() {
            return Err(invalid("no listener configured"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max connections must be at least 1"));
        }
        if self.settings.idle_timeout == Some(Duration::ZERO) {
            return Err(invalid("idle timeout must be more than zero"));
        }
        let mut listeners = Vec::with_capacity(self.sources.len());
        for source in self.sources {
            listeners.push(match source {
                Source::Tcp(addr) => listener::bind_tcp(addr, self.backlog).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on tcp {addr}: {e}"))
                })?,
                Source::TcpListener(l) => StreamListener::from_socket(Socket::from(l))?,
            });
        }
        Ok(Server::new(listeners, self.max_connections, self.settings))
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}
