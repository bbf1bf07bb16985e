//! Faults on purpose: errors the tests cannot provoke on loopback (accept
//! failing with ENOMEM or EPROTO, the OS refusing a thread, a send failing
//! in the middle of an echo), injected at the system call they stand for.
//!
//! Compiled into unit tests only: in every other build [`Faults`] is an
//! empty type and [`Faults::take`] returns `None`, which the compiler
//! removes, so release builds pay nothing.

use std::io;

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Point {
    /// `accept` on a stream listener.
    Accept,
    /// Starting a connection thread.
    Spawn,
    /// A `send` of an echo.
    Send,
}

/// One fault waiting to happen: where, after how many more calls, and the
/// error (an OS error number, or a kind).
#[cfg(test)]
type Pending = (Point, Option<usize>, io::ErrorKind, Option<i32>);

/// Faults waiting to happen, per point, in order. One per server.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    queue: std::sync::Mutex<Vec<Pending>>,
}

#[cfg(test)]
impl Faults {
    /// The next `Point` call fails with the OS error `code`.
    pub(crate) fn inject_os(&self, point: Point, code: i32) {
        self.push(point, None, io::ErrorKind::Other, Some(code));
    }

    /// The `skip + 1`th call at `point` from now fails with `kind`.
    pub(crate) fn inject_after(&self, point: Point, skip: usize, kind: io::ErrorKind) {
        self.push(point, Some(skip), kind, None);
    }

    fn push(&self, point: Point, skip: Option<usize>, kind: io::ErrorKind, code: Option<i32>) {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((point, skip, kind, code));
    }

    /// The fault due at `point` now, if any.
    pub(crate) fn take(&self, point: Point) -> Option<io::Error> {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = queue.iter().position(|f| f.0 == point)?;
        match &mut queue[i].1 {
            Some(skip) if *skip > 0 => {
                *skip -= 1;
                None
            }
            _ => {
                let (_, _, kind, code) = queue.remove(i);
                Some(code.map_or_else(|| kind.into(), io::Error::from_raw_os_error))
            }
        }
    }
}

/// Without tests: nothing to inject (and nothing stored).
#[cfg(not(test))]
#[derive(Debug, Default)]
pub(crate) struct Faults(());

#[cfg(not(test))]
impl Faults {
    #[inline(always)]
    pub(crate) fn take(&self, _: Point) -> Option<io::Error> {
        None
    }
}

