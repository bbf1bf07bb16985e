//! A live TCP server, end to end: real servers on 127.0.0.1 (one per engine,
//! started once per process and shared by every input) driven by a script of
//! client actions over up to four concurrent connections.
//!
//! Input: `[engine][action]*`. The engine byte picks threads, events, uring
//! (io_uring loops), or auto with one thread connection (`% 4`). Each action byte names a connection
//! slot (high nibble `% 4`) and an action (low nibble `% 13`), followed by its
//! argument bytes (missing ones read as 0):
//!
//! | op | action | arguments |
//! |---|---|---|
//! | 0 | connect (if the slot is empty) | |
//! | 1 | send a chunk | length: 2 bytes LE, `% 4097` |
//! | 2 | send a small chunk | length: `1 + b % 64` |
//! | 3 | round trip: send a small chunk, read the whole echo so far | length: `1 + b % 64` |
//! | 4 | pause | `b × 20 µs` (≤ 5 ms; ≤ 20 ms per input) |
//! | 5 | read part of the echo so far | `1 + b × 16` bytes, at most what is due |
//! | 6 | read the whole echo so far | |
//! | 7 | half-close: shut down writing, read the rest to end of file | |
//! | 8 | reset: `SO_LINGER` 0, close | |
//! | 9 | reconnect: close (no draining), connect anew | |
//! | 10 | send a large chunk | length: 2 bytes LE, `% 16385` |
//! | 11 | close without draining (the slot stays empty) | |
//! | 12 | send a small chunk whose middle byte is urgent (`MSG_OOB`) | length: `1 + b % 64` |
//!
//! Sending on an empty slot connects first; other actions on an empty slot do
//! nothing. The bytes sent are a pattern keyed by the connection and the
//! offset, so a byte echoed out of order or onto another connection shows.
//! At the end, every connection still open is half-closed and drained.
//!
//! Properties: every byte each connection reads is the echo of its own
//! stream, in order, and a half-closed connection gets exactly all of it
//! before end of file, whatever the other connections did (resets, closes
//! with echo unread, half-closes); while connections are open, the per-engine
//! gauges stay within the engine's placement (events: no thread; threads: no
//! event loop; auto: at most one thread) and `active` covers every
//! connection known to be served; once the counters settle after the
//! script, `active` and both gauges are back to 0, `accepted` and `closed`
//! each grew by the number of connects, no timeout, reclaim, refusal or
//! accept error was counted, and the byte counters agree with what the
//! clients sent and read (exactly, when every connection read its whole echo
//! before it ended). Every socket operation has a 2 s timeout and the
//! counters 5 s to settle; a hang fails with a message saying what waited.
#![no_main]

#[path = "../support/live_server.rs"]
#[macro_use]
mod live_server;

use echo_server::{Engine, Server, ServerHandle, Stats};
use libfuzzer_sys::fuzz_target;
use live_server::{serve_forever, Script, IO_TIMEOUT, SETTLE_TIMEOUT, SLOTS};
use socket2::SockRef;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Echo a client leaves unread before it sends more: well within what the
/// loopback socket buffers hold, so neither side's writes ever block for
/// long and nothing deadlocks.
const MAX_UNREAD: u64 = 32 << 10;

struct Target {
    name: &'static str,
    engine: Engine,
    addr: SocketAddr,
    handle: ServerHandle,
}

fn start(name: &'static str, engine: Engine) -> Target {
    let server = Server::builder()
        .tcp(([127, 0, 0, 1], 0))
        .engine(engine)
        .event_loops(2)
        .thread_connections(1)
        .build()
        .unwrap_or_else(|e| panic!("{name}: cannot start the server: {e}"));
    let addr = server.local_addr().expect("a TCP listener");
    let handle = serve_forever(name, server);
    Target {
        name,
        engine,
        addr,
        handle,
    }
}

fn targets() -> &'static [Target; 4] {
    static TARGETS: OnceLock<[Target; 4]> = OnceLock::new();
    TARGETS.get_or_init(|| {
        [
            start("threads", Engine::Threads),
            start("events", Engine::Events),
            start("uring", Engine::Uring),
            start("auto", Engine::Auto),
        ]
    })
}

/// Byte `offset` of connection `conn`'s stream.
fn pattern(conn: u64, offset: u64) -> u8 {
    live_server::pattern(conn.wrapping_mul(0x9E37_79B9_7F4A_7C15), offset)
}

struct Conn {
    stream: TcpStream,
    /// Its number among this input's connections (keys its bytes).
    id: u64,
    sent: u64,
    read: u64,
}

struct Run {
    target: &'static Target,
    slots: [Option<Conn>; SLOTS],
    connects: u64,
    sent: u64,
    read: u64,
    /// Some connection ended before reading its whole echo (so the server
    /// may have received or echoed less than was sent).
    unread_at_close: bool,
    step: usize,
    buf: Vec<u8>,
}

impl Run {
    fn at(&self) -> String {
        format!("engine {}, action {}", self.target.name, self.step)
    }

