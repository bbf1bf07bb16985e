//! A live UDP server, end to end: two real servers on 127.0.0.1 (started once
//! per process, shared by every input; no rate limit, the source filter on)
//! driven by a script of datagrams from up to four client sockets.
//!
//! Input: `[server][action]*`. The server byte picks (`% 2`) the one that
//! answers datagrams up to the largest size (two receive threads,
//! `SO_REUSEPORT`) or one with `udp_max_datagram(1000)` (one thread), which
//! must drop anything longer whole. Each action byte names a client slot
//! (high nibble `% 4`) and an action (low nibble `% 10`), followed by its
//! argument bytes (missing ones read as 0):
//!
//! | op | action | arguments |
//! |---|---|---|
//! | 0 | send an empty datagram | |
//! | 1 | send a small datagram | length: `1 + b % 64` |
//! | 2 | send a datagram of up to 4 KiB | length: 2 bytes LE, `% 4097` |
//! | 3 | send a large datagram | length: 2 bytes LE, `4097 + n % 61411` (up to 65,507) |
//! | 4 | send a datagram near the IPv4 maximum | length: `65507 - b` |
//! | 5 | receive one reply, if one is due | |
//! | 6 | receive every reply due | |
//! | 7 | pause | `b × 20 µs` (≤ 5 ms; ≤ 20 ms per input) |
//! | 8 | new socket: receive every reply due, then send from a new port | |
//! | 9 | burst: several small datagrams at once | count `1 + b % 32`, length `b % 64` |
//!
//! A datagram's bytes are a pattern keyed by its client and number, so a
//! reply carrying another datagram's bytes shows. Sending binds the slot's
//! socket first if needed. Unanswered datagrams are bounded by a fraction of
//! the socket receive buffer the OS grants (replies waiting to be read are
//! received first), so loopback never drops one; at the end every reply due
//! is received.
//!
//! Properties: every datagram the server should answer is answered exactly
//! once, from the server's address, with its own bytes (replies may come in
//! any order; none is left over when the counters have settled), and none
//! longer than the maximum is; once settled, `datagrams_echoed` grew by the
//! number answered, `bytes_echoed` by their bytes, `too_large` by the number
//! too long, and no datagram was refused, rate limited or dropped by the
//! kernel. Every receive has a 2 s timeout and the counters 5 s to settle.
#![no_main]

#[path = "../support/live_server.rs"]
#[macro_use]
mod live_server;

use echo_server::{Server, ServerHandle, Stats};
use libfuzzer_sys::fuzz_target;
use live_server::{serve_forever, Script, IO_TIMEOUT, SETTLE_TIMEOUT, SLOTS};
use socket2::SockRef;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const IPV4_MAX: usize = 65_507;
const CAPPED_MAX: usize = 1000;
/// Socket buffer size asked for on client sockets (the OS may grant less).
const CLIENT_BUFFER: usize = 4 << 20;

struct Target {
    name: &'static str,
    addr: SocketAddr,
    handle: ServerHandle,
    max_datagram: usize,
}

fn start(name: &'static str, max_datagram: usize, threads: usize) -> Target {
    let server = Server::builder()
        .udp(([127, 0, 0, 1], 0))
        .udp_rate_limit(None)
        .udp_total_rate_limit(None)
        .udp_source_filter(true)
        .udp_max_datagram(max_datagram)
        .udp_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("{name}: cannot start the server: {e}"));
    let addr = match server.listen_addrs().next() {
        Some(echo_server::ListenAddr::Udp(addr)) => *addr,
        other => panic!("{name}: not a UDP address: {other:?}"),
    };
    let handle = serve_forever(name, server);
    Target {
        name,
        addr,
        handle,
        max_datagram,
    }
}

struct Setup {
    targets: [Target; 2],
    /// Bytes of unanswered datagrams (as the kernel charges them) allowed
    /// at once: a quarter of the smallest receive buffer involved.
    budget: usize,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        // The server asks for more than this, so gets at least what a
        // client socket is granted; Linux reports twice the size asked for,
        // which is the limit it charges against.
        let probe = client_socket();
        let granted = SockRef::from(&probe).recv_buffer_size().unwrap();
        Setup {
            targets: [
                start("full", echo_server::udp::MAX_DATAGRAM, 2),
                start("capped", CAPPED_MAX, 1),
            ],
            budget: granted / 4,
        }
    })
}

