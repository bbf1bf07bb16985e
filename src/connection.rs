//! One connection's life, whatever engine serves it: admitted by an accept
//! loop (holding a slot of the connection limit, maybe one of its source's,
//! and listed in the connection table), served by an engine, and closed in
//! an order that keeps the limits exact.

use crate::address::{normalize, Peer};
use crate::context::Context;
use crate::echo::Echo;
use crate::impairment::{Ending, Impairments, Plan};
use crate::limit::{Permit, Seat, SourceSlot};
use crate::proxy_protocol::{Fed, Preface, MAX_HEADER};
use crate::stats::{Counters, TurnedAway};
use crate::stream::{Metered, Op, Stream};
use socket2::Socket;
use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// An accepted stream connection and everything it holds.
///
/// Dropping it closes the socket and only then frees its slots, so the
/// connection limit also bounds open file descriptors (and threads).
pub(crate) struct Connection {
    // Field order is drop order: our reference to the socket first, then
    // the slot, which removes the table's (last) reference, closing the
    // socket, before it frees the permits.
    pub(crate) stream: Arc<Stream>,
    pub(crate) peer: Peer,
    /// While a PROXY protocol header is owed: what came of it so far, and
    /// when it must be complete. Boxed: most connections owe none, and a
    /// `Connection` is moved between threads by value.
    preface: Option<Box<(Preface, Instant)>>,
    /// A TLS listener's connection: its session (and, until the handshake
    /// is done, its deadline). Boxed for the same reason.
    #[cfg(feature = "tls")]
    tls: Option<Box<crate::tls::Session>>,
    /// An impaired listener's connection: its plan (the engine takes it).
    /// Boxed: most connections have none.
    pub(crate) impair: Option<Box<Plan>>,
    slot: Slot,
}

struct Slot {
    id: u64,
    ctx: Arc<Context>,
    /// The engine serving it, once placed (counted per engine).
    placement: Option<Placement>,
    seat: Option<Seat>,
    source_slot: Option<SourceSlot>,
    _permit: Permit,
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The client shut down its side and got everything back.
    Finished(u64),
    /// A blocking operation timed out: idle when reading, a stalled reader
    /// when writing.
    TimedOut(Op),
    /// Reset, broken pipe, or another error of the stream.
    Failed(io::Error),
    /// Turned away before its echo began (a PROXY protocol header that
    /// was invalid or late, or a client at the per-source cap), and
    /// counted under that reason already.
    Refused(io::Error),
}

impl Connection {
    /// Lists a freshly accepted socket in the connection table.
    pub(crate) fn admit(
        socket: Socket,
        peer: Peer,
        ctx: &Arc<Context>,
        permit: Permit,
        source_slot: Option<SourceSlot>,
    ) -> Connection {
        let stream = Arc::new(Stream::new(socket));
        let id = ctx.table.insert(Arc::clone(&stream), &ctx.counters);
        // A balancer's connection starts with the header that says who the
        // client is; the per-source cap waits for it (the accept loop left
        // such connections out, or every client would count as one).
        let preface = ctx.settings.proxy.expects_header(&peer).then(|| {
            Box::new((
                Preface::default(),
                crate::shutdown::deadline(ctx.settings.proxy.timeout),
            ))
        });
        let impair = ctx.settings.impair.as_deref().and_then(|imp| {
            impaired_plan(imp, &stream.socket, ctx).map(|plan| {
                log::debug!(
                    peer:% = peer, index = plan.index();
                    "{peer}: impaired, connection index {}", plan.index()
                );
                Box::new(plan)
            })
        });
        Connection {
            stream,
            peer,
            preface,
            #[cfg(feature = "tls")]
            tls: None,
            impair,
            slot: Slot {
                id,
                ctx: Arc::clone(ctx),
                placement: None,
                seat: None,
                source_slot,
                _permit: permit,
            },
        }
    }

    pub(crate) fn ctx(&self) -> &Arc<Context> {
        &self.slot.ctx
    }

