//! `echo-server probe`: one round trip against a running echo server, for a
//! container's `HEALTHCHECK`, a script or a person. It sends a random
//! payload and checks that exactly those bytes come back, within a deadline
//! that covers everything (resolving the name, connecting, the echo).
//!
//! Exit statuses: 0 when the echo came back, 1 when it did not (the reason
//! on stderr), 2 for a usage error (clap's, or `--size` too large for UDP).
//!
//! How the pieces fit: a transport connects and hands [`exchange`]
//! something that is `Read + Write` and can bound its waits ([`Stream`]);
//! `exchange` does the rest. TCP and Unix streams are two; `--tls` is a
//! rustls client session over the connected `TcpStream`, its handshake
//! completed first (under the same deadline) so that a failed handshake
//! is named as one.

use super::values::{parse_bytes, parse_host, parse_secs};
use crate::address::ListenAddr;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// The largest `--size`: enough to push a payload through several socket
/// buffers, small enough that the payload is no burden to hold.
const MAX_SIZE: usize = 16 << 20;

/// The largest `--size` with `--udp`: the most a UDP datagram over IPv4 can
/// carry (65,535 less the IPv4 and UDP headers).
const MAX_UDP_SIZE: usize = 65_507;

/// Stream payloads go out in pieces of this size, each read back before
/// the next is sent: never more than this in flight, so a large `--size`
/// cannot deadlock with both sides' buffers full, and no second thread is
/// needed (a TLS session could not be shared with one).
const PIECE: usize = 16 << 10;

/// The options of `echo-server probe`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ProbeArgs {
    /// The server: HOST:PORT, with an IP address or a host name
    /// (`127.0.0.1:7007`, `[::1]:7007`, `localhost:7007`). Every address a
    /// name resolves to is tried in turn while the answer is "refused".
    #[arg(value_name = "HOST:PORT", required_unless_present = "unix",
          conflicts_with = "unix", value_parser = parse_target)]
    pub target: Option<Target>,

    /// Probe over UDP: one datagram out, the same datagram back (no
    /// retry: a lost datagram is a failure).
    #[arg(long)]
    pub udp: bool,

    /// Probe the Unix stream socket at PATH instead of HOST:PORT.
    #[arg(long, value_name = "PATH", conflicts_with = "udp")]
    pub unix: Option<PathBuf>,

    /// Speak TLS, as to the server's --tls ports. Without --ca the server's
    /// certificate is not checked: the probe then checks that the server
    /// echoes over TLS, not who it is.
    #[arg(long, conflicts_with_all = ["udp", "unix"])]
    pub tls: bool,

    /// With --tls: CA certificates (PEM) that must have signed the server's
    /// certificate, for HOST's name (or --server-name).
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,

    /// With --tls: the name sent to the server (SNI) and looked for in its
    /// certificate [default: HOST]
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,

    /// With --tls: a client certificate chain (PEM), for a server that
    /// requires one (--tls-client-ca); with --key.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,

    /// With --tls: the client certificate's private key (PEM); with --cert.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "cert"])]
    pub key: Option<PathBuf>,

    /// Bytes to send, random each time (suffixes K, M); at most 16M, and
    /// at most 65507 with --udp.
    #[arg(long, value_name = "BYTES", default_value = "32", value_parser = parse_size)]
    pub size: usize,

    /// How long the whole probe may take (resolving, connecting, the
    /// echo), in seconds; fractions allowed.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    pub timeout: Duration,
}

/// `HOST:PORT` as given: resolved when the probe runs, within its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// An IP address (without brackets) or a host name.
    pub host: String,
    /// The port, 1-65535.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `HOST:PORT`: an IP address with a port (IPv6 in brackets), or a host
