//! The counters in the Prometheus text exposition format, served over HTTP
//! on a listener of its own: never behind the echo listeners' connection
//! limit, never taking one of their slots.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | 200, the counters ([`render`]), `text/plain; version=0.0.4; charset=utf-8` |
//! | `/healthz` | 200 `ok` while the process serves (liveness) |
//! | `/readyz` | 200 while the server accepts; 503 from the moment shutdown starts, while connections drain (readiness: a load balancer stops sending clients) |
//! | anything else | 404 |
//!
//! Only `GET` and `HEAD` are answered (405 with `Allow: GET, HEAD`
//! otherwise); a query string (`/metrics?x=1`) is ignored, and the
//! absolute form (`http://host/metrics`) names the same paths.
//!
//! The endpoint faces the same clients as the echo port, so it is bounded
//! in every resource a client could make it spend:
//!
//! - **One thread** ([`THREADS`]), an event loop (mio) serving at most
//!   [`MAX_CONNECTIONS`] connections at once. A client that never reads,
//!   never writes or writes a byte a minute costs a slot and a few KiB, never
//!   a thread, and never holds up the others: nothing in the loop blocks. A
//!   pool of blocking handler threads would not do: a handful of idle
//!   clients would occupy every handler and the scrape would queue behind
//!   them. When every slot is taken, a new connection takes the slot of the
//!   oldest connection of the address that holds the most: a scrape is
//!   answered in a millisecond, so only a client that has been stalling
//!   loses its slot, and a flood of connections from one address displaces
//!   its own, not a scraper's. (From the scraper's own address, a flood of
//!   about a thousand connections a second still starves it: keep the
//!   endpoint on an address only the scraper reaches.)
//! - **A request head of at most [`MAX_HEAD`] bytes** (431 beyond), parsed
//!   by `httparse` in place; a body is never read: every answer says
//!   `Connection: close` and the connection ends after it, so a declared
//!   `Content-Length` costs nothing, whatever it says.
//! - **[`TIMEOUT`] to send the head, and again to take the answer**, then
//!   at most a second and 64 KiB of whatever the client still sends
//!   (discarded), so that it reads the answer before the close resets the
//!   connection.
//! - Accept errors (out of descriptors) are retried with the echo
//!   listeners' back-off, never the end of the endpoint.
//! - Dropping the [`MetricsServer`] wakes the loop and returns at once,
//!   whatever the clients do.
//!
//! Nothing a client sends is logged except escaped ([`crate::escape()`]).

use crate::escape::escape;
use crate::listener::{is_fd_exhaustion, is_transient, Backoff};
use crate::server::ServerHandle;
use crate::stats::{Metric, Stats};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Threads the endpoint runs: the thread budget leaves room for them
/// (`--metrics` reserves them, see [`ServerBuilder::reserve_threads`]).
///
/// [`ServerBuilder::reserve_threads`]: crate::ServerBuilder::reserve_threads
pub const THREADS: usize = 1;

/// Connections served at once; a new one beyond takes the oldest one's
/// slot. Prometheus scrapes over one connection at a time, and a few people
/// with curl need a few more.
pub const MAX_CONNECTIONS: usize = 16;

/// The longest request head (request line and headers) read: 8 KiB, as
/// most servers allow. Beyond it: 431 and close.
pub const MAX_HEAD: usize = 8 << 10;

/// Headers a request may have (431 beyond). Prometheus sends about six.
const MAX_HEADERS: usize = 32;

/// How long a client has to send its request head, and then again to take
/// the answer: a silent, a byte-a-minute or a never-reading client holds a
/// slot this long at most.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// After the answer, what the client still sends (a body, pipelined
/// requests) is read and discarded for this long and up to `LINGER_BYTES`
/// before the close: closing with unread data would reset the connection,
/// and a reset can destroy the answer before the client has read it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 << 10;

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

const LISTENER: Token = Token(0);
const STOP: Token = Token(1);
/// Connection `i` is `Token(FIRST + i)`.
const FIRST: usize = 2;

/// A running metrics endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    /// Wakes the loop to stop it: its only wake-up.
    stop: Waker,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `handle`'s counters at `http://addr/metrics` (and the probes
    /// `/healthz`, `/readyz`) on [`THREADS`] thread of its own. Port 0 lets
    /// the OS pick (see [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    ///
    /// The address cannot be bound, or no thread can be started.
    pub fn start(addr: SocketAddr, handle: ServerHandle) -> io::Result<MetricsServer> {
        // std sets SO_REUSEADDR (on Unix): a restart binds past TIME_WAIT.
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let stop = Waker::new(poll.registry(), STOP)?;
        let endpoint = Endpoint::new(poll, listener, handle);
        let thread = thread::Builder::new()
            .name("echo-metrics".to_owned())
            .spawn(move || endpoint.run())?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the endpoint listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MetricsServer {
    /// Stops the loop and joins it: prompt, since the loop never blocks on
    /// a client (its open connections are closed).
    fn drop(&mut self) {
        if let Err(e) = self.stop.wake() {
            // Cannot happen short of a broken descriptor; joining would
            // then wait forever, so the thread is left to the process exit.
            log::error!("cannot stop the metrics endpoint: {e}");
            return;
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the metrics endpoint panicked");
            }
        }
    }
}

