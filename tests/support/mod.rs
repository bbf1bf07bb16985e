//! Helpers shared by the integration tests: a server on a background thread,
//! clients with timeouts on every read, and the built binary as a child.
#![allow(dead_code)] // each test file uses a different subset

pub mod pki;

use echo_server::{Engine, ListenAddr, Server, ServerBuilder, ServerHandle, Stats};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Generous: the machine is shared and has two cores.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A server running on a background thread; shut down and joined on drop.
pub struct TestServer {
    /// The TCP address (0.0.0.0:0 when the server has no TCP listener).
    pub addr: SocketAddr,
    pub addrs: Vec<ListenAddr>,
    pub handle: ServerHandle,
    thread: Option<JoinHandle<io::Result<Stats>>>,
}

impl TestServer {
    pub fn start(builder: ServerBuilder) -> TestServer {
        let server = builder.build().expect("server binds");
        let addr = server
            .local_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let addrs = server.listen_addrs().cloned().collect();
        let handle = server.handle();
        let thread = Some(thread::spawn(move || server.run()));
        TestServer {
            addr,
            addrs,
            handle,
            thread,
        }
    }

    /// A server on 127.0.0.1 with an OS-chosen port, on `engine`.
    pub fn loopback(engine: Engine) -> TestServer {
        TestServer::start(builder(engine).tcp(([127, 0, 0, 1], 0)))
    }

    /// The first UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.addrs
            .iter()
            .find_map(|a| match a {
                ListenAddr::Udp(addr) => Some(*addr),
                _ => None,
            })
            .expect("a UDP listener")
    }

    /// Shuts down and waits for `run` to return (within the deadline).
    pub fn stop(mut self) -> Stats {
        self.handle.shutdown();
        let thread = self.thread.take().expect("not stopped yet");
        let start = Instant::now();
        while !thread.is_finished() {
            assert!(start.elapsed() < DEADLINE, "server did not shut down");
            thread::sleep(Duration::from_millis(5));
        }
        thread.join().expect("server thread").expect("server ran")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Under `auto`, this many connections go on threads and the rest on event
/// loops: small, so that a test with a few clients has both at once.
pub const AUTO_THREAD_CONNECTIONS: usize = 2;

/// A builder for a server on `engine` (no listener yet).
pub fn builder(engine: Engine) -> ServerBuilder {
    Server::builder()
        .engine(engine)
        .thread_connections(AUTO_THREAD_CONNECTIONS)
        .event_loops(2)
}

/// `args` after the command-line flags that select `engine` as
/// [`builder`] does.
pub fn on_engine<'a>(engine: Engine, args: &[&'a str]) -> Vec<&'a str> {
    let flags: &'static [&'static str] = match engine {
        Engine::Threads => &["--engine", "threads"],
        Engine::Events => &["--engine", "events", "--event-loops", "2"],
        Engine::Uring => &["--engine", "uring", "--event-loops", "2"],
        _ => &[
            "--engine",
            "auto",
            "--thread-connections",
            "2",
            "--event-loops",
            "2",
        ],
    };
    flags.iter().copied().chain(args.iter().copied()).collect()
}

/// Turns each listed `fn name(engine: Engine)` into one test per engine:
/// `threads::name`, `events::name` (Unix), `uring::name` (Linux, feature `uring`) and
/// `auto::name`.
#[macro_export]
macro_rules! engine_tests {
    ($($name:ident),* $(,)?) => {
        mod threads {
            $( #[test] fn $name() { super::$name(echo_server::Engine::Threads) } )*
        }
        #[cfg(unix)]
        mod events {
            $( #[test] fn $name() { super::$name(echo_server::Engine::Events) } )*
        }
        // The package's features apply to its tests: without `uring`
        // (`--no-default-features`) there is no such engine to test.
        #[cfg(all(target_os = "linux", feature = "uring"))]
        mod uring {
            $( #[test] fn $name() { super::$name(echo_server::Engine::Uring) } )*
        }
        mod auto {
            $( #[test] fn $name() { super::$name(echo_server::Engine::Auto) } )*
        }
    };
}

/// Connects with read and write timeouts, so no test can hang on a socket.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Reads exactly `n` bytes (the read timeout bounds each read).
pub fn read_n(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read echo");
    buf
}

/// Writes `data`, half-closes, and returns everything read until EOF.
/// Reading happens on a second thread so large payloads cannot deadlock on
/// full socket buffers.
pub fn round_trip(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut reader = stream.try_clone().unwrap();
    let collector = thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).map(|_| got)
    });
    let mut writer = stream;
    writer.write_all(&data).expect("write");
    writer.shutdown(Shutdown::Write).expect("half-close");
    collector.join().unwrap().expect("read until EOF")
}

/// Polls `cond` until it holds; panics with `what` after the deadline.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// True if the peer has closed: a read returns EOF (or reset) before `wait`.
pub fn is_closed(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    let closed = match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
    };
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    closed
}

