//! One client connection: nonblocking connect, writing its pattern stream,
//! reading the echo back and checking every byte of it.
//!
//! The modes drive [`Conn`] from edge-triggered readiness events, so every
//! I/O method here keeps going until the goal is reached or the kernel says
//! `WouldBlock`: only then will a new edge arrive. Partial reads and writes
//! just move the counters; nothing is buffered per connection (the bytes to
//! send come from the shared [`Pattern`], the bytes read land in the event
//! loop's one buffer and are checked at once).
//!
//! With `--tls-ca` every connection speaks TLS ([`crate::tls`]): the same
//! methods then read and write plaintext through a rustls client session,
//! whose records go to and come from the socket inside [`Conn::recv`] and
//! [`Conn::send`]. Nothing else in the modes changes.

use crate::datagram::Fault;
use crate::pattern::{Pattern, MAX_CHUNK};
use crate::tls;
use mio::net::TcpStream;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};

/// Why a connection stopped being useful. Counted, never a panic.
#[derive(Debug)]
pub enum Failure {
    /// The connection could not be opened (refused, unreachable, no ports).
    Connect(io::Error),
    /// A read or write failed (reset, broken pipe, ...).
    Io(io::Error),
    /// The server closed before echoing everything it was sent.
    Closed { echoed: u64, sent: u64 },
    /// An echoed byte differs from the byte sent at that stream offset.
    Mismatch { offset: u64 },
    /// The server sent more bytes than it had been sent.
    Excess { echoed: u64, sent: u64 },
    /// Nothing finished before the run's hard time limit.
    Stalled,
    /// A UDP reply to socket `socket` that answers nothing it sent.
    Datagram { socket: u32, fault: Fault },
    /// `soak`: datagram `seq` of UDP socket `socket` was not answered in
    /// time (at the soak's low rate on loopback, a dropped datagram).
    Lost { socket: u32, seq: u64 },
}

impl Failure {
    /// Wrong bytes (as opposed to a connection that failed or stalled): these
    /// make the run exit 1 whatever else was measured.
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            Failure::Mismatch { .. } | Failure::Excess { .. } | Failure::Datagram { .. }
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect failed: {e}"),
            Failure::Io(e) => write!(f, "connection failed: {e}"),
            Failure::Closed { echoed, sent } => write!(
                f,
                "server closed the connection after echoing {echoed} of {sent} bytes"
            ),
            Failure::Mismatch { offset } => {
                write!(
                    f,
                    "echoed byte at stream offset {offset} differs from the byte sent"
                )
            }
            Failure::Excess { echoed, sent } => write!(
                f,
                "server sent more than it was sent (at least {echoed} bytes for {sent})"
            ),
            Failure::Stalled => write!(f, "stalled: no answer before the time limit"),
            Failure::Datagram { socket, fault } => write!(f, "UDP socket {socket} got {fault}"),
            Failure::Lost { socket, seq } => {
                write!(f, "UDP socket {socket}: datagram {seq} was never answered")
            }
        }
    }
}

/// Whether an I/O goal was reached or the socket would block first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Done,
    Blocked,
}

/// A client connection and how far its stream has got in each direction.
pub struct Conn {
    sock: TcpStream,
    /// The TLS session, when the run is over TLS.
    tls: Option<rustls::ClientConnection>,
    /// Where this connection's stream starts in the pattern.
    base: u64,
    /// Stream bytes written so far.
    sent: u64,
    /// Stream bytes read back and verified so far.
    echoed: u64,
    established: bool,
}

impl Conn {
    /// Starts a nonblocking connect, from `source` if given (else the
    /// kernel picks the source address); completion shows up as a
    /// readiness event and is confirmed by [`Conn::established`].
    pub fn connect(addr: SocketAddr, source: Option<Ipv4Addr>, base: u64) -> Result<Conn, Failure> {
        let sock = match source {
            None => TcpStream::connect(addr),
            Some(ip) => connect_from(addr, ip),
        }
        .map_err(Failure::Connect)?;
        let tls = tls::session().transpose().map_err(Failure::Connect)?;
        Ok(Conn {
            sock,
            tls,
            base,
            sent: 0,
            echoed: 0,
            established: false,
        })
    }