/// An answer to a request: its status and all of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The status line, headers, and body (none for `HEAD`).
    pub bytes: Vec<u8>,
}

/// Answers the request whose bytes so far are `received`, or `None` if its
/// head is not complete yet (and still under [`MAX_HEAD`]). `ready` is what
/// `/readyz` says. Only the head is looked at: whatever follows it (a body,
/// more requests) is ignored, and every answer closes the connection.
///
/// # Examples
///
/// ```
/// use echo_server::{metrics::answer, Stats};
///
/// assert_eq!(answer(b"GET /healthz HTTP/1.1\r\n", &Stats::default(), true), None);
/// let ok = answer(b"GET /healthz HTTP/1.1\r\n\r\n", &Stats::default(), true).unwrap();
/// assert_eq!(ok.status, 200);
/// assert!(ok.bytes.ends_with(b"\r\n\r\nok\n"));
/// ```
pub fn answer(received: &[u8], stats: &Stats, ready: bool) -> Option<Answer> {
    let head = &received[..received.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(head);
    Some(match parsed {
        Ok(httparse::Status::Complete(_)) => route(&request, stats, ready),
        Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => return None,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => respond(
            431,
            "Request Header Fields Too Large",
            PLAIN_TEXT,
            "",
            "request head too large\n",
            false,
        ),
        Err(_) => respond(400, "Bad Request", PLAIN_TEXT, "", "bad request\n", false),
    })
}

fn route(request: &httparse::Request<'_, '_>, stats: &Stats, ready: bool) -> Answer {
    // A complete request has both.
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    // The absolute form (`http://host/metrics`), which a server must accept
    // (RFC 9112, 3.2.2) and proxies send: the path is what follows the
    // authority.
    let path = match path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => path,
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return respond(
                405,
                "Method Not Allowed",
                PLAIN_TEXT,
                "Allow: GET, HEAD\r\n",
                "only GET and HEAD\n",
                false,
            )
        }
    };
    match path {
        "/metrics" => respond(200, "OK", PROMETHEUS_TEXT, "", &render(stats), head_only),
        "/healthz" => respond(200, "OK", PLAIN_TEXT, "", "ok\n", head_only),
        "/readyz" if ready => respond(200, "OK", PLAIN_TEXT, "", "ready\n", head_only),
        "/readyz" => respond(
            503,
            "Service Unavailable",
            PLAIN_TEXT,
            "",
            "shutting down\n",
            head_only,
        ),
        _ => respond(
            404,
            "Not Found",
            PLAIN_TEXT,
            "",
            "not found: the paths are /metrics, /healthz and /readyz\n",
            head_only,
        ),
    }
}