    fn connect(&mut self, slot: usize) {
        if self.slots[slot].is_some() {
            return;
        }
        let addr = self.target.addr;
        let id = self.connects;
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: connection #{id} to {addr}: {e}", self.at()));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        self.connects += 1;
        self.slots[slot] = Some(Conn {
            stream,
            id,
            sent: 0,
            read: 0,
        });
    }

    fn send(&mut self, slot: usize, len: usize) {
        self.connect(slot);
        let c = self.slots[slot].as_ref().unwrap();
        let unread = c.sent - c.read + len as u64;
        if unread > MAX_UNREAD {
            self.read_echo(slot, unread - MAX_UNREAD);
        }
        let at = self.at();
        let c = self.slots[slot].as_mut().unwrap();
        let chunk: Vec<u8> = (c.sent..c.sent + len as u64)
            .map(|o| pattern(c.id, o))
            .collect();
        if let Err(e) = c.stream.write_all(&chunk) {
            panic!(
                "{at}: connection #{} could not send {len} more bytes after {} sent and {} \
                 read back: {e} ({:?})",
                c.id,
                c.sent,
                c.read,
                e.kind()
            );
        }
        c.sent += len as u64;
        self.sent += len as u64;
    }

    /// Sends `len` bytes with the middle one as urgent data: the server
    /// keeps it inline (`SO_OOBINLINE`), so it is echoed in its place, and
    /// a read that stops at the urgent mark must not stall the rest.
    fn send_urgent(&mut self, slot: usize, len: usize) {
        let before = len / 2;
        self.send(slot, before);
        let at = self.at();
        let c = self.slots[slot].as_mut().unwrap();
        let urgent = [pattern(c.id, c.sent)];
        match SockRef::from(&c.stream).send_out_of_band(&urgent) {
            Ok(1) => {}
            other => panic!(
                "{at}: connection #{}: urgent byte not sent: {other:?}",
                c.id
            ),
        }
        c.sent += 1;
        self.sent += 1;
        self.send(slot, len - before - 1);
    }