/// name with a port. Port 0 cannot be connected to.
fn parse_target(s: &str) -> Result<Target, String> {
    let usage =
        || format!("`{s}` is not HOST:PORT (e.g. 127.0.0.1:7007, [::1]:7007, localhost:7007)");
    let target = match s.parse::<SocketAddr>() {
        Ok(addr) => Target {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        Err(_) => {
            let (host, port) = s.rsplit_once(':').ok_or_else(usage)?;
            // An IPv6 address needs its brackets, or `::1:7007` would be
            // ambiguous; whatever else has a colon is no host.
            if host.contains(':') {
                return Err(usage());
            }
            Target {
                host: parse_host(host)?,
                port: port.parse().map_err(|_| usage())?,
            }
        }
    };
    if target.port == 0 {
        return Err(format!("`{s}`: port 0 cannot be connected to"));
    }
    Ok(target)
}

fn parse_size(s: &str) -> Result<usize, String> {
    match parse_bytes(s)? {
        0 => Err("must be at least 1 byte".to_owned()),
        n => usize::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_SIZE)
            .ok_or_else(|| format!("must be at most {MAX_SIZE} (16M)")),
    }
}

/// Runs the probe; prints `ok: ...` on stdout or the reason on stderr.
pub(super) fn run(args: &ProbeArgs) -> ExitCode {
    if args.udp && args.size > MAX_UDP_SIZE {
        // clap cannot tie one option's range to another's presence; the
        // same form and status as its usage errors.
        eprintln!("error: --size is at most {MAX_UDP_SIZE} with --udp (one datagram)");
        return ExitCode::from(2);
    }
    #[cfg(not(feature = "tls"))]
    if args.tls {
        eprintln!("error: --tls: this echo-server was built without TLS (the Cargo feature `tls`)");
        return ExitCode::from(2);
    }
    let payload = random_payload(args.size);
    match probe(args, &payload) {
        Ok(echoed) => {
            println!(
                "ok: {} bytes echoed by {} in {:.2} ms",
                payload.len(),
                echoed.by,
                echoed.round_trip.as_secs_f64() * 1000.0
            );
            ExitCode::SUCCESS
        }
        Err((what, failure)) => {
            eprintln!("error: {what}: {failure}");
            ExitCode::from(1)
        }
    }
}

/// A successful probe: who answered, and how long the echo took (from the
/// first byte sent to the last received: connecting is not included).
struct Echoed {
    by: String,
    round_trip: Duration,
}