/// Status line, headers (`extra` among them), and the body unless
/// `head_only` (a `HEAD` answer has the headers of the `GET` answer,
/// Content-Length included).
fn respond(
    status: u16,
    reason: &str,
    content_type: &str,
    extra: &str,
    body: &str,
    head_only: bool,
) -> Answer {
    let mut out = String::with_capacity(160 + body.len());
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n{extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    Answer {
        status,
        bytes: out.into_bytes(),
    }
}

/// The endpoint's event loop and everything it owns.
struct Endpoint {
    poll: Poll,
    listener: TcpListener,
    handle: ServerHandle,
    slots: [Option<Conn>; MAX_CONNECTIONS],
    backoff: Backoff,
    /// After an accept error: no accepting before then.
    accept_paused_until: Option<Instant>,
    /// Connections accepted so far: each one's number orders them by age
    /// (an `Instant` would not: a batch is accepted at one instant).
    accepted: u64,
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Its number in the order of accepting.
    number: u64,
    /// When the current phase must be over (see [`TIMEOUT`], [`LINGER`]).
    deadline: Instant,
    phase: Phase,
}

enum Phase {
    /// Reading the head, at most [`MAX_HEAD`] bytes.
    Reading(Vec<u8>),
    /// Writing the answer; `.1` bytes of it written.
    Writing(Vec<u8>, usize),
    /// Answer sent and writing shut down: discarding what still comes,
    /// `.0` bytes so far.
    Lingering(usize),
}

impl Endpoint {
    /// An endpoint with no connection yet, accepting from `listener`.
    fn new(poll: Poll, listener: TcpListener, handle: ServerHandle) -> Endpoint {
        Endpoint {
            poll,
            listener,
            handle,
            slots: std::array::from_fn(|_| None),
            backoff: Backoff::default(),
            accept_paused_until: None,
            accepted: 0,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            self.expire(now);
            let more_waiting = self.may_accept(now) && self.accept_some(now);
            let timeout = poll_timeout(more_waiting, self.next_deadline());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                // Only a broken poll descriptor fails here; nothing to retry.
                log::error!("metrics endpoint stopped: {e}");
                return;
            }
            for event in &events {
                match event.token() {
                    STOP => return, // the connections close as `self` drops
                    LISTENER => {}  // accepted at the top of the loop
                    Token(t) => self.advance(t.wrapping_sub(FIRST)),
                }
            }
        }
    }

    /// Accepts until the backlog is empty or accepting fails, or
    /// [`MAX_CONNECTIONS`] are taken: a flood of connections must not
    /// keep the loop from the ones it has. Returns whether more may wait.
    fn accept_some(&mut self, now: Instant) -> bool {
        for _ in 0..MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.backoff.reset();
                    self.admit(stream, peer, now);
                }
                Err(e) => {
                    if !self.accept_failed(&e, now) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Whether accepting is on at `now`: it is, unless paused by an accept
    /// error until later.
    fn may_accept(&mut self, now: Instant) -> bool {
        let on = self.accept_paused_until.is_none_or(|until| now >= until);
        if on {
            self.accept_paused_until = None;
        }
        on
    }

    /// Deals with a failed `accept`; returns whether to accept on.
    fn accept_failed(&mut self, e: &io::Error, now: Instant) -> bool {
        match e {
            // The backlog is empty.
            e if e.kind() == ErrorKind::WouldBlock => false,
            // One client that did not make it: the next may.
            e if is_transient(e) => true,
            e => {
                // Out of descriptors (or memory): wait, and keep serving the
                // connections already open meanwhile.
                let delay = self.backoff.next();
                // Logged once per run of failures, not once per retry.
                if delay == Backoff::FIRST {
                    let what = if is_fd_exhaustion(e) {
                        "out of file descriptors"
                    } else {
                        "accept failed"
                    };
                    log::warn!("metrics endpoint: {what}, backing off: {e}");
                }
                self.accept_paused_until = Some(now + delay);
                false
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                // Full: a connection makes room (see the module
                // documentation).
                let victim = victim(&self.slots);
                if let Some(c) = &self.slots[victim] {
                    log::debug!(
                        "metrics endpoint full: closing {}, the oldest of its address",
                        c.peer
                    );
                }
                self.close(victim);
                victim
            }
        };
        let token = Token(FIRST + slot);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, token, interest) {
            log::warn!("metrics endpoint: cannot watch a connection from {peer}: {e}");
            return;
        }
        self.accepted += 1;
        self.slots[slot] = Some(Conn {
            stream,
            peer,
            number: self.accepted,
            deadline: now + TIMEOUT,
            phase: Phase::Reading(Vec::new()),
        });
        // Whatever already arrived is read now, not at the next event.
        self.advance(slot);
    }

    /// Moves connection `slot` on as far as its socket allows; closes it
    /// when it is done or failed.
    fn advance(&mut self, slot: usize) {
        let Some(Some(conn)) = self.slots.get_mut(slot) else {
            return; // closed earlier in this round of events
        };
        if !conn.advance(&self.handle) {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.slots[slot].take() {
            // Dropping the socket would remove it from the poll set too.
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// Closes the connections whose phase is over time.
    fn expire(&mut self, now: Instant) {
        for slot in 0..MAX_CONNECTIONS {
            if let Some(conn) = &self.slots[slot] {
                if now >= conn.deadline {
                    if let Phase::Reading(_) | Phase::Writing(..) = conn.phase {
                        log::debug!("metrics endpoint: {} timed out, closed", conn.peer);
                    }
                    self.close(slot);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let conns = self.slots.iter().flatten().map(|c| c.deadline);
        conns.chain(self.accept_paused_until).min()
    }
}

/// How long the loop may wait for events: not at all while clients may
/// still wait in the backlog (`more_waiting`), else until the `next`
/// deadline (rounded up: waking a moment early would only loop), if any.
fn poll_timeout(more_waiting: bool, next: Option<Instant>) -> Option<Duration> {
    match next {
        _ if more_waiting => Some(Duration::ZERO),
        Some(at) => Some(at.saturating_duration_since(Instant::now()) + Duration::from_millis(1)),
        None => None,
    }
}

/// Which connection of a full endpoint gives up its slot: the oldest of
/// the address that holds the most slots. A flood of connections from one
/// address then only ever displaces its own, and a scraper elsewhere keeps
/// its slot; from one address (loopback), it is the oldest.
fn victim(slots: &[Option<Conn>]) -> usize {
    let ip = |c: &Conn| crate::address::normalize(c.peer).ip();
    let held = |addr| slots.iter().flatten().filter(|c| ip(c) == addr).count();
    slots
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
        // Most slots held first, then the oldest (smallest number).
        .min_by_key(|(_, c)| (std::cmp::Reverse(held(ip(c))), c.number))
        .map_or(0, |(i, _)| i)
}

impl Conn {
    /// Reads, answers and lingers until the socket would block (the poll
    /// is edge-triggered: every readiness must be used up). Returns whether
    /// the connection stays open.
    fn advance(&mut self, handle: &ServerHandle) -> bool {
        loop {
            match &mut self.phase {
                Phase::Reading(head) => {
                    let had = head.len();
                    head.resize(MAX_HEAD, 0);
                    let read = self.stream.read(&mut head[had..]);
                    head.truncate(had + *read.as_ref().unwrap_or(&0));
                    match read {
                        // Gone before a whole head: nothing to answer.
                        Ok(0) => return false,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return e.kind() == ErrorKind::WouldBlock,
                    }
                    let Some(answer) = answer(head, &handle.stats(), !handle.is_shutdown()) else {
                        continue;
                    };
                    if answer.status >= 400 {
                        log::debug!(
                            "metrics endpoint: {} from {}: {}",
                            answer.status,
                            self.peer,
                            escape(first_line(head))
                        );
                    }
                    self.deadline = Instant::now() + TIMEOUT;
                    self.phase = Phase::Writing(answer.bytes, 0);
                }
                Phase::Writing(bytes, written) => {
                    match self.stream.write(&bytes[*written..]) {
                        Ok(n) => *written += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return e.kind() == ErrorKind::WouldBlock,
                    }
                    if *written == bytes.len() {
                        if self.stream.shutdown(std::net::Shutdown::Write).is_err() {
                            return false;
                        }
                        self.deadline = Instant::now() + LINGER;
                        self.phase = Phase::Lingering(0);
                    }
                }
                Phase::Lingering(discarded) => {
                    let mut scrap = [0u8; 4096];
                    match self.stream.read(&mut scrap) {
                        Ok(0) => return false, // the client closed too: done
                        Ok(n) => *discarded += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) => return e.kind() == ErrorKind::WouldBlock,
                    }
                    if *discarded > LINGER_BYTES {
                        return false;
                    }
                }
            }
        }
    }
}

/// The request line, or the first 100 bytes of it: what a log needs.
fn first_line(head: &[u8]) -> &[u8] {
    let end = head
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(head.len())
        .min(100);
    &head[..end]
}

/// The counters in the Prometheus text format (version 0.0.4): each metric
/// of the counter table (`src/stats.rs`), in its order, with its `HELP`,
/// its `TYPE` (its counters' kind) and a sample per counter.
pub fn render(s: &Stats) -> String {
    let mut out = String::new();
    for metric in Metric::ALL {
        let samples = s
            .counters()
            .filter_map(|(counter, n)| match counter.sample {
                Some((of, labels)) if of == metric && (n > 0 || counter.sampled_at_zero) => {
                    Some((counter.kind, labels, n))
                }
                _ => None,
            });
        let name = metric.name();
        for (i, (kind, labels, n)) in samples.enumerate() {
            // The head before the first sample: the kind is its counters'
            // (a test checks that they agree).
            if i == 0 {
                let _ = writeln!(out, "# HELP echo_server_{name} {}", metric.help());
                let _ = writeln!(out, "# TYPE echo_server_{name} {}", kind.name());
            }
            let _ = writeln!(out, "echo_server_{name}{labels} {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ask(request: &str) -> (u16, String) {
        let stats = Stats {
            accepted: 3,
            ..Stats::default()
        };
        let a = answer(request.as_bytes(), &stats, true).expect("a whole head");
        (
            a.status,
            String::from_utf8(a.bytes).expect("answers are text"),
        )
    }

    fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
        let (head, _) = response.split_once("\r\n\r\n")?;
        head.lines()
            .skip(1)
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
    }

    #[test]
    fn the_paths_and_their_answers() {
        let (status, r) = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(header(&r, "Content-Type"), Some(PROMETHEUS_TEXT));
        assert_eq!(header(&r, "Connection"), Some("close"));
        let body = render(&Stats {
            accepted: 3,
            ..Stats::default()
        });
        assert!(r.ends_with(&format!("\r\n\r\n{body}")), "{r}");
        assert_eq!(header(&r, "Content-Length"), Some(&*body.len().to_string()));
        // A query string still names the path; HTTP/1.0 is answered too.
        assert_eq!(ask("GET /metrics?x=1&y HTTP/1.0\r\n\r\n").0, 200);
        let (status, r) = ask("GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!((status, r.ends_with("\r\n\r\nok\n")), (200, true), "{r}");
        assert_eq!(ask("GET /readyz HTTP/1.1\r\n\r\n").0, 200);
        let draining = answer(b"GET /readyz HTTP/1.1\r\n\r\n", &Stats::default(), false);
        assert_eq!(draining.map(|a| a.status), Some(503));
        let (status, r) = ask("GET /nope HTTP/1.1\r\n\r\n");
        assert_eq!(status, 404);
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert_eq!(ask("GET /metrics/ HTTP/1.1\r\n\r\n").0, 404);
        // The absolute form names the same paths.
        assert_eq!(ask("GET http://host:9707/metrics HTTP/1.1\r\n\r\n").0, 200);
        assert_eq!(ask("GET https://h/readyz?x HTTP/1.1\r\n\r\n").0, 200);
        assert_eq!(ask("GET http://host HTTP/1.1\r\n\r\n").0, 404);
        assert_eq!(ask("GET http://evil/nope HTTP/1.1\r\n\r\n").0, 404);
    }

    #[test]
    fn head_has_the_headers_of_get_and_no_body() {
        for path in ["/metrics", "/healthz", "/readyz", "/nope"] {
            let (get_status, get) = ask(&format!("GET {path} HTTP/1.1\r\n\r\n"));
            let (head_status, head) = ask(&format!("HEAD {path} HTTP/1.1\r\n\r\n"));
            assert_eq!(head_status, get_status);
            assert!(head.ends_with("\r\n\r\n"), "a body: {head}");
            assert!(
                get.starts_with(&head),
                "{path}: {head} is not the head of {get}"
            );
        }
    }

    #[test]
    fn other_methods_get_405_with_allow_and_their_bodies_are_never_waited_for() {
        for request in [
            "POST /metrics HTTP/1.1\r\nContent-Length: 1099511627776\r\n\r\n",
            "PUT /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n",
            "DELETE /nope HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
        ] {
            let (status, r) = ask(request);
            assert_eq!(status, 405, "{request}");
            assert_eq!(header(&r, "Allow"), Some("GET, HEAD"), "{r}");
        }
        // A GET with a body is answered at the end of its head.
        assert_eq!(
            ask("GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel").0,
            200
        );
    }

    #[test]
    fn malformed_heads_get_400_and_long_ones_431() {
        for bad in [
            "\x00\x01 garbage \r\n\r\n",
            "GET /\x1b[2J HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/2.0\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nNo colon\r\n\r\n",
        ] {
            assert_eq!(ask(bad).0, 400, "{bad:?}");
        }
        // Incomplete: wait for more, up to MAX_HEAD bytes.
        let line = format!("GET /{}", "a".repeat(MAX_HEAD));
        for n in [0, 1, 20, MAX_HEAD - 1] {
            assert_eq!(
                answer(&line.as_bytes()[..n], &Stats::default(), true),
                None,
                "{n}"
            );
        }
        assert_eq!(ask(&line[..MAX_HEAD]).0, 431);
        assert_eq!(ask(&line).0, 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(ask(&format!("GET /metrics HTTP/1.1\r\n{many}\r\n")).0, 431);
        // Exactly MAX_HEAD bytes of a whole head is fine.
        let pad = MAX_HEAD - "GET /healthz HTTP/1.1\r\nX: \r\n\r\n".len();
        let full = format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "p".repeat(pad));
        assert_eq!(full.len(), MAX_HEAD);
        assert_eq!(ask(&full).0, 200);
    }

    proptest! {
        /// Whatever arrives, in whatever pieces: the answer is a well-formed
        /// response whose Content-Length is its body's, it comes by
        /// MAX_HEAD bytes at the latest, and more bytes after it never
        /// change it (the loop answers at the first complete head).
        #[test]
        fn any_bytes_get_one_well_formed_answer(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                "(GET|HEAD|POST) /(metrics|healthz|readyz|x)?(\\?[a-z=&]{0,8})? HTTP/1\\.[01]\r\n([A-Za-z-]{1,8}: [ -~]{0,12}\r\n){0,4}\r?\n?.{0,8}"
                    .prop_map(String::into_bytes),
            ],
            ready in any::<bool>(),
        ) {
            let stats = Stats::default();
            let whole = answer(&bytes, &stats, ready);
            let first = (0..=bytes.len()).find_map(|n| answer(&bytes[..n], &stats, ready));
            prop_assert_eq!(&first, &whole);
            let Some(a) = whole else {
                prop_assert!(bytes.len() < MAX_HEAD);
                return Ok(());
            };
            let text = String::from_utf8(a.bytes).expect("answers are text");
            prop_assert!(text.starts_with(&format!("HTTP/1.1 {} ", a.status)), "{}", text);
            let (_, body) = text.split_once("\r\n\r\n").expect("a head");
            let length: usize = header(&text, "Content-Length").expect("a length").parse().unwrap();
            prop_assert!(body.is_empty() || body.len() == length, "{}", text);
            prop_assert_eq!(header(&text, "Connection"), Some("close"));
        }
    }

    /// /metrics as it was written out by hand, before the counter table
    /// generated it: dashboards and alerts name these, so it stays this,
    /// byte for byte.
    #[test]
    fn the_metrics_are_what_they_always_were() {
        let expected = "\
# HELP echo_server_connections_accepted_total Stream connections accepted.
# TYPE echo_server_connections_accepted_total counter
echo_server_connections_accepted_total 1
# HELP echo_server_connections_closed_total Stream connections closed, by either side.
# TYPE echo_server_connections_closed_total counter
echo_server_connections_closed_total 2
# HELP echo_server_active_connections Stream connections being served, by engine.
# TYPE echo_server_active_connections gauge
echo_server_active_connections{engine=\"threads\"} 4
echo_server_active_connections{engine=\"events\"} 5
echo_server_active_connections{engine=\"uring\"} 25
# HELP echo_server_bytes_received_total Bytes read from stream clients.
# TYPE echo_server_bytes_received_total counter
echo_server_bytes_received_total 6
# HELP echo_server_bytes_echoed_total Bytes written back to clients, every transport.
# TYPE echo_server_bytes_echoed_total counter
echo_server_bytes_echoed_total 7
# HELP echo_server_datagrams_echoed_total UDP datagrams answered.
# TYPE echo_server_datagrams_echoed_total counter
echo_server_datagrams_echoed_total 17
# HELP echo_server_closed_early_total Connections the server closed before the client was done, by reason.
# TYPE echo_server_closed_early_total counter
echo_server_closed_early_total{reason=\"idle_timeout\"} 8
echo_server_closed_early_total{reason=\"write_timeout\"} 9
echo_server_closed_early_total{reason=\"reclaimed\"} 10
echo_server_closed_early_total{reason=\"keepalive\"} 11
# HELP echo_server_refused_total Connections and datagrams refused, by reason.
# TYPE echo_server_refused_total counter
echo_server_refused_total{reason=\"per_source_cap\"} 13
echo_server_refused_total{reason=\"no_thread\"} 14
echo_server_refused_total{reason=\"proxy_header\"} 24
echo_server_refused_total{reason=\"tls_handshake\"} 27
echo_server_refused_total{reason=\"tls_handshake_timeout\"} 28
echo_server_refused_total{reason=\"no_file_descriptor\"} 15
echo_server_refused_total{reason=\"accept_error\"} 16
echo_server_refused_total{reason=\"privileged_port\"} 18
echo_server_refused_total{reason=\"invalid_source\"} 19
echo_server_refused_total{reason=\"rate_limited\"} 20
echo_server_refused_total{reason=\"total_rate_limited\"} 21
echo_server_refused_total{reason=\"too_large\"} 22
# HELP echo_server_connection_limit_reached_total Times the accept loops waited at the connection limit.
# TYPE echo_server_connection_limit_reached_total counter
echo_server_connection_limit_reached_total 12
# HELP echo_server_udp_kernel_drops_total UDP datagrams the kernel dropped for want of receive buffer.
# TYPE echo_server_udp_kernel_drops_total counter
echo_server_udp_kernel_drops_total 23
";
        assert_eq!(render(&crate::stats::tests::every_counter()), expected);
    }

    #[test]
    fn every_sample_line_is_well_formed_and_named_by_convention() {
        let text = render(&Stats {
            accepted: 7,
            active_events: 2,
            rate_limited: 3,
            udp_total_rate_limited: 4,
            ..Stats::default()
        });
        assert!(text.contains("echo_server_connections_accepted_total 7\n"));
        assert!(text.contains("echo_server_active_connections{engine=\"events\"} 2\n"));
        assert!(text.contains("echo_server_refused_total{reason=\"rate_limited\"} 3\n"));
        assert!(text.contains("echo_server_refused_total{reason=\"total_rate_limited\"} 4\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("echo_server_"), "{line}");
            assert!(value.parse::<u64>().is_ok(), "{line}");
            let base = name.split('{').next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "no TYPE for {line}"
            );
            if text.contains(&format!("# TYPE {base} counter")) {
                assert!(base.ends_with("_total"), "a counter ends in _total: {line}");
            }
        }
    }

    const DEADLINE: Duration = Duration::from_secs(30);

    /// A handle for the counters: a server that never runs.
    fn handle() -> ServerHandle {
        crate::Server::builder()
            .tcp(([127, 0, 0, 1], 0))
            .build()
            .expect("a server")
            .handle()
    }

    /// A connection over loopback to `listener`: the endpoint's side (non-
    /// blocking, as accepted), its peer address, and the client.
    fn connection(
        listener: &std::net::TcpListener,
    ) -> (TcpStream, SocketAddr, std::net::TcpStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        client.set_write_timeout(Some(DEADLINE)).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (TcpStream::from_std(server), peer, client)
    }

    fn conn(phase: Phase) -> (Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (stream, peer, client) = connection(&listener);
        let deadline = Instant::now() + TIMEOUT;
        let conn = Conn {
            stream,
            peer,
            number: 1,
            deadline,
            phase,
        };
        (conn, client)
    }

    /// `conn.advance()`: whether the connection stays open. Fails the test
    /// rather than hang if it never returns.
    fn advance(conn: Conn, handle: &ServerHandle) -> (Conn, bool) {
        let handle = handle.clone();
        let (done, result) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut conn = conn;
            let open = conn.advance(&handle);
            let _ = done.send((conn, open));
        });
        result
            .recv_timeout(Duration::from_secs(10))
            .expect("advance never returned: a busy loop")
    }

    /// Advances `conn` until `done` says so (or it closes, which fails).
    fn advance_until(
        mut conn: Conn,
        handle: &ServerHandle,
        what: &str,
        done: impl Fn(&Phase) -> bool,
    ) -> Conn {
        let start = Instant::now();
        loop {
            let (c, open) = advance(conn, handle);
            assert!(open, "closed before {what}");
            conn = c;
            if done(&conn.phase) {
                return conn;
            }
            assert!(start.elapsed() < DEADLINE, "never {what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// After its answer a connection lingers for LINGER (a second), taking
    /// and discarding up to 64 KiB of whatever the client still sends, and
    /// closes beyond.
    #[test]
    fn after_the_answer_a_connection_lingers_discarding_up_to_64_kib() {
        let handle = handle();
        let (conn, mut client) = conn(Phase::Reading(Vec::new()));
        client.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        let conn = advance_until(conn, &handle, "answered", |p| {
            matches!(p, Phase::Lingering(_))
        });
        let now = Instant::now();
        assert!(
            conn.deadline > now && conn.deadline <= now + LINGER,
            "lingers until {:?} from {now:?}",
            conn.deadline
        );
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer:?}");
        // 64 KiB more are taken, the connection still open.
        let limit = 64 * 1024;
        client.write_all(&vec![b'x'; limit]).unwrap();
        let conn = advance_until(
            conn,
            &handle,
            "64 KiB discarded",
            |p| matches!(p, Phase::Lingering(n) if *n == limit),
        );
        // A byte beyond closes it.
        client.write_all(b"x").unwrap();
        let start = Instant::now();
        let mut conn = conn;
        loop {
            let (c, open) = advance(conn, &handle);
            if !open {
                break;
            }
            conn = c;
            assert!(start.elapsed() < DEADLINE, "open beyond 64 KiB");
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// An answer bigger than the socket takes at once is written as the
    /// client takes it, the connection open meanwhile, then the writing side
    /// is shut down.
    #[test]
    fn an_answer_is_written_as_the_client_takes_it() {
        let handle = handle();
        let big: Vec<u8> = (0..16 << 20).map(|i: u32| i as u8).collect();
        let (conn, mut client) = conn(Phase::Writing(big.clone(), 0));
        let (conn, open) = advance(conn, &handle);
        assert!(open, "closed when the socket was full");
        assert!(
            matches!(conn.phase, Phase::Writing(_, n) if n < big.len()),
            "16 MiB written at once to a client that does not read"
        );
        // The client stays open once it has read all (until the end of the
        // test): closing would end the lingering, and the test, at once.
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).map(|_| (got, client))
        });
        let conn = advance_until(conn, &handle, "written", |p| {
            matches!(p, Phase::Lingering(_))
        });
        let (got, client) = reader.join().unwrap().unwrap();
        assert!(got == big, "other bytes");
        drop((conn, client));
    }

    fn endpoint(handle: ServerHandle) -> Endpoint {
        let listener = TcpListener::bind(([127, 0, 0, 1], 0).into()).unwrap();
        Endpoint::new(Poll::new().unwrap(), listener, handle)
    }

    /// A full endpoint closes the connection accepted first, whichever slot
    /// it is in (here not the first slot: a newer connection took that one).
    #[test]
    fn a_full_endpoint_closes_the_oldest_whatever_its_slot() {
        let mut endpoint = endpoint(handle());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut clients = Vec::new();
        let mut admit = |endpoint: &mut Endpoint| {
            let (stream, peer, client) = connection(&listener);
            clients.push(client);
            endpoint.admit(stream, peer, Instant::now());
            peer
        };
        let peer = |e: &Endpoint, slot: usize| e.slots[slot].as_ref().map(|c| c.peer);
        let first = admit(&mut endpoint);
        let second = admit(&mut endpoint);
        for _ in 2..MAX_CONNECTIONS {
            admit(&mut endpoint);
        }
        assert_eq!(peer(&endpoint, 0), Some(first));
        endpoint.close(0);
        let third = admit(&mut endpoint);
        assert_eq!(peer(&endpoint, 0), Some(third));
        assert_eq!(peer(&endpoint, 1), Some(second));
        // Full: `second` is the oldest now.
        let newest = admit(&mut endpoint);
        assert_eq!(peer(&endpoint, 1), Some(newest), "the oldest kept its slot");
        assert_eq!(peer(&endpoint, 0), Some(third), "a newer one was closed");
    }

    /// A round of accepting takes what waits, up to MAX_CONNECTIONS, and
    /// says whether more may still wait: after an empty backlog, no.
    #[test]
    fn a_round_of_accepting_takes_up_to_a_full_house_and_says_if_more_wait() {
        let mut endpoint = endpoint(handle());
        let at = endpoint.listener.local_addr().unwrap();
        let now = Instant::now();
        assert!(
            !endpoint.accept_some(now),
            "more waiting in an empty backlog"
        );
        let clients: Vec<_> = (0..MAX_CONNECTIONS + 2)
            .map(|_| std::net::TcpStream::connect(at).unwrap())
            .collect();
        let all = clients.len() as u64;
        let start = Instant::now();
        while endpoint.accepted < all {
            let before = endpoint.accepted;
            if endpoint.accept_some(now) {
                let took = endpoint.accepted - before;
                assert_eq!(took, MAX_CONNECTIONS as u64, "more waiting after {took}");
            }
            assert!(start.elapsed() < DEADLINE, "never all accepted");
            thread::sleep(Duration::from_millis(2));
        }
        assert!(!endpoint.accept_some(now), "more waiting once all are in");
    }

    /// An empty backlog ends a round of accepting, a client that gave up is
    /// skipped, and running out of descriptors pauses accepting for a
    /// growing while, with one warning for the run of failures.
    #[test]
    fn accept_errors_pause_accepting_for_a_growing_while_warned_once() {
        let warned = || {
            crate::fault::tests::warnings_starting("metrics endpoint: out of file descriptors")
                .len()
        };
        let before = warned();
        let mut endpoint = endpoint(handle());
        let now = Instant::now();
        assert!(endpoint.may_accept(now));
        let empty = io::Error::from(ErrorKind::WouldBlock);
        assert!(!endpoint.accept_failed(&empty, now), "accepted on");
        assert_eq!(endpoint.accept_paused_until, None);
        let gave_up = io::Error::from(ErrorKind::ConnectionAborted);
        assert!(endpoint.accept_failed(&gave_up, now), "stopped accepting");
        assert_eq!(endpoint.accept_paused_until, None);
        assert_eq!(warned(), before);
        let out = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(!endpoint.accept_failed(&out, now), "accepted on");
        assert_eq!(endpoint.accept_paused_until, Some(now + Backoff::FIRST));
        assert_eq!(warned(), before + 1);
        assert!(!endpoint.may_accept(now), "accepting during the pause");
        assert!(endpoint.may_accept(now + Backoff::FIRST), "still paused");
        assert_eq!(endpoint.accept_paused_until, None);
        assert!(!endpoint.accept_failed(&out, now), "accepted on");
        assert_eq!(endpoint.accept_paused_until, Some(now + 2 * Backoff::FIRST));
        assert_eq!(warned(), before + 1, "warned again in the same run");
    }

    /// The loop does not wait for events while clients may still wait in
    /// the backlog; otherwise it waits until the next deadline, if any.
    #[test]
    fn the_loop_waits_until_the_next_deadline_or_not_at_all() {
        let later = Instant::now() + Duration::from_secs(3);
        assert_eq!(poll_timeout(true, None), Some(Duration::ZERO));
        assert_eq!(poll_timeout(true, Some(later)), Some(Duration::ZERO));
        assert_eq!(poll_timeout(false, None), None);
        let wait = poll_timeout(false, Some(later)).unwrap();
        assert!(
            wait > Duration::from_secs(2) && wait <= Duration::from_millis(3001),
            "{wait:?}"
        );
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(
            poll_timeout(false, Some(past)),
            Some(Duration::from_millis(1))
        );
    }
}
