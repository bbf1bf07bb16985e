//! TLS over a stream, as the echo core sees it: [`TlsIo`] is a `Read +
//! Write` over a socket and a rustls `ServerConnection` that decrypts on
//! read, encrypts on write and flushes TLS records to the socket, passing
//! `WouldBlock` through for non-blocking sockets. So `Echo` (and
//! `echo_until_bulk`) run over TLS unchanged, on threads and event loops
//! alike, and `Metered` above it counts the plaintext.
//!
//! Generic over the socket (anything `Read + Write`): it knows nothing of
//! the crate's stream type, so the layering stays one way.

use rustls::ServerConnection;
use std::io::{self, ErrorKind, Read, Write};
use std::time::Instant;

/// One connection's TLS state, kept by its `Connection` between turns.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) tls: ServerConnection,
    /// While the handshake is not done: when it must be (a silent client
    /// must not hold a slot); `None` once it is.
    pub(crate) handshake_deadline: Option<Instant>,
}

/// The decrypting, encrypting view of `socket`.
pub(crate) struct TlsIo<'a, S> {
    pub(crate) socket: S,
    pub(crate) tls: &'a mut ServerConnection,
}

/// How a handshake stopped short of done.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The peer does not speak TLS as we require (a plaintext client, no
    /// or a bad client certificate): refused, and counted as such.
    Refused(rustls::Error),
    /// The socket failed or the peer left: not a refusal of ours.
    Io(io::Error),
}

impl<S: Read + Write> TlsIo<'_, S> {
    /// Writes the TLS records rustls has ready until none is left.
    ///
    /// # Errors
    ///
    /// The socket's, `WouldBlock` included (what is unsent stays queued).
    fn send_pending(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Takes what the socket has into rustls. `Ok(false)` at the socket's
    /// end of file.
    fn receive(&mut self) -> io::Result<bool> {
        let n = loop {
            match self.tls.read_tls(&mut self.socket) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if let Err(e) = self.tls.process_new_packets() {
            // The alert that tells the peer why, if the socket takes it.
            let _ = self.send_pending();
            return Err(io::Error::new(ErrorKind::InvalidData, e));
        }
        Ok(n > 0)
    }

    /// Drives the handshake as far as the socket allows. `Ok(true)` once
    /// it is done, `Ok(false)` when the socket would block (or, blocking
    /// with a timeout, timed out): call again on readiness.
    pub(crate) fn handshake(&mut self) -> Result<bool, HandshakeError> {
        while self.tls.is_handshaking() {
            if self.tls.wants_write() {
                match self.send_pending() {
                    Ok(()) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(HandshakeError::Io(e)),
                }
            }
            match self.receive() {
                Ok(true) => {}
                Ok(false) => {
                    return Err(HandshakeError::Io(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "closed before its TLS handshake was complete",
                    )))
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::InvalidData => {
                    let refusal = e
                        .into_inner()
                        .and_then(|inner| inner.downcast::<rustls::Error>().ok())
                        .map_or(rustls::Error::HandshakeNotComplete, |e| *e);
                    return Err(HandshakeError::Refused(refusal));
                }
                Err(e) => return Err(HandshakeError::Io(e)),
            }
        }
        // The server's last flight (session tickets); what the socket does
        // not take now goes before the first echo.
        match self.send_pending() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(HandshakeError::Io(e)),
        }
    }

    /// The echo is complete: tells the client with a `close_notify`, as
    /// far as the socket takes it now (the connection closes next).
    pub(crate) fn close_notify(&mut self) {
        self.tls.send_close_notify();
        let _ = self.send_pending();
    }
}

impl<S: Read + Write> Read for TlsIo<'_, S> {
    /// Plaintext, decrypted. `Ok(0)` is the client's `close_notify`: its
    /// half-close. A TCP end without one is taken as an end too (an echo
    /// has nothing to protect from truncation; the client gets back what
    /// came).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // Nothing decrypted is waiting. Records owed to the client
            // (a handshake message, a key update) go first.
            self.send_pending()?;
            self.receive()?;
        }
    }
}

impl<S: Read + Write> Write for TlsIo<'_, S> {
    /// Takes plaintext into rustls (whose outgoing buffer is bounded) and
    /// sends what records the socket takes. `WouldBlock` only when rustls
    /// has no room and the socket takes nothing: flow control reaches the
    /// echo as with a plain socket.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Records still waiting for the socket go first, and while the
        // socket takes none, no more plaintext is taken in: `WouldBlock`
        // (a non-blocking socket) or the write timeout (a blocking one)
        // reaches the echo core at once. Swallowing it here once made a
        // thread wait out its write timeout three times over.
        self.send_pending()?;
        let n = self.tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        // The records go out at the flush the echo core owes after each
        // chunk, or with the next write.
        Ok(n)
    }

    /// Every record out on the socket: the echo core's flush after a
    /// chunk, so an echo is never left in rustls's buffer.
    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()
    }
}