/// Why a probe failed.
#[derive(Debug)]
enum Failure {
    /// The host name did not resolve (or to no address).
    Resolve(io::Error),
    /// Nothing listens there (TCP: a reset to the SYN; UDP: ICMP port
    /// unreachable; Unix: a socket file nobody accepts on).
    Refused,
    /// `--unix`: no such file.
    NoSocket,
    /// The deadline passed while `doing` something, with `echoed` of `of`
    /// bytes back.
    TimedOut {
        doing: &'static str,
        after: Duration,
        echoed: usize,
        of: usize,
    },
    /// The server closed the connection before the whole echo.
    Closed { echoed: usize, of: usize },
    /// The server reset the connection before the whole echo.
    Reset { echoed: usize, of: usize },
    /// Byte `at` came back as `got`; `sent` went out.
    Wrong {
        at: usize,
        got: u8,
        sent: u8,
        of: usize,
    },
    /// More bytes came back than were sent.
    Extra { of: usize },
    /// UDP: a datagram of another length came back (its bytes agreeing
    /// with the payload as far as both go).
    Length { got: usize, of: usize },
    /// The TLS client could not be set up (a CA or client certificate
    /// file that cannot be used, a server name that is no name).
    #[cfg(feature = "tls")]
    TlsSetup(io::Error),
    /// The TLS handshake failed (a certificate not trusted or for another
    /// name, no common version, a server that is no TLS server).
    #[cfg(feature = "tls")]
    Handshake(io::Error),
    /// Anything else, with what was being done.
    Io(&'static str, io::Error),
}

/// What a reply's first bytes say about the server when they are not the
/// echo: a TLS alert record (content type 21, version 3.x) is a TLS server
/// refusing plaintext.
fn reply_hint(at: usize, got: u8) -> &'static str {
    if at == 0 && got == 0x15 {
        " (a TLS alert: the port speaks TLS; probe it with --tls)"
    } else {
        ""
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Resolve(e) => write!(f, "cannot resolve the name: {e}"),
            Failure::Refused => f.write_str("connection refused (nothing listens there)"),
            Failure::NoSocket => f.write_str("no such socket file"),
            Failure::TimedOut {
                doing,
                after,
                echoed,
                of,
            } => {
                let secs = after.as_secs_f64();
                if *doing == "echoing" {
                    write!(f, "timed out after {secs} s: {echoed} of {of} bytes echoed")
                } else {
                    write!(f, "timed out after {secs} s {doing}")
                }
            }
            Failure::Closed { echoed, of } => {
                write!(
                    f,
                    "closed by the server after {echoed} of {of} bytes echoed"
                )
            }
            Failure::Reset { echoed, of } => write!(
                f,
                "connection reset by the server after {echoed} of {of} bytes echoed"
            ),
            Failure::Wrong { at, got, sent, of } => write!(
                f,
                "wrong reply: byte {at} (from 0) of {of} came back as {got:#04x}, sent {sent:#04x}{}",
                reply_hint(*at, *got)
            ),
            Failure::Extra { of } => {
                write!(f, "wrong reply: more bytes came back than the {of} sent")
            }
            Failure::Length { got, of } => {
                write!(
                    f,
                    "wrong reply: a datagram of {got} bytes came back, sent {of}"
                )
            }
            #[cfg(feature = "tls")]
            Failure::TlsSetup(e) => write!(f, "{e}"),
            #[cfg(feature = "tls")]
            Failure::Handshake(e) => {
                write!(f, "TLS handshake failed: {e}")?;
                // A plain echo server sends the ClientHello straight back.
                if e.to_string().contains("ClientHello") {
                    f.write_str(" (the server echoed the ClientHello: it does not speak TLS on this port)")?;
                }
                Ok(())
            }
            Failure::Io(doing, e) => write!(f, "{doing}: {e}"),
        }
    }
}

/// What the probe names in its messages (`tcp 127.0.0.1:7007`), and why it
/// failed.
type Failed = (String, Failure);

/// Connects as `args` say and checks the echo of `payload`.
fn probe(args: &ProbeArgs, payload: &[u8]) -> Result<Echoed, Failed> {
    let deadline = Deadline::new(args.timeout);
    #[cfg(unix)]
    if let Some(path) = &args.unix {
        let by = ListenAddr::Unix(path.clone()).to_string();
        let mut stream = connect_unix(path, &deadline).map_err(|f| (by.clone(), f))?;
        let round_trip = exchange(&mut stream, payload, &deadline).map_err(|f| (by.clone(), f))?;
        return Ok(Echoed { by, round_trip });
    }
    let Some(target) = &args.target else {
        // clap requires one of the two; on a platform without Unix
        // sockets, --unix is accepted and lands here.
        return Err(("probe".to_owned(), Failure::NoSocket));
    };
    let kind = match (args.udp, args.tls) {
        (true, _) => "udp",
        (false, true) => "tls",
        (false, false) => "tcp",
    };
    #[cfg(feature = "tls")]
    let tls = if args.tls {
        Some(tls::Client::new(args, target).map_err(|f| (format!("{kind} {target}"), f))?)
    } else {
        None
    };
    let addrs = resolve(target, &deadline).map_err(|f| (format!("{kind} {target}"), f))?;
    let mut last = None;
    for addr in addrs {
        let by = match kind {
            "udp" => ListenAddr::Udp(addr),
            "tls" => ListenAddr::Tls(addr),
            _ => ListenAddr::Tcp(addr),
        }
        .to_string();
        let attempt = if args.udp {
            udp_exchange(addr, payload, &deadline)
        } else {
            connect_tcp(addr, &deadline).and_then(|mut stream| {
                #[cfg(feature = "tls")]
                if let Some(client) = &tls {
                    let mut session = client.handshake(stream, &deadline)?;
                    return exchange(&mut session, payload, &deadline);
                }
                exchange(&mut stream, payload, &deadline)
            })
        };
        match attempt {
            Ok(round_trip) => return Ok(Echoed { by, round_trip }),
            // The name's next address may be the one served (`localhost`
            // is ::1 and 127.0.0.1; the server may listen on one).
            Err(Failure::Refused) => last = Some((by, Failure::Refused)),
            Err(failure) => return Err((by, failure)),
        }
    }
    Err(last.unwrap_or_else(|| {
        let none = io::Error::new(io::ErrorKind::NotFound, "no address");
        (format!("{kind} {target}"), Failure::Resolve(none))
    }))
}

