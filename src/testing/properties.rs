//! Properties over real loopback sockets: many concurrent clients get exactly
//! their own bytes back, the connection limit holds, and shutdown leaves
//! nothing behind.
//!
//! They live under `src/` (not `tests/`) so that proptest persists failures in
//! `proptest-regressions/testing/properties.txt` at the crate root. Default case
//! counts keep `cargo test` quick; `PROPTEST_CASES=N` raises them.

use crate::server::{Server, ServerHandle};
use crate::settings::Engine;
use crate::stats::Stats;
use proptest::collection::vec;
use proptest::prelude::*;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Every socket read in these properties gives up after this long.
const DEADLINE: Duration = Duration::from_secs(30);

/// Servers here run one at a time, so that counting connection threads by
/// name counts only the current server's.
static SERIAL: Mutex<()> = Mutex::new(());

fn config(default_cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    // Each case opens dozens of sockets: keep shrinking bounded.
    config.max_shrink_iters = 200;
    config
}

struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: JoinHandle<io::Result<Stats>>,
}

/// Any engine; under `auto`, so few connections on threads that most cases
/// have connections on both engines at once.
fn engine() -> impl Strategy<Value = Engine> {
    let engines = [
        Engine::Threads,
        Engine::Events,
        #[cfg(all(target_os = "linux", feature = "uring"))]
        Engine::Uring,
        Engine::Auto,
    ];
    proptest::sample::select(engines.to_vec())
}

fn start(max_connections: usize, engine: Engine) -> Running {
    let server = Server::builder()
        .tcp(([127, 0, 0, 1], 0))
        .max_connections(max_connections)
        .engine(engine)
        .thread_connections(3)
        .event_loops(2)
        .build()
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    let thread = thread::spawn(move || server.run());
    Running {
        addr,
        handle,
        thread,
    }
}

impl Running {
    /// Shuts down and returns the final counters once `run` has returned.
    fn stop(self) -> Stats {
        self.handle.shutdown();
        let start = Instant::now();
        while !self.thread.is_finished() {
            assert!(
                start.elapsed() < DEADLINE,
                "run did not return after shutdown"
            );
            thread::sleep(Duration::from_millis(2));
        }
        self.thread.join().unwrap().unwrap()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Connection threads and event loops alive in this process, by name.
#[cfg(target_os = "linux")]
fn serving_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| matches!(name.trim_end(), "echo-conn" | "echo-events"))
        .count()
}

/// What one client does: write its payload in chunks (pausing after some),
/// read part of the echo back, half-close, then read the rest until EOF.
#[derive(Debug, Clone)]
struct ClientPlan {
    payload: Vec<u8>,
    chunks: Vec<(usize, u8)>,
    read_before_close: prop::sample::Index,
}