    /// Reads `n` bytes of echo (`n` at most what is due), checking each.
    fn read_echo(&mut self, slot: usize, n: u64) {
        let at = self.at();
        let Some(c) = self.slots[slot].as_mut() else {
            return;
        };
        assert!(c.read + n <= c.sent);
        let end = c.read + n;
        while c.read < end {
            let want = (end - c.read).min(self.buf.len() as u64) as usize;
            match c.stream.read(&mut self.buf[..want]) {
                Ok(0) => panic!(
                    "{at}: the server closed connection #{} after echoing {} of the {} bytes \
                     sent",
                    c.id, c.read, c.sent
                ),
                Ok(k) => {
                    check(&at, c, &self.buf[..k]);
                    c.read += k as u64;
                    self.read += k as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!(
                    "{at}: connection #{} got {} of the {} bytes sent back, then waiting for \
                     more failed: {e} ({:?}{})",
                    c.id,
                    c.read,
                    c.sent,
                    e.kind(),
                    timed_out(&e)
                ),
            }
        }
    }

    fn read_all(&mut self, slot: usize) {
        if let Some(c) = &self.slots[slot] {
            self.read_echo(slot, c.sent - c.read);
        }
    }

    /// Shuts down writing and reads the rest of the echo, then end of file.
    fn half_close(&mut self, slot: usize) {
        let at = self.at();
        let Some(mut c) = self.slots[slot].take() else {
            return;
        };
        if let Err(e) = c.stream.shutdown(Shutdown::Write) {
            panic!("{at}: half-closing connection #{}: {e}", c.id);
        }
        loop {
            match c.stream.read(&mut self.buf) {
                Ok(0) => break,
                Ok(k) => {
                    if c.read + k as u64 > c.sent {
                        panic!(
                            "{at}: connection #{} got {} bytes back but sent only {}",
                            c.id,
                            c.read + k as u64,
                            c.sent
                        );
                    }
                    check(&at, &c, &self.buf[..k]);
                    c.read += k as u64;
                    self.read += k as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!(
                    "{at}: half-closed connection #{} got {} of the {} bytes sent back, then \
                     waiting for the rest or end of file failed: {e} ({:?}{})",
                    c.id,
                    c.read,
                    c.sent,
                    e.kind(),
                    timed_out(&e)
                ),
            }
        }
        if c.read != c.sent {
            panic!(
                "{at}: half-closed connection #{} reached end of file after {} of the {} bytes \
                 sent",
                c.id, c.read, c.sent
            );
        }
    }

    fn reset(&mut self, slot: usize) {
        if let Some(c) = self.slots[slot].take() {
            SockRef::from(&c.stream)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER");
            self.unread_at_close |= c.read != c.sent;
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(c) = self.slots[slot].take() {
            self.unread_at_close |= c.read != c.sent;
        }
    }

    /// What must hold at any time while the script runs.
    fn invariants(&self, before: &Stats) {
        let s = self.target.handle.stats();
        match self.target.engine {
            Engine::Events => assert_eq!(
                (s.active_threads, s.active_uring),
                (0, 0),
                "{}: a connection on a thread or io_uring under the events engine: {s:?}",
                self.at()
            ),
            Engine::Uring => assert_eq!(
                (s.active_threads, s.active_events),
                (0, 0),
                "{}: a connection on a thread or event loop under the uring engine: {s:?}",
                self.at()
            ),
            Engine::Threads => assert_eq!(
                s.active_events,
                0,
                "{}: a connection on an event loop under the threads engine: {s:?}",
                self.at()
            ),
            _ => assert!(
                s.active_threads <= 1,
                "{}: more than the one thread connection allowed: {s:?}",
                self.at()
            ),
        }
        // A connection that got echo back and is still open is being served.
        let served = self.slots.iter().flatten().filter(|c| c.read > 0).count() as u64;
        assert!(
            s.active >= before.active + served,
            "{}: {served} connections are being echoed but only {} are active: {s:?}",
            self.at(),
            s.active - before.active
        );
    }
}

/// Checks bytes just read on `c` against its stream.
fn check(at: &str, c: &Conn, got: &[u8]) {
    for (i, &b) in got.iter().enumerate() {
        let offset = c.read + i as u64;
        let want = pattern(c.id, offset);
        if b != want {
            panic!(
                "{at}: connection #{} got byte {b:#04x} at offset {offset} of its echo, but sent \
                 {want:#04x} there ({} bytes sent)",
                c.id, c.sent
            );
        }
    }
}

fn timed_out(e: &std::io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ", no data for 2 s",
        _ => "",
    }
}

/// Waits until the counters settle after the script and checks them.
fn settle(run: &Run, before: &Stats) {
    let name = run.target.name;
    let n = run.connects;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let s = loop {
        let s = run.target.handle.stats();
        let (accepted, closed) = (s.accepted - before.accepted, s.closed - before.closed);
        assert!(
            accepted <= n && closed <= n,
            "{name}: {n} connections made, but the server counted {accepted} accepted and \
             {closed} closed: before {before:?}, after {s:?}"
        );
        if accepted == n
            && closed == n
            && s.active == before.active
            && s.active_threads == 0
            && s.active_events == 0
            && s.active_uring == 0
        {
            break s;
        }
        if Instant::now() > deadline {
            panic!(
                "{name}: the counters did not settle within {SETTLE_TIMEOUT:?} after {n} \
                 connections, all closed: {accepted} accepted, {closed} closed; before \
                 {before:?}, now {s:?}"
            );
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    assert_unchanged!(
        name,
        before,
        s,
        [
            idle_timeouts,
            write_timeouts,
            reclaimed,
            keepalive_closed,
            limit_reached,
            refused_per_source,
            thread_refused,
            fd_exhausted,
            accept_errors,
            datagrams_echoed
        ]
    );
    let received = s.bytes_received - before.bytes_received;
    let echoed = s.bytes_echoed - before.bytes_echoed;
    let (sent, read) = (run.sent, run.read);
    if run.unread_at_close {
        assert!(
            read <= echoed && echoed <= received && received <= sent,
            "{name}: clients sent {sent} bytes and read {read} back, but the server counted \
             {received} received and {echoed} echoed"
        );
    } else {
        assert!(
            received == sent && echoed == sent,
            "{name}: every connection got all of its {sent} bytes back, but the server counted \
             {received} received and {echoed} echoed"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&engine, script)) = data.split_first() else {
        return;
    };
    let target = &targets()[usize::from(engine % 4)];
    let before = target.handle.stats();
    assert_eq!(
        before.active, 0,
        "{}: connections left from an earlier input: {before:?}",
        target.name
    );
    let mut run = Run {
        target,
        slots: Default::default(),
        connects: 0,
        sent: 0,
        read: 0,
        unread_at_close: false,
        step: 0,
        buf: vec![0; 16 << 10],
    };
    let mut script = Script::new(script);
    while let Some(action) = script.next_action(13) {
        run.step = action.index;
        let slot = action.slot;
        match action.op {
            0 => run.connect(slot),
            1 => {
                let len = script.u16();
                run.send(slot, usize::from(len) % 4097);
            }
            2 => run.send(slot, 1 + usize::from(script.byte() % 64)),
            3 => {
                run.send(slot, 1 + usize::from(script.byte() % 64));
                run.read_all(slot);
            }
            4 => {
                let units = script.byte();
                script.pause(units);
            }
            5 => {
                let n = 1 + u64::from(script.byte()) * 16;
                if let Some(c) = &run.slots[slot] {
                    run.read_echo(slot, n.min(c.sent - c.read));
                }
            }
            6 => run.read_all(slot),
            7 => run.half_close(slot),
            8 => run.reset(slot),
            9 => {
                run.close(slot);
                run.connect(slot);
            }
            10 => {
                let len = script.u16();
                run.send(slot, usize::from(len) % 16385);
            }
            11 => run.close(slot),
            _ => run.send_urgent(slot, 1 + usize::from(script.byte() % 64)),
        }
        run.invariants(&before);
    }
    for slot in 0..SLOTS {
        run.half_close(slot);
    }
    settle(&run, &before);
});