/// The probe's one deadline, and how long is left of it.
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn new(timeout: Duration) -> Deadline {
        Deadline {
            // A timeout too long to add is as good as none.
            at: Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365)),
            timeout,
        }
    }

    /// What is left, never zero (a zero socket timeout is an error, or
    /// means "forever"); `TimedOut` once nothing is.
    fn left(&self, doing: &'static str, echoed: usize, of: usize) -> Result<Duration, Failure> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.passed(doing, echoed, of))
        } else {
            Ok(left)
        }
    }

    fn passed(&self, doing: &'static str, echoed: usize, of: usize) -> Failure {
        Failure::TimedOut {
            doing,
            after: self.timeout,
            echoed,
            of,
        }
    }
}

/// The target's addresses. A name is resolved on a thread of its own, so a
/// resolver that does not answer cannot outlast the deadline (the thread is
/// left behind; the process ends soon after).
fn resolve(target: &Target, deadline: &Deadline) -> Result<Vec<SocketAddr>, Failure> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, target.port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (host, port) = (target.host.clone(), target.port);
    std::thread::Builder::new()
        .name("probe-resolve".to_owned())
        .spawn(move || {
            let addrs = (host.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>);
            let _ = tx.send(addrs);
        })
        .map_err(|e| Failure::Io("cannot start a thread to resolve the name", e))?;
    match rx.recv_timeout(deadline.left("resolving the name", 0, 0)?) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(Failure::Resolve(io::Error::new(
            io::ErrorKind::NotFound,
            "no address",
        ))),
        Ok(Err(e)) => Err(Failure::Resolve(e)),
        Err(_) => Err(deadline.passed("resolving the name", 0, 0)),
    }
}

fn connect_tcp(addr: SocketAddr, deadline: &Deadline) -> Result<TcpStream, Failure> {
    let left = deadline.left("connecting", 0, 0)?;
    let stream =
        TcpStream::connect_timeout(&addr, left).map_err(|e| connect_failure(e, deadline))?;
    // The round trip is the server's, not Nagle's: over TLS the payload's
    // record follows the client's Finished, and would otherwise wait for
    // its ACK (a delayed ACK, 40 ms on Linux). Without it, only slower.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(unix)]
fn connect_unix(
    path: &std::path::Path,
    deadline: &Deadline,
) -> Result<std::os::unix::net::UnixStream, Failure> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let addr = SockAddr::unix(path).map_err(|e| Failure::Io("not a socket path", e))?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| Failure::Io("cannot make a socket", e))?;
    // A server whose backlog is full keeps a Unix connect waiting: bounded
    // like the rest.
    let left = deadline.left("connecting", 0, 0)?;
    socket
        .connect_timeout(&addr, left)
        .map_err(|e| connect_failure(e, deadline))?;
    Ok(socket.into())
}

fn connect_failure(e: io::Error, deadline: &Deadline) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::Refused,
        io::ErrorKind::NotFound => Failure::NoSocket,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => deadline.passed("connecting", 0, 0),
        _ => Failure::Io("cannot connect", e),
    }
}