    /// For registering with the event loop.
    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    pub fn echoed(&self) -> u64 {
        self.echoed
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Checks, on a readiness event, whether the connect has completed.
    /// `Ok(false)` means not yet (a spurious wake-up); wait for another event.
    pub fn established(&mut self) -> Result<bool, Failure> {
        if self.established {
            return Ok(true);
        }
        match self.sock.take_error() {
            Ok(Some(e)) | Err(e) => return Err(Failure::Connect(e)),
            Ok(None) => {}
        }
        match self.sock.peer_addr() {
            Ok(_) => {
                // Messages are written whole, but one that spans several
                // segments would otherwise wait on Nagle for its last
                // partial segment, adding a delayed-ACK to the latency.
                self.sock.set_nodelay(true).map_err(Failure::Io)?;
                self.established = true;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(Failure::Connect(e)),
        }
    }

    /// Writes pattern bytes until `limit` stream bytes have been sent, or the
    /// send buffer is full.
    pub fn write_to(&mut self, pattern: &Pattern, limit: u64) -> Result<Step, Failure> {
        while self.sent < limit {
            let len = (limit - self.sent).min(MAX_CHUNK as u64) as usize;
            match self.send(pattern.at(self.base + self.sent, len)) {
                Ok(0) => return Err(Failure::Io(ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Step::Blocked),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
        // Over TLS the last records may still be in the session.
        match self.flush_tls() {
            Ok(()) => Ok(Step::Done),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Step::Blocked),
            Err(e) => Err(Failure::Io(e)),
        }
    }

    /// Reads and verifies echoed bytes until `limit` stream bytes have come
    /// back, or nothing more is available.
    ///
    /// Stopping at `limit` without a final `WouldBlock` is safe under edge
    /// triggering: an echo server owes us nothing beyond what we sent, so the
    /// next data to arrive is the echo of bytes not yet written, and its
    /// arrival raises a fresh edge. Should a broken server have sent extra
    /// bytes, they are read with that next echo and fail verification.
    pub fn read_to(
        &mut self,
        pattern: &Pattern,
        buf: &mut [u8],
        limit: u64,
    ) -> Result<Step, Failure> {
        let len = buf.len().min(MAX_CHUNK);
        let buf = &mut buf[..len];
        while self.echoed < limit {
            match self.recv(buf) {
                Ok(0) => {
                    return Err(Failure::Closed {
                        echoed: self.echoed,
                        sent: self.sent,
                    })
                }
                Ok(n) => self.verify(pattern, &buf[..n])?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Step::Blocked),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
        Ok(Step::Done)
    }

    /// Drains an event on a connection that is waiting with nothing
    /// outstanding: the only acceptable news is none. EOF means the server
    /// gave up on an idle connection; bytes mean it invented some.
    pub fn check_idle(&mut self, buf: &mut [u8]) -> Result<(), Failure> {
        loop {
            match self.recv(buf) {
                Ok(0) => {
                    return Err(Failure::Closed {
                        echoed: self.echoed,
                        sent: self.sent,
                    })
                }
                Ok(n) => {
                    return Err(Failure::Excess {
                        echoed: self.echoed + n as u64,
                        sent: self.sent,
                    })
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
    }

    /// Verifies, without consuming it, the echo queued in the receive
    /// buffer (`MSG_PEEK`) of a connection that has not read anything yet;
    /// returns how many echoed bytes are queued. The bytes stay unread, so
    /// closing afterwards makes the kernel send a reset: a client that
    /// vanishes without reading its echo, yet whose echo was checked.
    pub fn peek_echo(&mut self, pattern: &Pattern, buf: &mut [u8]) -> Result<u64, Failure> {
        debug_assert_eq!(self.echoed, 0, "peek_echo only before any read");
        let len = buf.len().min(MAX_CHUNK);
        loop {
            match self.sock.peek(&mut buf[..len]) {
                Ok(0) => {
                    return Err(Failure::Closed {
                        echoed: 0,
                        sent: self.sent,
                    })
                }
                Ok(n) => {
                    let data = &buf[..n];
                    if n as u64 > self.sent {
                        return Err(Failure::Excess {
                            echoed: n as u64,
                            sent: self.sent,
                        });
                    }
                    let expected = pattern.at(self.base, n);
                    if data != expected {
                        let at = data.iter().zip(expected).position(|(a, b)| a != b);
                        return Err(Failure::Mismatch {
                            offset: at.unwrap_or(n) as u64,
                        });
                    }
                    return Ok(n as u64);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
    }

    /// Half-closes: no more bytes will be sent (a FIN goes out), reading
    /// goes on.
    pub fn shutdown_write(&mut self) -> Result<(), Failure> {
        self.sock
            .shutdown(std::net::Shutdown::Write)
            .map_err(Failure::Io)
    }

    /// After every echo has been read on a half-closed connection: waits for
    /// the server's end of stream. `Done` on EOF; any further byte is one the
    /// server invented.
    pub fn read_eof(&mut self, buf: &mut [u8]) -> Result<Step, Failure> {
        loop {
            match self.recv(buf) {
                Ok(0) => return Ok(Step::Done),
                Ok(n) => {
                    return Err(Failure::Excess {
                        echoed: self.echoed + n as u64,
                        sent: self.sent,
                    })
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Step::Blocked),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
    }

    /// Writes plaintext: to the socket, or through the TLS session.
    fn send(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.sock.write(data),
            Some(session) => tls::send(&mut self.sock, session, data),
        }
    }

    /// Sends what the TLS session still holds; without TLS, nothing to do.
    fn flush_tls(&mut self) -> io::Result<()> {
        match &mut self.tls {
            None => Ok(()),
            Some(session) => tls::flush(&mut self.sock, session),
        }
    }

    /// Reads plaintext: from the socket, or through the TLS session.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.sock.read(buf),
            Some(session) => tls::recv(&mut self.sock, session, buf),
        }
    }

    /// Checks freshly read bytes against what was sent at those offsets.
    fn verify(&mut self, pattern: &Pattern, data: &[u8]) -> Result<(), Failure> {
        let n = data.len() as u64;
        if self.echoed + n > self.sent {
            return Err(Failure::Excess {
                echoed: self.echoed + n,
                sent: self.sent,
            });
        }
        let expected = pattern.at(self.base + self.echoed, data.len());
        if data != expected {
            let at = data
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(expected.len());
            return Err(Failure::Mismatch {
                offset: self.echoed + at as u64,
            });
        }
        self.echoed += n;
        Ok(())
    }

    /// Closes with SO_LINGER 0, i.e. a reset instead of FIN. Used by the
    /// connection-rate mode (and by `soak`'s resetting clients): the side that closes first keeps the
    /// connection in TIME_WAIT for a minute, and thousands of short
    /// connections per second to one address would use up the ~28,000
    /// ephemeral ports within seconds. The echo has been verified by then,
    /// so the reset loses nothing; the server just sees ECONNRESET.
    pub fn close_abortive(self) {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: the descriptor is owned by `self.sock` and open for the
            // duration of the call; the option value is a valid `linger` of
            // the size passed. A failure just means a normal close follows.
            unsafe {
                libc::setsockopt(
                    self.sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
        drop(self);
    }
}

/// A nonblocking connect from `source` (any free port on it) to the IPv4
/// `addr`. This is what spreads many connections over several loopback
/// source addresses: one source address has only the ~28,000 ports of the
/// ephemeral range for one server address and port.
///
/// `IP_BIND_ADDRESS_NO_PORT` defers the choice of the source port to the
/// connect, where the kernel only needs the whole 4-tuple to be unique;
/// a plain `bind` to port 0 would reserve the port for every destination.
#[cfg(target_os = "linux")]
fn connect_from(addr: SocketAddr, source: Ipv4Addr) -> io::Result<TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let SocketAddr::V4(dest) = addr else {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "a source address needs an IPv4 server address",
        ));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) with constant arguments; it returns a new
    // descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; from here
    // on `owned` closes it on every path.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid descriptor; the option value is a `c_int` of the size
    // passed. Failing (an old kernel) only means the port is reserved at
    // bind time, as it would be without the option, so it is ignored.
    unsafe {
        libc::setsockopt(
            owned.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let local = sockaddr(source, 0);
    // SAFETY: valid descriptor; `local` is a valid `sockaddr_in` of `len`.
    if unsafe {
        libc::bind(
            owned.as_raw_fd(),
            (&local as *const libc::sockaddr_in).cast(),
            len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let remote = sockaddr(*dest.ip(), dest.port());
    // SAFETY: as for bind.
    if unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&remote as *const libc::sockaddr_in).cast(),
            len,
        )
    } != 0
    {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(owned)))
}

#[cfg(not(target_os = "linux"))]
fn connect_from(_addr: SocketAddr, _source: Ipv4Addr) -> io::Result<TcpStream> {
    Err(io::Error::new(
        ErrorKind::Unsupported,
        "source addresses (--sources) are only supported on Linux",
    ))
}