fn client_socket() -> UdpSocket {
    let socket = UdpSocket::bind(("127.0.0.1", 0)).expect("a client socket");
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let s = SockRef::from(&socket);
    let _ = s.set_recv_buffer_size(CLIENT_BUFFER);
    let _ = s.set_send_buffer_size(CLIENT_BUFFER);
    socket
}

/// What the kernel charges a queued datagram of `len` bytes, generously.
fn cost(len: usize) -> usize {
    (len + 1024).next_power_of_two() + 1024
}

/// Byte `offset` of datagram `seq` of client `client`.
fn pattern(client: u64, seq: u64, offset: usize) -> u8 {
    let key = client.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    live_server::pattern(key, offset as u64)
}

struct Client {
    socket: UdpSocket,
    id: u64,
    seq: u64,
    /// Datagrams sent and not answered yet.
    due: Vec<Vec<u8>>,
}

struct Run {
    target: &'static Target,
    budget: usize,
    clients: [Option<Client>; SLOTS],
    made: u64,
    /// Cost of the datagrams in flight: unanswered, or too long and not yet
    /// counted as dropped.
    in_flight: usize,
    answered: u64,
    answered_bytes: u64,
    too_long: u64,
    before: Stats,
    step: usize,
    buf: Vec<u8>,
}

impl Run {
    fn at(&self) -> String {
        format!("server {}, action {}", self.target.name, self.step)
    }

    fn client(&mut self, slot: usize) -> &mut Client {
        if self.clients[slot].is_none() {
            self.clients[slot] = Some(Client {
                socket: client_socket(),
                id: self.made,
                seq: 0,
                due: Vec::new(),
            });
            self.made += 1;
        }
        self.clients[slot].as_mut().unwrap()
    }

    fn send(&mut self, slot: usize, len: usize) {
        let c = cost(len);
        if self.in_flight > 0 && self.in_flight + c > self.budget {
            self.drain_everything();
        }
        self.in_flight += c;
        let (addr, max) = (self.target.addr, self.target.max_datagram);
        let at = self.at();
        let client = self.client(slot);
        let datagram: Vec<u8> = (0..len)
            .map(|i| pattern(client.id, client.seq, i))
            .collect();
        client.seq += 1;
        match client.socket.send_to(&datagram, addr) {
            Ok(n) if n == len => {}
            Ok(n) => panic!("{at}: sent {n} of a {len}-byte datagram"),
            Err(e) => panic!("{at}: client #{} sending {len} bytes: {e}", client.id),
        }
        if len > max {
            self.too_long += 1;
        } else {
            client.due.push(datagram);
        }
    }

    /// Receives one reply on `slot`, if one is due.
    fn recv(&mut self, slot: usize) {
        let at = self.at();
        let Some(client) = self.clients[slot].as_mut() else {
            return;
        };
        if client.due.is_empty() {
            return;
        }
        let (n, from) = match client.socket.recv_from(&mut self.buf) {
            Ok(r) => r,
            Err(e) => {
                let sizes: Vec<usize> = client.due.iter().map(Vec::len).collect();
                panic!(
                    "{at}: client #{} waited for replies to {} datagrams (bytes {sizes:?}): \
                     {e} ({:?}{}); server counters before the input {:?}, now {:?}",
                    client.id,
                    sizes.len(),
                    e.kind(),
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                        ", nothing for 2 s"
                    } else {
                        ""
                    },
                    self.before,
                    self.target.handle.stats()
                );
            }
        };
        let reply = &self.buf[..n];
        assert_eq!(
            from, self.target.addr,
            "{at}: client #{} got a {n}-byte reply from {from}, not the server",
            client.id
        );
        let Some(i) = client.due.iter().position(|d| d == reply) else {
            let sizes: Vec<usize> = client.due.iter().map(Vec::len).collect();
            panic!(
                "{at}: client #{} got a {n}-byte reply that is none of the datagrams it is owed \
                 (bytes {sizes:?})",
                client.id
            );
        };
        client.due.swap_remove(i);
        self.in_flight -= cost(n);
        self.answered += 1;
        self.answered_bytes += n as u64;
    }

    fn drain(&mut self, slot: usize) {
        while self.clients[slot]
            .as_ref()
            .is_some_and(|c| !c.due.is_empty())
        {
            self.recv(slot);
        }
    }

    /// Receives every reply due and waits until every datagram too long is
    /// counted as dropped: nothing is in flight after.
    fn drain_everything(&mut self) {
        for slot in 0..SLOTS {
            self.drain(slot);
        }
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let s = self.target.handle.stats();
            let dropped = s.too_large - self.before.too_large;
            assert!(
                dropped <= self.too_long,
                "{}: {} datagrams were too long, but {dropped} were counted as dropped: {s:?}",
                self.at(),
                self.too_long
            );
            if dropped == self.too_long {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: {} datagrams were too long, but only {dropped} were counted as dropped \
                     after {SETTLE_TIMEOUT:?}: before {:?}, now {s:?}",
                    self.at(),
                    self.too_long,
                    self.before
                );
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        self.in_flight = 0;
    }
}

