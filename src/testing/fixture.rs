//! An echo server inside a test's own process, impaired as the test asks,
//! for testing a client against a hostile network: [`TestServer`].

use crate::address::ListenAddr;
use crate::builder::ServerBuilder;
use crate::impairment::Impairments;
use crate::server::{Server, ServerHandle};
use crate::settings::Engine;
use crate::stats::Stats;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

/// An echo server on `127.0.0.1` (a port the OS picks), running on a
/// thread of the test's process; dropping it stops the server and joins
/// the thread.
///
/// Every impairment is drawn from a seed ([`seed`](TestServer::seed)
/// tells it; [`TestServerBuilder::seed`] fixes it), so a failing test can
/// be replayed exactly.
///
/// # Examples
///
/// A client's framing code (a 4-byte big-endian length, then the message)
/// must cope with a reply that comes a byte at a time, and must report a
/// connection reset in the middle of a message as an error, not as a short
/// message:
///
/// ```
/// use echo_server::testing::TestServer;
/// use std::io::{self, Read, Write};
/// use std::net::TcpStream;
/// use std::time::Duration;
///
/// /// The client library's code under test: one length-prefixed frame.
/// fn read_frame(stream: &mut impl Read) -> io::Result<Vec<u8>> {
///     let mut len = [0u8; 4];
///     stream.read_exact(&mut len)?;
///     let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
///     stream.read_exact(&mut frame)?;
///     Ok(frame)
/// }
///
/// fn send_frame(stream: &mut impl Write, frame: &[u8]) -> io::Result<()> {
///     stream.write_all(&(frame.len() as u32).to_be_bytes())?;
///     stream.write_all(frame)
/// }
///
/// # fn main() -> io::Result<()> {
/// // Every piece of the echo is one byte, each written on its own.
/// let server = TestServer::builder().chunk(1, 1).seed(7).start()?;
/// let mut client = TcpStream::connect(server.addr())?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
/// send_frame(&mut client, b"hello, world")?;
/// assert_eq!(read_frame(&mut client)?, b"hello, world");
///
/// // Reset after 10 bytes: the length and 6 bytes of the message.
/// let server = TestServer::builder().reset_after(10, 10).start()?;
/// let mut client = TcpStream::connect(server.addr())?;
/// client.set_read_timeout(Some(Duration::from_secs(10)))?;
/// send_frame(&mut client, b"hello, world")?;
/// let error = read_frame(&mut client).unwrap_err();
/// assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    udp_addr: Option<SocketAddr>,
    seed: Option<u64>,
    handle: ServerHandle,
    running: Option<JoinHandle<io::Result<Stats>>>,
}

/// How a [`TestServer`] is impaired; nothing by default. The first invalid
/// value is returned by [`start`](TestServerBuilder::start).
#[derive(Debug)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct TestServerBuilder {
    impairments: io::Result<Impairments>,
    udp: bool,
    engine: Engine,
    idle_timeout: Option<Duration>,
}

impl TestServer {
    /// A server to impair.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            impairments: Ok(Impairments::new()),
            udp: false,
            engine: Engine::Auto,
            idle_timeout: Some(Duration::from_secs(10)),
        }
    }

    /// A clean echo server.
    ///
    /// # Errors
    ///
    /// The OS's, if 127.0.0.1 cannot be bound.
    pub fn start() -> io::Result<TestServer> {
        TestServer::builder().start()
    }

    /// Its TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its UDP address (the same port), if [`udp`](TestServerBuilder::udp)
    /// was asked for.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The seed of its impairments (given or drawn); `None` when clean.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// Its counters so far.
    pub fn stats(&self) -> Stats {
        self.handle.stats()
    }

    /// Stops it (open connections are closed after the shutdown grace)
    /// and returns its counters.
    ///
    /// # Errors
    ///
    /// The server's, if it failed.
    pub fn stop(mut self) -> io::Result<Stats> {
        self.handle.shutdown();
        match self.running.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the server thread panicked")),
            None => Ok(self.handle.stats()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(running) = self.running.take() {
            let _ = running.join();
        }
    }
}

macro_rules! setter {
    ($(#[doc = $doc:literal])* $name:ident($($arg:ident: $ty:ty),*)) => {
        $(#[doc = $doc])*
        pub fn $name(mut self, $($arg: $ty),*) -> Self {
            self.impairments = self.impairments.and_then(|i| i.$name($($arg),*));
            self
        }
    };
}

impl TestServerBuilder {
    setter!(
        /// The echo in pieces of `min..=max` bytes, each its own write.
        chunk(min: usize, max: usize)
    );
    setter!(
        /// A delay of `min..=max` before each piece (and UDP reply).
        delay(min: Duration, max: Duration)
    );
    setter!(
        /// Each connection's echo paced to this many bytes a second.
        rate(bytes_per_second: u64)
    );
    setter!(
        /// A reset (RST) after `min..=max` bytes echoed.
        reset_after(min: u64, max: u64)
    );
    setter!(
        /// A clean close after `bytes` echoed.
        close_after(bytes: u64)
    );
    setter!(
        /// Nothing read or written after `bytes` echoed, until the idle
        /// timeout.
        stall_after(bytes: u64)
    );
    setter!(
        /// UDP replies dropped with probability `p`.
        drop(p: f64)
    );
    setter!(
        /// UDP replies sent twice with probability `p`.
        duplicate(p: f64)
    );
    setter!(
        /// UDP replies held back behind the next with probability `p`.
        reorder(p: f64)
    );

    /// The seed of every choice (else one is drawn).
    pub fn seed(mut self, seed: u64) -> Self {
        self.impairments = self.impairments.map(|i| i.seed(seed));
        self
    }

    /// Answers UDP on the same port too.
    pub fn udp(mut self, on: bool) -> Self {
        self.udp = on;
        self
    }

    /// The engine serving connections (the default: `Auto`).
    pub fn engine(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    /// How long a silent (or stalled) connection stays open: 10 s by
    /// default.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on a thread.
    ///
    /// # Errors
    ///
    /// The first invalid impairment, or the OS's error from binding.
    pub fn start(self) -> io::Result<TestServer> {
        let mut builder: ServerBuilder = Server::builder()
            .tcp(([127, 0, 0, 1], 0))
            .engine(self.engine)
            .idle_timeout(self.idle_timeout)
            .shutdown_grace(Duration::from_millis(100))
            .impair(self.impairments?);
        if self.udp {
            // Port 0 for UDP shares the TCP listener's port.
            builder = builder.udp(([127, 0, 0, 1], 0)).udp_threads(1);
        }
        let server = builder.build()?;
        let addr = server
            .local_addr()
            .ok_or_else(|| io::Error::other("no TCP listener"))?;
        let udp_addr = server.listen_addrs().find_map(|a| match a {
            ListenAddr::Udp(addr) => Some(*addr),
            _ => None,
        });
        let seed = server.impair_seed();
        let handle = server.handle();
        let running = std::thread::Builder::new()
            .name("echo-test-server".to_owned())
            .spawn(move || server.run())?;
        Ok(TestServer {
            addr,
            udp_addr,
            seed,
            handle,
            running: Some(running),
        })
    }
}