/// The `echo-server` binary running as a child process, with its stderr
/// collected line by line.
pub struct Binary {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Binary {
    pub fn command() -> Command {
        Command::new(env!("CARGO_BIN_EXE_echo-server"))
    }

    pub fn spawn(args: &[&str]) -> Binary {
        let mut command = Binary::command();
        command.args(args);
        Binary::spawn_command(command)
    }

    pub fn spawn_command(mut command: Command) -> Binary {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn echo-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Binary {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line matching `pred` and returns it.
    pub fn expect_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no stderr line {what}; saw {:#?}", self.seen),
            }
        }
    }

    /// Waits for the `listening on tcp ADDR` line and returns ADDR.
    pub fn tcp_addr(&mut self) -> SocketAddr {
        self.listening("tcp").parse().expect("an address")
    }

    /// Waits for the `listening on KIND ADDRESS` line and returns ADDRESS.
    pub fn listening(&mut self, kind: &str) -> String {
        let prefix = format!("listening on {kind} ");
        let line = self.expect_line(&prefix, |l| l.starts_with(&prefix));
        line[prefix.len()..].to_owned()
    }

    /// Waits for the `metrics on http://ADDR/metrics` line and returns ADDR.
    pub fn metrics_addr(&mut self) -> SocketAddr {
        let prefix = "metrics on http://";
        let line = self.expect_line("the metrics line", |l| l.starts_with(prefix));
        line[prefix.len()..]
            .trim_end_matches("/metrics")
            .parse()
            .expect("an address")
    }

    /// Asks for the counters (SIGUSR1) until the `stats:` line they are
    /// logged on contains `needle`; returns that line.
    #[cfg(unix)]
    pub fn wait_for_stats(&mut self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            self.signal(libc::SIGUSR1);
            let stats = self.expect_line("the counters", |l| l.starts_with("stats: "));
            if stats.contains(needle) {
                return stats;
            }
            assert!(start.elapsed() < DEADLINE, "never {needle:?}: {stats}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM (or `signal`).
    #[cfg(unix)]
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Stops it as an operator would (SIGTERM) and asserts that it exits 0.
    #[cfg(unix)]
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        assert_eq!(self.wait_exit().code(), Some(0), "{:#?}", self.seen);
    }

    /// The shutdown summary it printed (text logs).
    pub fn summary(&self) -> String {
        self.seen
            .iter()
            .find(|l| l.starts_with("shut down:"))
            .cloned()
            .unwrap_or_else(|| panic!("no shutdown summary: {:#?}", self.seen))
    }

    /// The first line of stderr so far that contains `needle`.
    pub fn line_containing(&self, needle: &str) -> String {
        self.seen
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .unwrap_or_else(|| panic!("no line with {needle:?}: {:#?}", self.seen))
    }

    /// Whether any line of stderr so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.count_lines(needle) > 0
    }

    /// How many lines of stderr so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits for exit; kills the child and panics past the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Collect the rest of stderr.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return status;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("echo-server did not exit; stderr: {:#?}", self.seen);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with `args`; returns status and stderr.
pub fn run_binary(args: &[&str]) -> (ExitStatus, String) {
    let mut b = Binary::spawn(args);
    let status = b.wait_exit();
    (status, b.seen.join("\n"))
}

/// A UDP client on the loopback address of `server`'s family, connected to
/// it, with a read timeout.
pub fn udp_client(server: SocketAddr, timeout: Duration) -> std::net::UdpSocket {
    let local: SocketAddr = if server.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let s = std::net::UdpSocket::bind(local).expect("bind UDP client");
    s.connect(server).expect("connect UDP client");
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// Sends `data` and returns the reply, or `None` if none came in time.
pub fn udp_round_trip(s: &std::net::UdpSocket, data: &[u8]) -> Option<Vec<u8>> {
    s.send(data).expect("send datagram");
    let mut buf = vec![0u8; 70_000];
    match s.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("recv: {e}"),
    }
}

/// A stream client the shared scenarios can drive: TCP or Unix.
pub trait Client: Read + Write {
    fn set_read_timeout(&self, timeout: Duration);
}

impl Client for TcpStream {
    fn set_read_timeout(&self, timeout: Duration) {
        TcpStream::set_read_timeout(self, Some(timeout)).unwrap();
    }
}

#[cfg(unix)]
impl Client for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Duration) {
        std::os::unix::net::UnixStream::set_read_timeout(self, Some(timeout)).unwrap();
    }
}