fn settle(run: &mut Run) {
    run.drain_everything();
    let (name, before) = (run.target.name, run.before);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let s = loop {
        let s = run.target.handle.stats();
        let echoed = s.datagrams_echoed - before.datagrams_echoed;
        assert!(
            echoed <= run.answered,
            "{name}: {} datagrams answered, but the server counted {echoed}: before {before:?}, \
             after {s:?}",
            run.answered
        );
        // The two counters are added one after the other, after the
        // replies are sent: a client can see its reply before either.
        let bytes = s.bytes_echoed - before.bytes_echoed;
        if echoed == run.answered && bytes == run.answered_bytes {
            break s;
        }
        if Instant::now() > deadline {
            panic!(
                "{name}: {} datagrams of {} bytes answered, but the server counted {echoed} of \
                 {bytes} after {SETTLE_TIMEOUT:?}: before {before:?}, now {s:?}",
                run.answered, run.answered_bytes
            );
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    assert_unchanged!(
        name,
        before,
        s,
        [
            refused_privileged_port,
            refused_invalid_source,
            rate_limited,
            udp_total_rate_limited,
            udp_kernel_drops,
            accepted,
            bytes_received
        ]
    );
    // Every reply is sent before it is counted: anything extra is queued by
    // now.
    for client in run.clients.iter().flatten() {
        client.socket.set_nonblocking(true).unwrap();
        match client.socket.recv_from(&mut run.buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok((n, from)) => panic!(
                "{name}: client #{} got an extra {n}-byte datagram from {from} after all its \
                 replies",
                client.id
            ),
            Err(e) => panic!("{name}: client #{}: {e}", client.id),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&server, script)) = data.split_first() else {
        return;
    };
    let setup = setup();
    let target = &setup.targets[usize::from(server % 2)];
    let mut run = Run {
        target,
        budget: setup.budget,
        clients: Default::default(),
        made: 0,
        in_flight: 0,
        answered: 0,
        answered_bytes: 0,
        too_long: 0,
        before: target.handle.stats(),
        step: 0,
        buf: vec![0; IPV4_MAX + 1],
    };
    let mut script = Script::new(script);
    while let Some(action) = script.next_action(10) {
        run.step = action.index;
        let slot = action.slot;
        match action.op {
            0 => run.send(slot, 0),
            1 => run.send(slot, 1 + usize::from(script.byte() % 64)),
            2 => {
                let len = script.u16();
                run.send(slot, usize::from(len) % 4097);
            }
            3 => {
                let n = script.u16();
                run.send(slot, 4097 + usize::from(n) % (IPV4_MAX - 4096));
            }
            4 => run.send(slot, IPV4_MAX - usize::from(script.byte())),
            5 => run.recv(slot),
            6 => run.drain(slot),
            7 => {
                let units = script.byte();
                script.pause(units);
            }
            8 => {
                run.drain(slot);
                run.clients[slot] = None;
                run.client(slot);
            }
            _ => {
                let count = 1 + script.byte() % 32;
                let len = usize::from(script.byte() % 64);
                for _ in 0..count {
                    run.send(slot, len);
                }
            }
        }
    }
    settle(&mut run);
});