/// A connected byte stream whose waits can be bounded: what [`exchange`]
/// needs of a transport.
trait Stream: Read + Write {
    /// Bounds each following read and write by `timeout` (never zero).
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

#[cfg(unix)]
impl Stream for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

/// `--tls`: a rustls client session over the connected TCP stream.
#[cfg(feature = "tls")]
mod tls {
    use super::{Deadline, Failure, ProbeArgs, Stream, Target};
    use crate::tls_config::{client_config, ClientFiles};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, StreamOwned};
    use std::cell::Cell;
    use std::io;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// The TCP stream under a TLS session, each read and write bounded by
    /// what is left until `until`: rustls's `complete_io` reads on until a
    /// record (or the handshake) is complete, so a server dripping a byte
    /// within each socket timeout would otherwise outlast the deadline.
    pub(super) struct Bounded {
        sock: TcpStream,
        until: Cell<Instant>,
    }

    impl Bounded {
        fn left(&self) -> io::Result<Duration> {
            let left = self.until.get().saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(io::ErrorKind::TimedOut.into())
            } else {
                Ok(left)
            }
        }
    }

    impl Read for Bounded {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.sock.set_read_timeout(Some(self.left()?))?;
            self.sock.read(buf)
        }
    }

    impl Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sock.set_write_timeout(Some(self.left()?))?;
            self.sock.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.sock.flush()
        }
    }

    /// What every connection attempt of one probe shares.
    pub(super) struct Client {
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    }

    impl Client {
        /// The configuration `args` describe, for `target`'s name.
        pub(super) fn new(args: &ProbeArgs, target: &Target) -> Result<Client, Failure> {
            let files = ClientFiles {
                ca: args.ca.clone(),
                identity: args.cert.clone().zip(args.key.clone()),
            };
            let config = client_config(&files).map_err(Failure::TlsSetup)?;
            let name = args.server_name.as_deref().unwrap_or(&target.host);
            let name = ServerName::try_from(name.to_owned()).map_err(|e| {
                Failure::TlsSetup(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("--server-name {name:?}: {e}"),
                ))
            })?;
            Ok(Client { config, name })
        }

        /// Completes the handshake within the deadline.
        pub(super) fn handshake(
            &self,
            sock: TcpStream,
            deadline: &Deadline,
        ) -> Result<StreamOwned<ClientConnection, Bounded>, Failure> {
            let session = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
                .map_err(|e| Failure::TlsSetup(io::Error::other(e)))?;
            let sock = Bounded {
                sock,
                until: Cell::new(deadline.at),
            };
            let mut tls = StreamOwned::new(session, sock);
            while tls.conn.is_handshaking() {
                let left = deadline.left("in the TLS handshake", 0, 0)?;
                tls.set_timeouts(left)
                    .map_err(|e| Failure::Io("cannot set a socket timeout", e))?;
                match tls.conn.complete_io(&mut tls.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Err(deadline.passed("in the TLS handshake", 0, 0));
                    }
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(Failure::Handshake(io::Error::new(
                            e.kind(),
                            "the server closed the connection",
                        )));
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                        return Err(Failure::Handshake(e));
                    }
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        return Err(Failure::Handshake(e));
                    }
                    Err(e) => return Err(Failure::Io("TLS handshake", e)),
                }
            }
            Ok(tls)
        }
    }

    impl Stream for StreamOwned<ClientConnection, Bounded> {
        /// Every read and write from now on ends within `timeout`, however
        /// many the session makes.
        fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
            let now = Instant::now();
            self.sock
                .until
                .set(now.checked_add(timeout).unwrap_or(self.sock.until.get()));
            self.sock.sock.set_timeouts(timeout)
        }
    }
}

