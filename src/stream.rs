//! The stream transports (TCP, Unix) as every engine sees them: one socket
//! type that never raises SIGPIPE, who is on the other end, and the metered
//! view the echo core runs over (byte counters, `--log-data`).

use crate::address::Peer;
use crate::escape::escape;
use crate::stats::Counters;
use socket2::Socket;
use std::io::{self, ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// `send(2)` flags: never raise SIGPIPE when the client has gone, so a library
/// user that did not ignore SIGPIPE is not killed by a vanished client. (On
/// Apple platforms socket2 sets `SO_NOSIGPIPE` on the socket instead.)
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: i32 = 0;

/// An accepted stream socket, TCP or Unix, and when it was last busy.
#[derive(Debug)]
pub(crate) struct Stream {
    /// The connected socket.
    pub(crate) socket: Socket,
    /// When it last read or wrote, for idle timeouts and reclaim.
    pub(crate) activity: Activity,
}

impl Stream {
    pub(crate) fn new(socket: Socket) -> Stream {
        Stream {
            socket,
            activity: Activity::default(),
        }
    }
}

/// When a connection last moved bytes, and whether an echo is partly
/// written, so that a full server can tell which connection is idle (and
/// reclaiming it loses nothing). Updated by [`Metered`], read by the
/// connection table.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Milliseconds since [`now_ms`]'s epoch at accept or at the last
    /// write (every read that returns data is followed by one).
    last: AtomicU64,
    /// Bytes have been read that are not yet written back: set by a read
    /// that returned data, cleared by the flush the echo core owes once a
    /// chunk is written back in full. (Not by the next read: an event loop
    /// may not read again until the client sends more, and the connection
    /// must look idle all that while.)
    busy: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            last: AtomicU64::new(now_ms()),
            busy: AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// Bytes have arrived: the connection is busy until they are written
    /// back (and `last` moves when they are).
    pub(crate) fn received(&self) {
        self.busy.store(true, Relaxed);
    }

    /// The echo began (its PROXY protocol header just completed): idle
    /// from now.
    pub(crate) fn began(&self) {
        self.last.store(now_ms(), Relaxed);
    }

    /// Some bytes were written back.
    pub(crate) fn wrote(&self) {
        self.last.store(now_ms(), Relaxed);
    }

    /// Everything received so far is written back.
    pub(crate) fn caught_up(&self) {
        self.busy.store(false, Relaxed);
    }

    /// How long the connection has been idle, or `None` while an echo is
    /// being written.
    pub(crate) fn idle_for(&self, now_ms: u64) -> Option<u64> {
        if self.busy.load(Relaxed) {
            return None;
        }
        Some(now_ms.saturating_sub(self.last.load(Relaxed)))
    }
}

/// Milliseconds on a monotonic clock shared by every connection.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.socket).read(buf)
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.send_with_flags(buf, SEND_FLAGS)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Which operation of a stream failed last: a timeout while reading means an
/// idle client, while writing a client that does not read its echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
}

/// The stream as the echo core sees it: counts echoed bytes, logs received
/// data when asked to, and remembers which operation it did last.
pub(crate) struct Metered<'a> {
    pub(crate) stream: &'a Stream,
    pub(crate) counters: &'a Counters,
    pub(crate) faults: &'a crate::fault::Faults,
    pub(crate) log_data: bool,
    pub(crate) peer: &'a Peer,
    pub(crate) last_op: Op,
    /// A TLS connection's session, once its handshake is done: the bytes
    /// read and written (and counted, and logged) are then the plaintext.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<&'a mut rustls::ServerConnection>,
}

impl Read for Metered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.last_op = Op::Read;
        let n = match self.tls_io() {
            Some(mut tls) => tls.read(buf)?,
            None => { self.stream }.read(buf)?,
        };
        // End of file is not data: not counted, not logged.
        if n > 0 {
            self.received(&buf[..n]);
        }
        Ok(n)
    }
}