    /// Its key in the connection table.
    pub(crate) fn id(&self) -> u64 {
        self.slot.id
    }

    /// Served by its own thread, on `seat`.
    pub(crate) fn place_on_thread(&mut self, seat: Seat) {
        self.slot.seat = Some(seat);
        self.slot.place(Placement::Thread);
    }

    /// Not on the thread it was placed on after all (the OS refused one).
    pub(crate) fn unplaced(mut self) -> Connection {
        if let Some(placement) = self.slot.placement.take() {
            Counters::sub(self.slot.gauge(placement), 1);
        }
        self.slot.seat = None;
        self
    }

    /// Served by an event loop.
    pub(crate) fn place_on_event_loop(&mut self) {
        self.slot.place(Placement::EventLoop);
    }

    /// Served by an io_uring loop.
    #[cfg(all(target_os = "linux", feature = "uring"))]
    pub(crate) fn place_on_uring(&mut self) {
        self.slot.place(Placement::Uring);
    }

    /// The stream as the echo core sees it.
    pub(crate) fn metered(&mut self) -> Metered<'_> {
        let ctx = &self.slot.ctx;
        Metered {
            stream: &self.stream,
            counters: &ctx.counters,
            faults: &ctx.faults,
            log_data: ctx.settings.log_data,
            peer: &self.peer,
            last_op: Op::Read,
            #[cfg(feature = "tls")]
            tls: self.tls.as_mut().map(|session| &mut session.tls),
        }
    }

    /// A TLS listener's connection: it owes a handshake (within
    /// `--tls-handshake-timeout` of now) and is served over TLS after it,
    /// with the server's certificate of the moment.
    ///
    /// # Errors
    ///
    /// `Failed` if rustls cannot start a session with the configuration.
    #[cfg(feature = "tls")]
    pub(crate) fn start_tls(&mut self) -> Result<(), Outcome> {
        let settings = &self.slot.ctx.settings;
        let Some(config) = &settings.tls else {
            return Err(Outcome::Failed(io::Error::other("no TLS configuration")));
        };
        let tls = rustls::ServerConnection::new(config.current())
            .map_err(|e| Outcome::Failed(io::Error::other(e)))?;
        self.tls = Some(Box::new(crate::tls::Session {
            tls,
            handshake_deadline: Some(crate::shutdown::deadline(settings.tls_handshake_timeout)),
        }));
        Ok(())
    }

    /// Whether it is served over TLS (its engine cannot look at the
    /// socket's bytes, only at the plaintext).
    pub(crate) fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// When the TLS handshake it still owes must be done; `None` once it
    /// is (or for a plain connection).
    pub(crate) fn handshake_deadline(&self) -> Option<Instant> {
        #[cfg(feature = "tls")]
        return self.tls.as_ref().and_then(|s| s.handshake_deadline);
        #[cfg(not(feature = "tls"))]
        None
    }

    /// Drives the TLS handshake it owes as far as the socket allows:
    /// `Ok(true)` once done (at once for a plain connection), `Ok(false)`
    /// while it waits for the socket (engines wait for readiness, or block
    /// with a timeout, each their own way).
    ///
    /// # Errors
    ///
    /// How to close the connection: `Refused` (and counted) for a client
    /// that does not speak TLS as required (plaintext, no or a bad client
    /// certificate); `Failed` for one that closed or reset first.
    pub(crate) fn handshake(&mut self) -> Result<bool, Outcome> {
        #[cfg(feature = "tls")]
        if let Some(session) = &mut self.tls {
            if session.handshake_deadline.is_none() {
                return Ok(true);
            }
            let mut io = crate::tls::TlsIo {
                socket: &*self.stream,
                tls: &mut session.tls,
            };
            return match io.handshake() {
                Ok(done) => {
                    if done {
                        session.handshake_deadline = None;
                        // Idle from now: the handshake had its own deadline.
                        self.stream.activity.began();
                        log::debug!(peer:% = self.peer; "{}: TLS handshake done", self.peer);
                    }
                    Ok(done)
                }
                Err(crate::tls::HandshakeError::Io(e)) => Err(Outcome::Failed(e)),
                Err(crate::tls::HandshakeError::Refused(e)) => {
                    Counters::add(&self.slot.ctx.counters.tls_handshake_failed, 1);
                    Err(Outcome::Refused(io::Error::new(
                        ErrorKind::InvalidData,
                        format!("TLS handshake failed: {e}"),
                    )))
                }
            };
        }
        Ok(true)
    }

    /// The TLS handshake was not done in time: counted, and how to close
    /// the connection.
    pub(crate) fn handshake_timed_out(&mut self) -> Outcome {
        Counters::add(&self.slot.ctx.counters.tls_handshake_timeouts, 1);
        Outcome::Refused(io::Error::new(
            ErrorKind::TimedOut,
            "no TLS handshake in time",
        ))
    }

    /// When the PROXY protocol header it still owes must be complete;
    /// `None` once it has come (or when none is expected).
    pub(crate) fn preface_deadline(&self) -> Option<Instant> {
        self.preface.as_ref().map(|preface| preface.1)
    }

    /// Reads what has come of the PROXY protocol header, if one is owed: as
    /// long as the socket gives bytes (engines read it non-blocking, each
    /// waiting for readiness its own way). Returns the echo to serve the
    /// connection with, which begins with any client bytes that came after
    /// the header; `None` while the header is incomplete.
    ///
    /// # Errors
    ///
    /// How to close the connection, without an echo: `Refused` (and
    /// counted) for a header that is invalid or names a client at the
    /// per-source cap; `Failed` for a client that closed or reset first.
    pub(crate) fn read_preface(&mut self) -> Result<Option<Echo>, Outcome> {
        if self.preface.is_none() {
            return Ok(Some(Echo::new()));
        }
        let mut buf = [0u8; MAX_HEADER];
        loop {
            let room = self.preface.as_ref().map_or(1, |preface| preface.0.room());
            let n = match { &*self.stream }.read(&mut buf[..room.min(MAX_HEADER)]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(Outcome::Failed(e)),
            };
            if let Some(rest) = self.feed_preface(&buf[..n])? {
                return Ok(Some(Echo::after(rest)));
            }
        }
    }

    /// Takes bytes received while the PROXY protocol header is owed (`&[]`
    /// for end of file). Returns the client's bytes that followed the
    /// header once it is complete, `None` while it is not.
    ///
    /// # Errors
    ///
    /// As [`read_preface`](Self::read_preface).
    pub(crate) fn feed_preface(&mut self, bytes: &[u8]) -> Result<Option<Vec<u8>>, Outcome> {
        let Some(preface) = &mut self.preface else {
            return Ok(Some(bytes.to_vec()));
        };
        if bytes.is_empty() {
            // The client left (or the server is shutting down, or reclaimed
            // the slot): not a refusal of ours.
            self.preface = None;
            return Err(Outcome::Failed(io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed before its PROXY protocol header was complete",
            )));
        }
        match preface.0.feed(bytes) {
            Ok(Fed::More) => Ok(None),
            Ok(Fed::Done { source, rest }) => {
                self.preface = None;
                self.speaks_for(source)?;
                // Idle from now, not from accept: the header took its time
                // under a deadline of its own.
                self.stream.activity.began();
                #[cfg(feature = "tls")]
                if let Some(session) = &mut self.tls {
                    // The first bytes of the TLS handshake, not the
                    // client's data: rustls takes them.
                    if let Err(e) = feed_tls(&mut session.tls, &rest) {
                        Counters::add(&self.slot.ctx.counters.tls_handshake_failed, 1);
                        return Err(Outcome::Refused(e));
                    }
                    return Ok(Some(Vec::new()));
                }
                if !rest.is_empty() {
                    self.metered().received(&rest);
                }
                Ok(Some(rest))
            }
            Err(invalid) => {
                Err(self.refuse_preface(io::Error::new(ErrorKind::InvalidData, invalid)))
            }
        }
    }

    /// The PROXY protocol header is complete: from now on the connection
    /// is the client's it named (`source`), for the per-source cap and the
    /// logs; or, for a header that names none (the balancer's own health
    /// check: v1 `UNKNOWN`, v2 `LOCAL`), still the balancer's.
    fn speaks_for(&mut self, source: Option<SocketAddr>) -> Result<(), Outcome> {
        let ctx = Arc::clone(&self.slot.ctx);
        if let Some(source) = source {
            log::debug!(
                peer:% = self.peer, client:% = source;
                "{}: PROXY protocol: client {source}", self.peer
            );
            self.peer = Peer::Ip(source);
        }
        let Peer::Ip(client) = self.peer else {
            return Ok(()); // a Unix peer is never capped
        };
        if let Some(cap) = &ctx.per_source {
            match cap.admit(normalize(client).ip()) {
                Some(slot) => self.slot.source_slot = Some(slot),
                None => {
                    ctx.counters.count_refused(TurnedAway::PerSourceCap);
                    return Err(Outcome::Refused(io::Error::new(
                        ErrorKind::ConnectionRefused,
                        format!("{client} is at the per-source cap"),
                    )));
                }
            }
        }
        Ok(())
    }

    /// The PROXY protocol header did not come in time: counted, and how to
    /// close the connection.
    pub(crate) fn preface_timed_out(&mut self) -> Outcome {
        self.refuse_preface(io::Error::new(
            ErrorKind::TimedOut,
            "no complete PROXY protocol header in time",
        ))
    }

    /// The PROXY protocol header will never be valid: counted, and how to
    /// close the connection.
    fn refuse_preface(&mut self, e: io::Error) -> Outcome {
        self.preface = None;
        Counters::add(&self.slot.ctx.counters.proxy_refused, 1);
        Outcome::Refused(e)
    }

    /// Ends the connection: counts and logs how, and closes it.
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    pub(crate) fn close(mut self, outcome: Outcome) {
        #[cfg(feature = "tls")]
        if let (Outcome::Finished(_), Some(session)) = (&outcome, &mut self.tls) {
            // The echo is complete: said in TLS too, with our close_notify,
            // before the FIN.
            crate::tls::TlsIo {
                socket: &*self.stream,
                tls: &mut session.tls,
            }
            .close_notify();
        }
        let ctx = &self.slot.ctx;
        let peer = &self.peer;
        let ending = match &outcome {
            Outcome::Failed(e) => crate::impairment::ending(e),
            _ => None,
        };
        if let Some(ending) = ending {
            let socket = &self.stream.socket;
            match ending {
                Ending::Reset => {
                    // The echo must reach the client before the reset: an
                    // RST discards what is still in our send queue, and a
                    // busy machine can hold a few small pieces there.
                    await_sent(socket);
                    // SO_LINGER 0: the close (when `self` is dropped) sends
                    // an RST, not a FIN.
                    let _ = socket.set_linger(Some(std::time::Duration::ZERO));
                    Counters::add(&ctx.counters.impaired_resets, 1);
                }
                Ending::Close => {
                    // A FIN now; then what the client sent on is read and
                    // thrown away, so that the close finds an empty receive
                    // queue and does not turn into a reset.
                    let _ = socket.shutdown(std::net::Shutdown::Write);
                    drain(socket);
                    Counters::add(&ctx.counters.impaired_closes, 1);
                }
                Ending::Stall => Counters::add(&ctx.counters.impaired_stalls, 1),
            }
            log::debug!(peer:% = peer, reason = "impairment"; "{peer}: {ending}");
            return;
        }
        match outcome {
            // Everything read has been written back: closing (which
            // follows, when `self` is dropped) sends the client our FIN. No
            // `shutdown(Write)` first: the receive queue is empty after end
            // of file, so the close cannot turn into a reset, and the call
            // would cost a system call per connection.
            Outcome::Finished(n) => {
                log::debug!(peer:% = peer, bytes = n, reason = "done"; "{peer}: closed after echoing {n} bytes")
            }
            Outcome::TimedOut(Op::Read) => {
                Counters::add(&ctx.counters.idle_timeouts, 1);
                log::debug!(peer:% = peer, reason = "idle_timeout"; "{peer}: idle timeout, closing");
            }
            Outcome::TimedOut(Op::Write) => {
                Counters::add(&ctx.counters.write_timeouts, 1);
                log::debug!(
                    peer:% = peer, reason = "write_timeout";
                    "{peer}: not reading its echo (write timeout), closing"
                );
            }
            Outcome::Failed(e) if crate::stream::is_vanished(&e) => {
                Counters::add(&ctx.counters.keepalive_closed, 1);
                log::debug!(
                    peer:% = peer, reason = "keepalive";
                    "{peer}: vanished (no answer to keepalive), closing"
                );
            }
            // Resets and broken pipes are the client's business; not worth
            // more than a debug line.
            Outcome::Failed(e) | Outcome::Refused(e) => {
                log::debug!(peer:% = peer, reason:% = e; "{peer}: {e}")
            }
        }
    }
}