/// Sends `payload` piece by piece and checks each piece's echo, byte for
/// byte, before the next; returns the time from the first byte sent to the
/// last received.
fn exchange(
    stream: &mut impl Stream,
    payload: &[u8],
    deadline: &Deadline,
) -> Result<Duration, Failure> {
    let of = payload.len();
    // One byte more than the last piece needs: a reply longer than the
    // payload is caught when the extra bytes come with the last ones.
    let mut buf = vec![0u8; PIECE.min(of) + 1];
    let start = Instant::now();
    let mut echoed = 0;
    for piece in payload.chunks(PIECE) {
        bound(stream, deadline, echoed, of)?;
        if let Err(e) = stream.write_all(piece) {
            return Err(stream_failure(e, "cannot send", deadline, echoed, of));
        }
        let end = echoed + piece.len();
        while echoed < end {
            bound(stream, deadline, echoed, of)?;
            let want = if end == of {
                end - echoed + 1
            } else {
                end - echoed
            };
            let n = match stream.read(&mut buf[..want]) {
                Ok(0) => return Err(Failure::Closed { echoed, of }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(stream_failure(e, "cannot receive", deadline, echoed, of)),
            };
            compare(&buf[..n], payload, echoed)?;
            echoed += n;
        }
    }
    let rtt = start.elapsed();
    // Whatever comes within a short while after the whole echo is more
    // than was sent: a server that answers twice, or adds to its echo in a
    // segment of its own. (Waiting longer would make every probe slower.)
    let grace = deadline
        .left("echoing", echoed, of)
        .map_or(Duration::ZERO, |left| left.min(SURPLUS_WAIT));
    if !grace.is_zero() {
        stream
            .set_timeouts(grace)
            .map_err(|e| Failure::Io("cannot set a socket timeout", e))?;
        if let Ok(n) = stream.read(&mut buf[..1]) {
            if n > 0 {
                return Err(Failure::Extra { of });
            }
        }
    }
    Ok(rtt)
}

/// How long the probe listens after a whole echo for bytes that should
/// not come.
const SURPLUS_WAIT: Duration = Duration::from_millis(50);

/// Bounds the stream's next waits by what is left of the deadline.
fn bound(
    stream: &impl Stream,
    deadline: &Deadline,
    echoed: usize,
    of: usize,
) -> Result<(), Failure> {
    let left = deadline.left("echoing", echoed, of)?;
    stream
        .set_timeouts(left)
        .map_err(|e| Failure::Io("cannot set a socket timeout", e))
}

/// Checks `got`, received at offset `from`, against the payload.
fn compare(got: &[u8], payload: &[u8], from: usize) -> Result<(), Failure> {
    let of = payload.len();
    for (i, &byte) in got.iter().enumerate() {
        let at = from + i;
        let Some(&sent) = payload.get(at) else {
            return Err(Failure::Extra { of });
        };
        if byte != sent {
            return Err(Failure::Wrong {
                at,
                got: byte,
                sent,
                of,
            });
        }
    }
    Ok(())
}

fn stream_failure(
    e: io::Error,
    doing: &'static str,
    deadline: &Deadline,
    echoed: usize,
    of: usize,
) -> Failure {
    match e.kind() {
        // SO_RCVTIMEO/SO_SNDTIMEO expiring: EAGAIN on Unix.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            deadline.passed("echoing", echoed, of)
        }
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Failure::Reset { echoed, of },
        // A TLS session whose server closed without a close_notify.
        io::ErrorKind::UnexpectedEof => Failure::Closed { echoed, of },
        _ => Failure::Io(doing, e),
    }
}

/// One datagram to `addr`, the same one back. The socket is connected, so
/// only `addr` can answer, and an ICMP port unreachable comes back as
/// "refused".
fn udp_exchange(
    addr: SocketAddr,
    payload: &[u8],
    deadline: &Deadline,
) -> Result<Duration, Failure> {
    let of = payload.len();
    let local = match addr {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let socket = UdpSocket::bind(local).map_err(|e| Failure::Io("cannot bind a UDP socket", e))?;
    socket
        .connect(addr)
        .map_err(|e| connect_failure(e, deadline))?;
    let start = Instant::now();
    match socket.send(payload) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(Failure::Refused),
        Err(e) => return Err(Failure::Io("cannot send", e)),
    }
    // Room for one byte more than the largest datagram answered, so a
    // longer reply is seen as longer, not cut to size.
    let mut buf = vec![0u8; MAX_UDP_SIZE + 1];
    loop {
        let left = deadline.left("echoing", 0, of)?;
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| Failure::Io("cannot set a socket timeout", e))?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                let round_trip = start.elapsed();
                let got = &buf[..n];
                compare(&got[..n.min(of)], payload, 0)?;
                if n != of {
                    return Err(Failure::Length { got: n, of });
                }
                return Ok(round_trip);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(Failure::Refused),
            Err(e) => return Err(stream_failure(e, "cannot receive", deadline, 0, of)),
        }
    }
}

