//! The server: its listeners, its engines, and the shutdown sequence that
//! drains them.

use crate::address::ListenAddr;
use crate::context::Context;
use crate::engine::Engines;
use crate::listener::Listener;
use crate::settings::Settings;
use crate::stats::Stats;
use std::io;
use std::net::{self, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// After the grace period, connections are shut down in both directions;
/// their threads then end within microseconds. This bounds the wait anyway.
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// An echo server with its sockets bound, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct Server {
    ctx: Arc<Context>,
    listeners: Vec<Listener>,
    /// Connections that may have a thread of their own.
    thread_seats: usize,
}

/// A cloneable handle to a server: stop it from any thread and read its
/// counters.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    ctx: Arc<Context>,
}

impl Server {
    pub(crate) fn new(
        listeners: Vec<Listener>,
        max_connections: usize,
        thread_seats: usize,
        settings: Settings,
    ) -> Server {
        let ctx = Arc::new(Context::new(settings, max_connections));
        for listener in &listeners {
            listener.register_waker(&ctx.shutdown);
        }
        Server {
            ctx,
            listeners,
            thread_seats,
        }
    }

    /// The address of the first TCP listener, with the real port when it was
    /// bound to port 0. See [`listen_addrs`](Self::listen_addrs) for UDP and
    /// Unix sockets.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listen_addrs().find_map(|a| match a {
            ListenAddr::Tcp(addr) => Some(*addr),
            _ => None,
        })
    }

    /// Every address the server listens on, in the order they were added.
    pub fn listen_addrs(&self) -> impl Iterator<Item = &ListenAddr> {
        self.listeners.iter().map(Listener::addr)
    }

    /// The seed of the impairments ([`ServerBuilder::impair`]), as given
    /// or drawn by `build`; `None` when nothing is impaired.
    ///
    /// [`ServerBuilder::impair`]: crate::ServerBuilder::impair
    pub fn impair_seed(&self) -> Option<u64> {
        self.ctx
            .settings
            .impair
            .as_ref()
            .and_then(|i| i.seed_value())
    }

    /// The shared state, for tests that inject faults.
    #[cfg(test)]
    pub(crate) fn context(&self) -> Arc<Context> {
        Arc::clone(&self.ctx)
    }

    /// A handle to stop the server and read its counters.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// Serves until [`ServerHandle::shutdown`] is called, then stops
    /// accepting, lets every connection echo what it has already read (for up
    /// to the shutdown grace period), closes them, and returns the final
    /// counters. When it returns, no connection is open.
    ///
    /// # Errors
    ///
    /// Only if the OS refuses the accept threads at start-up.
    pub fn run(self) -> io::Result<Stats> {
        let Server {
            ctx,
            listeners,
            thread_seats,
        } = self;
        let engines = Arc::new(Engines::start(&ctx, thread_seats)?);
        let mut accept_threads = Vec::with_capacity(listeners.len());
        for listener in listeners {
            let loop_ctx = Arc::clone(&ctx);
            let loop_engines = Arc::clone(&engines);
            let spawned = thread::Builder::new()
                .name("echo-listen".to_owned())
                .spawn(move || listener.serve(&loop_ctx, &loop_engines));
            match spawned {
                Ok(t) => accept_threads.push(t),
                Err(e) => {
                    ctx.shutdown.request();
                    join_all(accept_threads);
                    drain(&ctx, engines);
                    return Err(e);
                }
            }
        }
        join_all(accept_threads);
        drain(&ctx, engines);
        Ok(ctx.counters.snapshot())
    }
}

/// Lets every connection finish what it has read, then closes what is left,
/// on every engine. The accept loops have ended, so no connection is handed
/// to an engine any more; every connection is in the table.
fn drain(ctx: &Context, engines: Arc<Engines>) {
    let table = &ctx.table;
    table.shutdown_all(net::Shutdown::Read);
    engines.nudge();
    if !table.wait_until_empty(ctx.settings.shutdown_grace) {
        log::warn!("closing connections still busy after the shutdown grace period");
        table.shutdown_all(net::Shutdown::Both);
        engines.nudge();
        if !table.wait_until_empty(FORCED_CLOSE_WAIT) {
            log::error!("some connections did not stop");
        }
    }
    // Stops the event loops (closing anything left) and joins them: the
    // accept threads, the only other owners, are joined already.
    drop(engines);
    // Joins every thread whose connection has ended (all of them, normally).
    table.reap();
}

fn join_all(threads: Vec<thread::JoinHandle<()>>) {
    for t in threads {
        if t.join().is_err() {
            log::error!("an accept loop panicked");
        }
    }
}

impl ServerHandle {
    /// Whether the server has TLS listeners (whose certificates
    /// [`reload_tls`](Self::reload_tls) re-reads).
    pub fn has_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.ctx.settings.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Re-reads the TLS certificate chain, key and client CA from their
    /// files (feature `tls`): connections accepted from now on get the new
    /// ones, those open go on with theirs.
    ///
    /// # Errors
    ///
    /// `NotFound` when the server has no TLS listener; otherwise the file
    /// that could not be read or used and why, and the configuration in
    /// force stays.
    #[cfg(feature = "tls")]
    pub fn reload_tls(&self) -> io::Result<()> {
        match &self.ctx.settings.tls {
            Some(config) => config.reload(),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the server has no TLS listener",
            )),
        }
    }

    /// Asks the server to stop. Returns at once; [`Server::run`] returns once
    /// the server has drained. Calling it again does nothing.
    pub fn shutdown(&self) {
        self.ctx.shutdown.request();
    }

    /// Whether shutdown has been requested.
    pub fn is_shutdown(&self) -> bool {
        self.ctx.shutdown.is_requested()
    }

    /// The counters as they are now.
    pub fn stats(&self) -> Stats {
        self.ctx.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::time::Instant;

    /// Each accept joins the threads of connections that ended before it,
    /// so finished threads never pile up, and shutdown joins the rest.
    #[test]
    fn finished_connection_threads_are_joined() {
        let server = Server::builder().tcp(([127, 0, 0, 1], 0)).build().unwrap();
        let addr = server.local_addr().unwrap();
        let ctx = Arc::clone(&server.ctx);
        let running = thread::spawn(move || server.run());
        for _ in 0..20 {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.write_all(b"x").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            assert_eq!(back, b"x");
        }
        // Only the last connection's thread is left to join.
        let start = Instant::now();
        while ctx.table.unjoined() != 1 {
            assert!(
                ctx.table.unjoined() <= 1,
                "{} threads never joined",
                ctx.table.unjoined()
            );
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the last thread was not recorded"
            );
            thread::yield_now();
        }
        ctx.shutdown.request();
        running.join().unwrap().unwrap();
        assert_eq!(ctx.table.unjoined(), 0);
    }
}