/// Every error branch of the accept loop and the connection path, taken on
/// purpose: each test fails if its branch is broken (a transient error
/// counted or fatal, a resource error fatal, a refused thread not counted
/// or, under `auto`, not re-homed, a failed send disturbing others).
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::context::Context;
    use crate::{Engine, Server, ServerHandle, Stats};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(30);

    /// Warnings logged in this test process (nothing else installs a
    /// logger in unit tests). Servers name their address in each line, so
    /// a test picks out its own server's.
    static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                let mut w = WARNINGS.lock().unwrap_or_else(|e| e.into_inner());
                w.push(record.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    /// The warnings logged in this test process so far that start with
    /// `prefix` (other modules' unit tests share the one logger).
    pub(crate) fn warnings_starting(prefix: &str) -> Vec<String> {
        static CAPTURE: Capture = Capture;
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
        let w = WARNINGS.lock().unwrap_or_else(|e| e.into_inner());
        w.iter()
            .filter(|l| l.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The warnings about `addr` so far.
    fn warnings_about(addr: SocketAddr) -> Vec<String> {
        warnings_starting(&format!("tcp {addr}: "))
    }

    struct Running {
        addr: SocketAddr,
        ctx: Arc<Context>,
        handle: ServerHandle,
        thread: Option<JoinHandle<io::Result<Stats>>>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.handle.shutdown();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn start(engine: Engine) -> Running {
        let server = Server::builder()
            .tcp(([127, 0, 0, 1], 0))
            .engine(engine)
            .thread_connections(1)
            .event_loops(1)
            .build()
            .unwrap();
        Running {
            addr: server.local_addr().unwrap(),
            ctx: server.context(),
            handle: server.handle(),
            thread: Some(std::thread::spawn(move || server.run())),
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.set_write_timeout(Some(DEADLINE)).unwrap();
        s
    }

    /// Whether a new client gets `msg` back.
    fn echoes(addr: SocketAddr, msg: &[u8]) -> bool {
        let mut s = connect(addr);
        s.write_all(msg).unwrap();
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back).is_ok() && back == msg
    }

    #[test]
    fn transient_accept_errors_are_retried_at_once_and_not_counted() {
        for code in [libc::ECONNABORTED, libc::EPROTO] {
            let s = start(Engine::Threads);
            s.ctx.faults.inject_os(Point::Accept, code);
            // The loop is in `accept` already: the first client is served,
            // the next `accept` fails as injected, the second is served too.
            assert!(echoes(s.addr, b"one"));
            assert!(echoes(s.addr, b"two"), "stopped serving after errno {code}");
            assert_eq!(s.handle.stats().accept_errors, 0, "errno {code} counted");
        }
    }

    #[test]
    fn resource_errors_of_accept_are_counted_backed_off_and_survived() {
        for code in [libc::ENOMEM, libc::ENOBUFS] {
            let s = start(Engine::Events);
            assert!(warnings_about(s.addr).is_empty());
            // Three in a row: backed off three times, warned once.
            for _ in 0..3 {
                s.ctx.faults.inject_os(Point::Accept, code);
            }
            assert!(echoes(s.addr, b"one"));
            assert!(echoes(s.addr, b"two"), "stopped serving after errno {code}");
            assert_eq!(s.handle.stats().accept_errors, 3, "errno {code}");
            let warned = warnings_about(s.addr);
            assert_eq!(warned.len(), 1, "{warned:?}");
            assert!(
                warned[0].contains("accept failed, backing off"),
                "{warned:?}"
            );
        }
    }

    #[test]
    fn a_thread_refused_once_is_tried_again_under_threads() {
        let s = start(Engine::Threads);
        s.ctx.faults.inject_os(Point::Spawn, libc::EAGAIN);
        // The client stays connected while the gauge is read: once it
        // closes, its thread may end before `stats()` runs.
        let mut client = connect(s.addr);
        client.write_all(b"served after a retry").unwrap();
        let mut back = [0u8; 20];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"served after a retry");
        let stats = s.handle.stats();
        assert_eq!((stats.thread_refused, stats.active_threads), (0, 1));
    }

    #[test]
    fn a_thread_refused_every_time_closes_that_connection_under_threads() {
        let s = start(Engine::Threads);
        // The first attempt and every retry fail.
        for _ in 0..=crate::engine::SPAWN_RETRIES {
            s.ctx.faults.inject_os(Point::Spawn, libc::EAGAIN);
        }
        let mut refused = connect(s.addr);
        let _ = refused.write_all(b"x");
        let mut buf = [0u8; 1];
        assert!(
            matches!(refused.read(&mut buf), Ok(0) | Err(_)),
            "the refused client must learn at once"
        );
        assert!(echoes(s.addr, b"next"), "serving again after the refusal");
        assert_eq!(s.handle.stats().thread_refused, 1);
    }

    #[test]
    fn a_refused_thread_sends_the_connection_to_a_loop_under_auto() {
        let s = start(Engine::Auto);
        s.ctx.faults.inject_os(Point::Spawn, libc::EAGAIN);
        let mut c = connect(s.addr);
        c.write_all(b"rehomed").unwrap();
        let mut back = [0u8; 7];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"rehomed");
        let stats = s.handle.stats();
        // An io_uring loop where there are any, else an event loop.
        assert_eq!(
            (
                stats.thread_refused,
                stats.active_events + stats.active_uring,
                stats.active_threads
            ),
            (0, 1, 0)
        );
    }

    #[test]
    fn a_send_failing_mid_echo_closes_only_that_connection() {
        let engines = [
            Engine::Threads,
            Engine::Events,
            #[cfg(all(target_os = "linux", feature = "uring"))]
            Engine::Uring,
        ];
        for engine in engines {
            let s = start(engine);
            let mut other = connect(s.addr);
            let mut victim = connect(s.addr);
            victim.write_all(b"first").unwrap();
            let mut back = [0u8; 5];
            victim.read_exact(&mut back).unwrap();
            // The next send of any connection fails: the victim's.
            s.ctx
                .faults
                .inject_after(Point::Send, 0, io::ErrorKind::BrokenPipe);
            victim.write_all(b"second").unwrap();
            let mut rest = Vec::new();
            let _ = victim.read_to_end(&mut rest);
            assert!(rest.is_empty(), "{engine}: nothing after the failed send");
            other.write_all(b"unharmed").unwrap();
            let mut back = [0u8; 8];
            other.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"unharmed", "{engine}");
        }
    }
}