/// A server full at 2 connections, reclaiming after 300 ms idle, frees the
/// slot of the connection idle longest for a waiting client, and never that
/// of a busy one. `idle` has echoed a message and then gone quiet: an
/// idle connection is one whose echo is written back, whether or not the
/// engine has read from it since.
pub fn reclaims_the_idlest_slot<C: Client>(server: TestServer, connect: impl Fn() -> C) {
    let mut idle = connect();
    idle.write_all(b"i").unwrap();
    assert_eq!(read_n(&mut idle, 1), b"i");
    let mut busy = connect();
    // Full, but nobody waits: however idle, no one is reclaimed (a check
    // runs every 250 ms once the idlest has been idle 300 ms).
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        server.handle.stats().reclaimed,
        0,
        "reclaimed with nobody waiting"
    );
    // Busy again before anyone waits: two connections quiet since about
    // the same millisecond are equally idle, and the server may take
    // either (this test flaked when it left that to chance).
    busy.write_all(b"b").unwrap();
    assert_eq!(read_n(&mut busy, 1), b"b");
    let mut waiting = connect();
    waiting.write_all(b"let me in").unwrap();
    waiting.set_read_timeout(Duration::from_millis(100));
    // The busy client keeps echoing while the waiting one waits.
    let start = Instant::now();
    let mut waiting_served = false;
    while start.elapsed() < DEADLINE {
        busy.write_all(b"b").unwrap();
        assert_eq!(read_n(&mut busy, 1), b"b", "the busy client is served");
        let mut buf = [0u8; 9];
        if waiting.read_exact(&mut buf).is_ok() {
            assert_eq!(&buf, b"let me in");
            waiting_served = true;
            break;
        }
    }
    let stats = server.handle.stats();
    assert!(
        waiting_served,
        "the waiting client was never served: {stats:?}"
    );
    busy.write_all(b"still").unwrap();
    assert_eq!(read_n(&mut busy, 5), b"still", "the busy one was reclaimed");
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("the idle one was not reclaimed ({e}): {stats:?}"));
    assert!(
        rest.is_empty(),
        "the reclaimed client gets end of file, nothing else"
    );
    assert_eq!(server.stop().reclaimed, 1);
}

/// The threads of process `pid` (`"self"` for this one): each one's
/// `/proc/PID/task/TID` directory and name.
#[cfg(target_os = "linux")]
pub fn threads_of(pid: &str) -> Vec<(std::path::PathBuf, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let dir = t.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            Some((dir, name.trim_end().to_owned()))
        })
        .collect()
}

/// Starts the binary the way systemd does: `fds` become descriptors 3, 4, …
/// and LISTEN_PID/LISTEN_FDS name the process (`exec` keeps the shell's pid).
#[cfg(unix)]
pub fn spawn_activated(fds: &[std::os::fd::RawFd], args: &str) -> Binary {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!(
        "export LISTEN_PID=$$ LISTEN_FDS={}; exec '{}' {args}",
        fds.len(),
        env!("CARGO_BIN_EXE_echo-server")
    ));
    let fds = fds.to_vec();
    // SAFETY: only dup2, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Through high numbers first, so no source is overwritten, and
            // every target is a fresh dup (which clears close-on-exec).
            for (i, &fd) in fds.iter().enumerate() {
                if libc::dup2(fd, 100 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..fds.len() as i32 {
                if libc::dup2(100 + i, 3 + i) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(100 + i);
            }
            Ok(())
        });
    }
    Binary::spawn_command(cmd)
}

/// CPU time (user + system, in clock ticks of 1/100 s) that process `pid`
/// has used so far.
#[cfg(target_os = "linux")]
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // After the command (in parentheses): utime is the 14th field, stime
    // the 15th, counting the pid as the 1st.
    let after = &stat[stat.rfind(')').expect("a command") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Resident memory of process `pid`, in KiB (VmRSS).
#[cfg(target_os = "linux")]
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Whether to skip a test that needs root to `why`; says so if it does.
#[cfg(unix)]
pub fn skip_unless_root(why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: needs root to {why}");
    }
    !root
}

/// Makes the system call `nr` fail with `EPERM` in `command`'s process, as
/// a container runtime's seccomp profile refuses io_uring (a filter
/// installed between fork and exec; every other call is allowed); with
/// `Some((index, mask))`, only when the call's `index`th argument has a bit
/// of `mask` set (its low 32 bits, on a little endian machine).
#[cfg(target_os = "linux")]
pub fn refusing_syscall(command: &mut Command, nr: libc::c_long, flag: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    // A classic BPF program over `struct seccomp_data`: the system call's
    // number at offset 0, its arguments (8 bytes each) from offset 16.
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let refuse = op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32);
    let allow = op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW);
    let filter: Vec<libc::sock_filter> = match flag {
        None => vec![
            op(LD_W_ABS, 0, 0, 0),
            op(JEQ_K, 0, 1, nr as u32),
            refuse,
            allow,
        ],
        Some((index, mask)) => vec![
            op(LD_W_ABS, 0, 0, 0),
            op(JEQ_K, 0, 3, nr as u32),
            op(LD_W_ABS, 0, 0, 16 + 8 * index),
            op(JSET_K, 0, 1, mask),
            refuse,
            allow,
        ],
    };
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes two prctl calls (async-signal-safe) over memory that the fork
    // copied and nothing frees before the exec.
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