fn client_plan() -> impl Strategy<Value = ClientPlan> {
    (
        vec(any::<u8>(), 0..16 * 1024),
        vec((1usize..4096, 0u8..3), 1..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(payload, chunks, read_before_close)| ClientPlan {
            payload,
            chunks,
            read_before_close,
        })
}

impl ClientPlan {
    /// Runs the plan; returns everything echoed back.
    fn run(&self, addr: SocketAddr) -> Vec<u8> {
        let mut s = connect(addr);
        let mut sent = 0;
        let mut steps = self.chunks.iter().cycle();
        while sent < self.payload.len() {
            let &(len, pause_ms) = steps.next().unwrap();
            let end = (sent + len).min(self.payload.len());
            s.write_all(&self.payload[sent..end]).unwrap();
            sent = end;
            thread::sleep(Duration::from_millis(pause_ms.into()));
        }
        // Payloads are far smaller than loopback socket buffers, so writing
        // all before reading cannot deadlock.
        let early = self.read_before_close.index(self.payload.len() + 1);
        let mut got = vec![0; early];
        s.read_exact(&mut got).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        s.read_to_end(&mut got).unwrap();
        got
    }
}

proptest! {
    #![proptest_config(config(6))]

    /// At least 64 concurrent clients, each with its own payload, chunking,
    /// pauses and half-close point: each gets exactly its own bytes back, in
    /// order, then end of file.
    #[test]
    fn concurrent_clients_each_get_their_own_bytes(
        plans in vec(client_plan(), 64..80),
        engine in engine(),
    ) {
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let server = start(1024, engine);
        let clients: Vec<_> = plans
            .iter()
            .cloned()
            .map(|plan| {
                let addr = server.addr;
                thread::spawn(move || plan.run(addr))
            })
            .collect();
        for (plan, client) in plans.iter().zip(clients) {
            let got = client.join().expect("client finished");
            prop_assert!(got == plan.payload, "a client got {} bytes back, not its {}", got.len(), plan.payload.len());
        }
        let stats = server.stop();
        prop_assert_eq!(stats.accepted, plans.len() as u64);
        prop_assert_eq!(stats.bytes_echoed, plans.iter().map(|p| p.payload.len() as u64).sum::<u64>());
    }

    /// Never more than `max` clients are served at once, and every waiting
    /// client is served in the end.
    #[test]
    fn connection_limit_holds_and_every_client_is_served(
        max in 1usize..=4,
        holds in vec(0u64..8, 6..20),
        engine in engine(),
    ) {
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let server = start(max, engine);
        let served = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let monitor = {
            let (handle, done) = (server.handle.clone(), done.clone());
            thread::spawn(move || {
                let mut seen = 0;
                while !done.load(SeqCst) {
                    seen = seen.max(handle.stats().active);
                    thread::yield_now();
                }
                seen
            })
        };
        let clients: Vec<_> = holds
            .iter()
            .enumerate()
            .map(|(i, &hold)| {
                let (addr, served, peak) = (server.addr, served.clone(), peak.clone());
                thread::spawn(move || {
                    let mut s = connect(addr);
                    let id = [i as u8; 3];
                    s.write_all(&id).unwrap();
                    let mut back = [0; 3];
                    s.read_exact(&mut back).unwrap(); // returns once served
                    let now = served.fetch_add(1, SeqCst) + 1;
                    peak.fetch_max(now, SeqCst);
                    thread::sleep(Duration::from_millis(hold));
                    served.fetch_sub(1, SeqCst);
                    s.shutdown(Shutdown::Write).unwrap();
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest).unwrap();
                    (back == id, rest.is_empty())
                })
            })
            .collect();
        for client in clients {
            prop_assert_eq!(client.join().expect("client was served"), (true, true));
        }
        done.store(true, SeqCst);
        let server_peak = monitor.join().unwrap();
        prop_assert!(peak.load(SeqCst) <= max, "clients saw {} served at once, limit {}", peak.load(SeqCst), max);
        prop_assert!(server_peak <= max as u64, "server had {} active, limit {}", server_peak, max);
        prop_assert_eq!(server.stop().accepted, holds.len() as u64);
    }

    /// Once `run` returns after shutdown, no connection thread or event
    /// loop is left,
    /// every client got its in-flight bytes and then end of file, and the
    /// port can be bound again.
    #[test]
    fn shutdown_leaves_nothing_behind(
        idle in 0usize..6,
        busy in vec(vec(any::<u8>(), 1..2048), 0..6),
        engine in engine(),
    ) {
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let server = start(64, engine);
        let mut idle_clients: Vec<_> = (0..idle).map(|_| connect(server.addr)).collect();
        let mut busy_clients: Vec<_> = busy
            .iter()
            .map(|payload| {
                let mut s = connect(server.addr);
                s.write_all(payload).unwrap();
                s
            })
            .collect();
        let expected = (idle + busy.len()) as u64;
        let start_wait = Instant::now();
        while server.handle.stats().active < expected
            || server.handle.stats().bytes_echoed < busy.iter().map(|p| p.len() as u64).sum()
        {
            prop_assert!(start_wait.elapsed() < DEADLINE, "clients not served");
            thread::sleep(Duration::from_millis(2));
        }
        let addr = server.addr;
        let stats = server.stop();
        prop_assert_eq!(stats.active, 0);
        #[cfg(target_os = "linux")]
        prop_assert_eq!(serving_threads(), 0);
        for (s, payload) in busy_clients.iter_mut().zip(&busy) {
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            prop_assert_eq!(&got, payload);
        }
        for s in &mut idle_clients {
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            prop_assert!(got.is_empty());
        }
        prop_assert!(TcpListener::bind(addr).is_ok(), "port still taken after shutdown");
    }
}