/// `len` bytes that no server could know in advance, so that only an echo
/// of this very probe passes (not a canned answer, nor an earlier probe's
/// echo). Not secret, so std is enough: `RandomState` keys its hasher from
/// the OS's random source once per thread (and differently for each
/// instance); the time and the process id go in too, and splitmix64
/// stretches the hash to any length.
fn random_payload(len: usize) -> Vec<u8> {
    let mut hasher = RandomState::new().build_hasher();
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(since_epoch.as_nanos());
    hasher.write_u32(std::process::id());
    let mut state = hasher.finish();
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = |s: &str| parse_target(s).map(|t| (t.host.clone(), t.port, t.to_string()));
        assert_eq!(
            t("127.0.0.1:7007"),
            Ok(("127.0.0.1".into(), 7007, "127.0.0.1:7007".into()))
        );
        assert_eq!(t("[::1]:7"), Ok(("::1".into(), 7, "[::1]:7".into())));
        assert_eq!(
            t("localhost:7007"),
            Ok(("localhost".into(), 7007, "localhost:7007".into()))
        );
        for bad in [
            "",
            "7007",
            "localhost",
            ":7007",
            "::1:7007",
            "[::1]",
            "a b:7",
            "host:70000",
            "host:0",
            "127.0.0.1:0",
            "host:-1",
            "host:",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32"), Ok(32));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("16M"), Ok(MAX_SIZE));
        for bad in ["0", "16777217", "1G", "x", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn payloads_are_random_and_of_the_size_asked() {
        for len in [1, 7, 8, 9, 32, 1000] {
            assert_eq!(random_payload(len).len(), len);
        }
        // Two 32-byte payloads agree by chance once in 2^256.
        assert_ne!(random_payload(32), random_payload(32));
    }

    #[test]
    fn replies_are_compared_byte_for_byte() {
        let payload = b"abcdef";
        assert!(compare(b"abc", payload, 0).is_ok());
        assert!(compare(b"def", payload, 3).is_ok());
        assert!(matches!(
            compare(b"dxf", payload, 3),
            Err(Failure::Wrong {
                at: 4,
                got: b'x',
                sent: b'e',
                of: 6
            })
        ));
        assert!(matches!(
            compare(b"efg", payload, 4),
            Err(Failure::Extra { of: 6 })
        ));
    }

    /// Each reason names what happened, in words a person running a
    /// health check can act on.
    #[test]
    fn reasons() {
        let after = Duration::from_millis(500);
        for (failure, text) in [
            (Failure::Refused, "connection refused"),
            (
                Failure::TimedOut {
                    doing: "echoing",
                    after,
                    echoed: 3,
                    of: 32,
                },
                "timed out after 0.5 s: 3 of 32 bytes echoed",
            ),
            (
                Failure::TimedOut {
                    doing: "connecting",
                    after,
                    echoed: 0,
                    of: 0,
                },
                "timed out after 0.5 s connecting",
            ),
            (
                Failure::Closed { echoed: 0, of: 32 },
                "closed by the server after 0 of 32 bytes echoed",
            ),
            (
                Failure::Wrong {
                    at: 0,
                    got: b'H',
                    sent: 0x0f,
                    of: 32,
                },
                "byte 0 (from 0) of 32 came back as 0x48, sent 0x0f",
            ),
            (
                Failure::Length { got: 3, of: 32 },
                "a datagram of 3 bytes came back, sent 32",
            ),
        ] {
            assert!(failure.to_string().contains(text), "{failure}");
        }
    }
}