/// Reads and drops what a socket holds, without blocking (a few reads at
/// most: a client that sends on gets its reset after all).
fn drain(socket: &Socket) {
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        match { socket }.read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// The plan of a connection accepted on `socket`, if its listener is
/// impaired and the impairments change streams: its index is the next of
/// the server's. Its pieces leave as they are written (`TCP_NODELAY`).
fn impaired_plan(imp: &Impairments, socket: &Socket, ctx: &Context) -> Option<Plan> {
    if !imp.affects_streams() {
        return None;
    }
    let port = socket.local_addr().ok()?.as_socket().map(|a| a.port());
    if !imp.applies_to(port) {
        return None;
    }
    if port.is_some() {
        // Best effort: without it pieces may merge, never change.
        let _ = socket.set_tcp_nodelay(true);
    }
    let index = ctx
        .impair_next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(Plan::new(imp, index))
}

/// Bytes of a TLS handshake that came in the read that ended a PROXY
/// protocol header, given to rustls.
#[cfg(feature = "tls")]
fn feed_tls(tls: &mut rustls::ServerConnection, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        if tls.read_tls(&mut bytes)? == 0 {
            break;
        }
        tls.process_new_packets()
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Thread,
    EventLoop,
    /// (Never constructed without the uring engine; the gauge is kept.)
    #[cfg_attr(not(all(target_os = "linux", feature = "uring")), allow(dead_code))]
    Uring,
}

impl Slot {
    fn place(&mut self, placement: Placement) {
        debug_assert!(self.placement.is_none(), "a connection never moves");
        self.placement = Some(placement);
        Counters::add(self.gauge(placement), 1);
    }

    /// The live count of connections on `placement`'s engine.
    fn gauge(&self, placement: Placement) -> &AtomicU64 {
        let counters = &self.ctx.counters;
        match placement {
            Placement::Thread => &counters.active_threads,
            Placement::EventLoop => &counters.active_events,
            Placement::Uring => &counters.active_uring,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The connection's own reference to the socket is gone by now; this
        // drops the table's, closing it.
        self.ctx.table.remove(self.id, &self.ctx.counters);
        if let Some(placement) = self.placement {
            Counters::sub(self.gauge(placement), 1);
        }
        // `seat`, `source_slot` and `_permit` are dropped after this,
        // freeing the slots last.
    }
}

/// How long a reset waits for its echo to be acknowledged, at most: an
/// event loop waits with it, and a client that reads nothing never
/// acknowledges (its window is shut); then the reset goes anyway.
const RESET_DRAIN: std::time::Duration = std::time::Duration::from_millis(200);

/// Waits (at most [`RESET_DRAIN`]) until everything written on `socket` has
/// been acknowledged by the peer (Linux; elsewhere nothing to wait for).
fn await_sent(socket: &Socket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsFd;
        let start = std::time::Instant::now();
        while matches!(crate::sys::sockopt::unacknowledged(socket.as_fd()), Ok(n) if n > 0)
            && start.elapsed() < RESET_DRAIN
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}