impl Metered<'_> {
    /// The TLS view of the stream, for a TLS connection.
    #[cfg(feature = "tls")]
    fn tls_io(&mut self) -> Option<crate::tls::TlsIo<'_, &Stream>> {
        let stream = self.stream;
        self.tls.as_deref_mut().map(|tls| crate::tls::TlsIo {
            socket: stream,
            tls,
        })
    }

    /// No TLS in this build.
    #[cfg(not(feature = "tls"))]
    fn tls_io(&mut self) -> Option<NoTls> {
        None
    }

    /// Whether the bytes are TLS records (never to be spliced: the echo is
    /// of the plaintext).
    pub(crate) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// `data` has arrived: counted, the connection busy until it is
    /// written back, logged with `--log-data`. What every read does; the
    /// uring engine (which receives without `read`) and the bytes after a
    /// PROXY protocol header call it themselves.
    pub(crate) fn received(&mut self, data: &[u8]) {
        let n = data.len();
        Counters::add(&self.counters.bytes_received, n as u64);
        self.stream.activity.received();
        if self.log_data {
            log::info!(
                peer:% = self.peer, bytes = n;
                "{} sent {n} bytes: \"{}\"", self.peer, escape(data)
            );
        }
    }

    /// `n` bytes of an echo have been written back. (The uring engine sends
    /// without `write` and calls this itself.)
    pub(crate) fn sent(&mut self, n: usize) {
        self.last_op = Op::Write;
        self.stream.activity.wrote();
        Counters::add(&self.counters.bytes_echoed, n as u64);
    }
}

impl Write for Metered<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.last_op = Op::Write;
        if let Some(injected) = self.faults.take(crate::fault::Point::Send) {
            return Err(injected);
        }
        let n = match self.tls_io() {
            Some(mut tls) => tls.write(buf)?,
            None => { self.stream }.write(buf)?,
        };
        self.sent(n);
        Ok(n)
    }

    /// The echo core flushes once a chunk is written back in full (a socket
    /// has nothing to flush): from here the connection is idle.
    /// Over TLS, the records of the chunk go out first (`WouldBlock` if the
    /// socket is full: the flush stays owed).
    fn flush(&mut self) -> io::Result<()> {
        if self.is_tls() {
            self.last_op = Op::Write;
        }
        if let Some(mut tls) = self.tls_io() {
            tls.flush()?;
        }
        self.stream.activity.caught_up();
        Ok(())
    }
}

/// Stands for the TLS view in a build without TLS: never made.
#[cfg(not(feature = "tls"))]
enum NoTls {}

#[cfg(not(feature = "tls"))]
impl Read for NoTls {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }
}

#[cfg(not(feature = "tls"))]
impl Write for NoTls {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        match *self {}
    }

    fn flush(&mut self) -> io::Result<()> {
        match *self {}
    }
}

/// Whether an error is a blocking socket's timeout (`SO_RCVTIMEO` and
/// `SO_SNDTIMEO` report `EAGAIN` on Unix, `WSAETIMEDOUT` on Windows).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock || (cfg!(windows) && e.kind() == ErrorKind::TimedOut)
}

/// Whether an error says the peer vanished: TCP gave up on it (keepalive
/// probes or retransmissions unanswered), `ETIMEDOUT` on Unix.
pub(crate) fn is_vanished(e: &io::Error) -> bool {
    !cfg!(windows) && e.kind() == ErrorKind::TimedOut
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpListener, TcpStream};

    /// A library user that never ignored SIGPIPE must not be killed when the
    /// server writes to a connection that can no longer be written to.
    #[test]
    fn writes_never_raise_sigpipe() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let stream = Stream::new(Socket::from(listener.accept().unwrap().0));
        stream.socket.shutdown(Shutdown::Write).unwrap();
        // SIGPIPE at its default action (terminate) for the write; every
        // other write in this process passes MSG_NOSIGNAL too, so the window
        // harms no other test.
        let result = crate::sys::signal::with_default_sigpipe(|| { &stream }.write(b"x"));
        assert_eq!(result.unwrap_err().kind(), ErrorKind::BrokenPipe);
    }
}
