//! Hostile clients and exhausted machines: the server keeps serving everyone
//! else, loses nothing, and recovers by itself.
#![cfg(target_os = "linux")] // rlimits, /proc, setuid

mod support;

use echo_server::Engine;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// What became of a client that sent one byte.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Echoed,
    /// Closed or reset by the server: it learned at once.
    Refused,
    /// Nothing within the wait: left hanging.
    Hanging,
}

fn try_client(addr: SocketAddr, wait: Duration) -> (Fate, Option<TcpStream>) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, DEADLINE) else {
        return (Fate::Refused, None);
    };
    s.set_read_timeout(Some(wait)).unwrap();
    if s.write_all(b"x").is_err() {
        return (Fate::Refused, None);
    }
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => (Fate::Echoed, Some(s)),
        Ok(_) => (Fate::Refused, None),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            (Fate::Hanging, Some(s))
        }
        Err(_) => (Fate::Refused, None),
    }
}

/// The binary with resource limits set in the child before exec.
fn spawn_limited(
    args: &[&str],
    setup: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
) -> Binary {
    let mut cmd = Binary::command();
    cmd.args(args);
    // SAFETY: the closure only calls close_range, setrlimit, setgid and
    // setuid, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            close_inherited_on_exec();
            setup()
        })
    };
    Binary::spawn_command(cmd)
}

/// Descriptors the test runner left open without close-on-exec (a
/// jobserver's pipes under cargo-mutants, a shell's redirections) would
/// count against the child's `RLIMIT_NOFILE`: mark every one above stderr
/// close-on-exec, so the server starts with exactly 0, 1 and 2.
fn close_inherited_on_exec() {
    // SAFETY: close_range only sets a flag on this process's descriptors.
    // Before Linux 5.11 it fails with ENOSYS and nothing changes.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

fn set_rlimit(resource: libc::__rlimit_resource_t, n: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads the struct passed.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Lowers the descriptor limit of a running process: the server sized its
/// connection limit to the descriptors it had at start-up, and this takes
/// them away, as other descriptors in use could.
fn lower_nofile(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit on a child this test owns, reading the struct passed.
    let done = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
}

fn out_of_file_descriptors_resets_extra_clients_and_recovers(engine: Engine) {
    let mut server = spawn_limited(&on_engine(engine, &["0"]), || Ok(()));
    let addr = server.tcp_addr();
    lower_nofile(server.child.id(), 16);
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..24 {
        match try_client(addr, Duration::from_secs(10)) {
            (Fate::Echoed, Some(s)) => served.push(s),
            (Fate::Refused, _) => refused += 1,
            (fate, _) => panic!("a client was left {fate:?}"),
        }
    }
    assert!(!served.is_empty(), "nobody was served");
    assert!(refused > 0, "16 descriptors cannot serve 24 clients");
    // Descriptors come back: the server recovers by itself.
    // The server frees them as it sees each close; a client that comes
    // before that is reset like the others, so try until one is served.
    served.clear();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match try_client(addr, DEADLINE) {
            (Fate::Echoed, _) => break,
            (Fate::Refused, _) if Instant::now() < deadline => {
                refused += 1;
                thread::sleep(Duration::from_millis(20));
            }
            (fate, _) => panic!("not serving again after fds were freed: {fate:?}"),
        }
    }
    server.stop();
    let line = server.summary();
    assert!(
        line.contains(&format!("{refused} reset for lack of file descriptors")),
        "{line}"
    );
    // One warning for the episode, not one per client reset.
    let warnings = server.count_lines("out of file descriptors");
    assert_eq!(warnings, 1, "{:#?}", server.seen);
}

/// The server as user `stranger(who)` with `RLIMIT_NPROC` at `nproc`: a
/// user that may run only a handful of threads (root is not held to the
/// limit).
/// At start-up the connection limit is lowered to what the descriptor
/// limit allows, with a warning naming it, so clients beyond it wait in the
/// backlog instead of being reset, and the metrics endpoint keeps the
/// descriptors it needs: /healthz answers while every slot is taken.
fn the_descriptor_limit_caps_connections_and_keeps_room_for_metrics(engine: Engine) {
    let mut server = spawn_limited(&on_engine(engine, &["--metrics", "0", "0"]), || {
        set_rlimit(libc::RLIMIT_NOFILE, 96)
    });
    let addr = server.tcp_addr();
    let metrics = server.metrics_addr();
    let warning = server.line_containing("descriptor limit (RLIMIT_NOFILE) is 96");
    let cap: usize = warning
        .split_whitespace()
        .skip_while(|w| *w != "most")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {warning}"));
    assert!((1..96).contains(&cap), "{warning}");
    // More clients than slots: those beyond wait, none is reset.
    let mut clients: Vec<TcpStream> = (0..cap + 10).map(|_| connect(addr)).collect();
    for (i, c) in clients.iter_mut().take(cap).enumerate() {
        c.write_all(&[i as u8]).unwrap();
        assert_eq!(read_n(c, 1), [i as u8], "client {i}");
    }
    // Every slot taken: the probe is still answered.
    let mut probe = connect(metrics);
    probe.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    probe.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    // As slots free, the waiting ones are served.
    clients.drain(..10);
    for (i, c) in clients.iter_mut().skip(cap - 10).enumerate() {
        c.write_all(b"w").unwrap();
        assert_eq!(read_n(c, 1), b"w", "waiting client {i}");
    }
    drop(clients);
    server.stop();
    assert!(
        !server.logged("reset for lack of file descriptors"),
        "{}",
        server.summary()
    );
}

fn spawn_as_a_stranger_with_nproc(who: u32, args: &[&str], nproc: u64) -> Binary {
    let id = stranger(who);
    spawn_limited(args, move || {
        set_rlimit(libc::RLIMIT_NPROC, nproc)?;
        run_as(id)
    })
}

/// A uid no other process has: one per test (`who`) and test process. The
/// process limit counts every task of the user, so tests running at once
/// (in one `cargo test` process, or two runs under `cargo mutants -j 2`)
/// must not share one, as they did sharing `nobody`.
fn stranger(who: u32) -> u32 {
    200_000 + (std::process::id() % 50_000) * 16 + who
}

fn run_as(id: u32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on integers.
    unsafe {
        if libc::setgid(id) != 0 || libc::setuid(id) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The process limit binds: under `threads` the server works out at
/// start-up how many connection threads it can have, says so, serves that
/// many at once and keeps the rest waiting, never refusing or crashing;
/// under `auto` the rest go to the event loops and everyone is served at
/// once. (One test: both servers run as the same user and would count
/// against each other's limit.)
#[test]
fn a_low_process_limit_caps_threads_and_auto_serves_the_rest_on_event_loops() {
    if skip_unless_root("run the server as another user") {
        return;
    }
    // Other processes of the same user count against the limit too: the
    // server must count every task of its user, not only its own.
    // Two, so the count cannot come out right by accident (/proc/self and
    // /proc/thread-self repeat the server's own entry).
    let id = stranger(0);
    let mut others: Vec<std::process::Child> = (0..2)
        .map(|_| {
            let mut other = std::process::Command::new("sleep");
            other.arg("60");
            // SAFETY: only setgid/setuid run between fork and exec.
            unsafe { std::os::unix::process::CommandExt::pre_exec(&mut other, move || run_as(id)) };
            other.spawn().unwrap()
        })
        .collect();
    // 2 sleeps + main + 2 signal threads + accept thread + 2 connection threads.
    // --max-threads above what the system allows: the system is the reason given.
    let mut server = spawn_as_a_stranger_with_nproc(
        0,
        &["--engine", "threads", "--max-threads", "1000", "0"],
        8,
    );
    let addr = server.tcp_addr();
    let warning = server.line_containing("serving at most 2 connections at once");
    assert!(warning.contains("RLIMIT_NPROC"), "{warning}");
    assert!(warning.contains("not 4096"), "{warning}");
    let mut served = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..4 {
        match try_client(addr, Duration::from_secs(2)) {
            (Fate::Echoed, Some(s)) => served.push(s),
            (Fate::Hanging, Some(s)) => waiting.push(s),
            (fate, _) => panic!("a client was {fate:?}"),
        }
    }
    assert_eq!((served.len(), waiting.len()), (2, 2));
    // Slots free up: the waiting clients are served, nothing was lost.
    drop(served);
    for mut s in waiting {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        assert_eq!(
            read_n(&mut s, 1),
            b"x",
            "a waiting client got its byte back"
        );
    }
    server.stop();
    let line = server.summary();
    assert!(!line.contains("for lack of threads"), "{line}");
    for mut other in others.drain(..) {
        let _ = other.kill();
        let _ = other.wait();
    }

    // Each UDP receive thread is the server's own too: main + 2 signal
    // threads + TCP accept + 3 UDP receivers leave 3 of 10 for connections.
    let mut server = spawn_as_a_stranger_with_nproc(
        0,
        &["--engine", "threads", "--udp", "--udp-threads", "3", "0"],
        10,
    );
    let _ = server.listening("udp");
    assert!(
        server.logged("serving at most 3 connections at once"),
        "{:#?}",
        server.seen
    );
    server.stop();
    let line = server.summary();
    assert!(!line.contains("for lack of threads"), "{line}");

    // main + 2 signal threads + accept + 2 event loops + 1 connection thread.
    let mut server = spawn_as_a_stranger_with_nproc(0, &["--event-loops", "2", "0"], 7);
    let addr = server.tcp_addr();
    let mut served = Vec::new();
    for _ in 0..6 {
        let (fate, s) = try_client(addr, DEADLINE);
        assert_eq!(fate, Fate::Echoed);
        served.extend(s);
    }
    drop(served);
    server.stop();
    let line = server.summary();
    assert!(!line.contains("for lack of threads"), "{line}");
}

fn a_stalled_reader_holds_bounded_memory_until_the_write_timeout(engine: Engine) {
    let mut server = Binary::spawn(&on_engine(engine, &["--write-timeout", "1", "0"]));
    let addr = server.tcp_addr();
    let before = rss_kib(server.child.id());
    let mut s = connect(addr);
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Send until the socket buffers on both sides are full; never read.
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0usize;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) && sent < 256 << 20 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let during = rss_kib(server.child.id());
    assert!(sent < 256 << 20, "buffers never filled");
    assert!(
        during < before + 8 * 1024,
        "server grew from {before} KiB to {during} KiB for one stalled reader"
    );
    // Still not reading: the write timeout (1 s) frees the connection.
    thread::sleep(Duration::from_secs(3));
    assert!(
        is_closed_or_reset(&mut s),
        "stalled reader was never closed"
    );
    server.stop();
    let line = server.summary();
    assert!(line.contains("closed early: 1 write timeouts"), "{line}");
}

/// Readers that stall hold back only themselves: `hogs` clients on one loop
/// send until their echo backs up and never read, and another client's
/// echo still comes back at once, long before the write timeout (60 s here)
/// frees anything. On the uring engine a stalled send keeps its provided
/// buffer (64 a loop), so 64 such clients starved every other connection
/// of the loop until the write timeout, and during a shutdown's grace; now
/// a send the socket will not take at once is spilled into a copy of its
/// own and the buffer given back.
fn stalled_readers_cannot_starve_the_other_clients(engine: Engine) {
    let engine_flag = match engine {
        Engine::Threads => "threads",
        Engine::Events => "events",
        Engine::Uring => "uring",
        _ => "auto",
    };
    let mut server = Binary::spawn(&[
        "--engine",
        engine_flag,
        "--event-loops",
        "1",
        "--write-timeout",
        "60",
        "0",
    ]);
    let addr = server.tcp_addr();
    let chunk = vec![0x5au8; 64 * 1024];
    let start = Instant::now();
    let mut hogs = Vec::new();
    for _ in 0..72 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        // A small window: the echo backs up after little of it.
        s.set_recv_buffer_size(4096).unwrap();
        s.connect_timeout(&addr.into(), DEADLINE).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut s = TcpStream::from(s);
        // Until the socket buffers of both sides are full.
        while start.elapsed() < DEADLINE {
            match s.write(&chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("a stalled reader's write failed: {e}"),
            }
        }
        hogs.push(s);
    }
    let mut victim = connect(addr);
    victim
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    victim.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    let echoed = victim.read_exact(&mut back);
    drop(hogs);
    server.stop();
    echoed.unwrap_or_else(|e| {
        panic!("no echo for a client beside 72 stalled readers: {e}");
    });
    assert_eq!(&back, b"hello");
}

mod stalled_readers {
    use echo_server::Engine;

    #[test]
    fn threads() {
        super::stalled_readers_cannot_starve_the_other_clients(Engine::Threads);
    }

    #[test]
    fn events() {
        super::stalled_readers_cannot_starve_the_other_clients(Engine::Events);
    }

    #[cfg(all(target_os = "linux", feature = "uring"))]
    #[test]
    fn uring() {
        super::stalled_readers_cannot_starve_the_other_clients(Engine::Uring);
    }

    #[test]
    fn auto() {
        super::stalled_readers_cannot_starve_the_other_clients(Engine::Auto);
    }
}

fn is_closed_or_reset(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    // Drain what was echoed before the close, then expect EOF or a reset.
    while start.elapsed() < DEADLINE {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
    false
}

fn a_client_that_sends_256_mib_before_reading_gets_it_all_back(engine: Engine) {
    let mut server = Binary::spawn(&on_engine(engine, &["0"]));
    let addr = server.tcp_addr();
    let pid = server.child.id();
    let base = rss_kib(pid);
    let total: usize = 256 << 20;
    // Byte `j` of MiB `i` is `(i * 31 + j) as u8`: MiB `i` is the slice of
    // `pattern` that starts at `i * 31 % 256`. Writing and checking whole
    // slices keeps this test fast in debug builds (no loop per byte).
    let pattern: Arc<Vec<u8>> = Arc::new((0..(1usize << 20) + 256).map(|k| k as u8).collect());
    let mib = |i: usize| (i * 31) % 256..(i * 31) % 256 + (1 << 20);
    let s = connect(addr);
    let mut reader = s.try_clone().unwrap();
    let writer = {
        let pattern = Arc::clone(&pattern);
        thread::spawn(move || {
            let mut s = s;
            for i in 0..total >> 20 {
                s.write_all(&pattern[mib(i)]).unwrap();
            }
            s.shutdown(Shutdown::Write).unwrap();
        })
    };
    // Not reading for a while: the writer stalls on full buffers.
    thread::sleep(Duration::from_secs(1));
    let mut peak = rss_kib(pid);
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(got + n <= total, "more bytes back than sent");
        // Check what came back one MiB at a time (a read may span two).
        let mut k = 0;
        while k < n {
            let pos = got + k;
            let (i, j) = (pos >> 20, pos & ((1 << 20) - 1));
            let len = (n - k).min((1 << 20) - j);
            let want = &pattern[mib(i)][j..j + len];
            if buf[k..k + len] != *want {
                let at = (0..len).find(|&d| buf[k + d] != want[d]).unwrap_or(0);
                panic!("byte {} differs", pos + at);
            }
            k += len;
        }
        got += n;
        if got % (32 << 20) < n {
            peak = peak.max(rss_kib(pid));
        }
    }
    writer.join().unwrap();
    assert_eq!(got, total);
    assert!(
        peak < base + 8 * 1024,
        "server RSS went from {base} to {peak} KiB"
    );
}

fn a_storm_of_resets_and_silent_clients_disturbs_no_one(engine: Engine) {
    let mut server = Binary::spawn(&on_engine(engine, &["0"]));
    let addr = server.tcp_addr();
    let mut steady = connect(addr);
    for i in 0..300 {
        let s = socket2::Socket::from(connect(addr));
        match i % 3 {
            // Sends, then resets (linger 0) without reading the echo.
            0 => {
                let _ = (&s).write_all(&[1; 4096]);
                s.set_linger(Some(Duration::ZERO)).unwrap();
            }
            // Half-closes at once without sending anything.
            1 => {
                s.shutdown(Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                let mut stream = TcpStream::from(s);
                stream.read_to_end(&mut rest).unwrap();
                assert!(rest.is_empty());
                continue;
            }
            // Connects and closes having sent nothing.
            _ => {}
        }
        drop(s);
    }
    steady.write_all(b"still here").unwrap();
    assert_eq!(read_n(&mut steady, 10), b"still here");
    drop(steady);
    // The backlog is first in, first out: once this one is served, every
    // client before it has been accepted.
    let mut last = connect(addr);
    last.write_all(b"last").unwrap();
    assert_eq!(read_n(&mut last, 4), b"last");
    drop(last);
    server.stop();
    let line = server.summary();
    assert!(line.contains("302 connections accepted"), "{line}");
    assert!(line.contains(" 0 active;"), "{line}");
    // Resets are neither timeouts nor peers that vanished (keepalive).
    assert!(!line.contains("timeouts"), "{line}");
    assert!(!line.contains("vanished"), "{line}");
    // Nothing but the start-up, hint and shutdown lines at the default level.
    assert!(server.seen.len() <= 5, "log spam: {:#?}", server.seen);
}

fn per_source_cap_resets_only_the_excess_from_one_address(engine: Engine) {
    let server = TestServer::start(
        builder(engine)
            .tcp(([127, 0, 0, 1], 0))
            .max_per_source(Some(2)),
    );
    let (a, first) = try_client(server.addr, DEADLINE);
    let (b, second) = try_client(server.addr, DEADLINE);
    assert_eq!((a, b), (Fate::Echoed, Fate::Echoed));
    let (c, _) = try_client(server.addr, DEADLINE);
    assert_eq!(c, Fate::Refused, "a third client from one address");
    // Reset, not closed: the read fails at once and cannot pass for the
    // end of an echo.
    // (So quick that it may already show in `connect`.)
    let got = TcpStream::connect_timeout(&server.addr, DEADLINE).and_then(|mut third| {
        third.set_read_timeout(Some(DEADLINE))?;
        third.read(&mut [0u8; 1])
    });
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{got:?}"
    );
    // Another address is not affected.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    other.connect(&server.addr.into()).unwrap();
    let mut other = TcpStream::from(other);
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    other.write_all(b"o").unwrap();
    assert_eq!(read_n(&mut other, 1), b"o");
    // A slot freed is a slot regained.
    drop(first);
    wait_for("the first client to be gone", || {
        server.handle.stats().active == 2
    });
    assert_eq!(try_client(server.addr, DEADLINE).0, Fate::Echoed);
    drop(second);
    assert_eq!(server.handle.stats().refused_per_source, 2);
}

/// A TCP connection from `source` (a 127.0.0.x address) with read and write
/// timeouts.
fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    try_connect_from(source, addr).expect("connect")
}

fn try_connect_from(source: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&addr.into(), DEADLINE)?;
    let s = TcpStream::from(socket);
    s.set_read_timeout(Some(DEADLINE))?;
    s.set_write_timeout(Some(DEADLINE))?;
    Ok(s)
}

/// Slowloris: one address holds every slot with silent connections and
/// reconnects whenever one is closed. A well-behaved client from another
/// address is still served within about `--reclaim-idle` + 1 s, and keeps
/// being served; a busy connection of the attacker's is never reclaimed;
/// the reclaiming is logged once.
fn a_silent_crowd_cannot_lock_a_full_server(engine: Engine) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    let mut server = Binary::spawn(&on_engine(
        engine,
        // 3 s: long enough that the busy connection below, echoing every
        // 300 ms, is never mistaken for idle on a loaded machine.
        &["--max-connections", "32", "--reclaim-idle", "3", "0"],
    ));
    let addr = server.tcp_addr();
    let stop = Arc::new(AtomicBool::new(false));
    // 31 silent connections, each reopened as soon as the server closes it.
    let attackers: Vec<_> = (0..31)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut reconnects = 0u32;
                let started = Instant::now();
                while !stop.load(SeqCst) && started.elapsed() < DEADLINE {
                    let mut s = connect_from([127, 0, 0, 1], addr);
                    s.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    let mut b = [0u8; 1];
                    while !stop.load(SeqCst) && started.elapsed() < DEADLINE {
                        match s.read(&mut b) {
                            Ok(0) => break, // reclaimed: come back at once
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                    reconnects += 1;
                }
                reconnects
            })
        })
        .collect();
    // And one busy connection of theirs, echoing all the time on a thread of
    // its own, so no stall of this test's thread can make it look idle.
    let busy = {
        let stop = Arc::clone(&stop);
        let mut busy = connect_from([127, 0, 0, 1], addr);
        thread::spawn(move || {
            let started = Instant::now();
            while !stop.load(SeqCst) && started.elapsed() < DEADLINE {
                busy.write_all(b"b").unwrap();
                let mut b = [0u8; 1];
                if busy.read_exact(&mut b).is_err() {
                    return false; // reclaimed
                }
                thread::sleep(Duration::from_millis(100));
            }
            true
        })
    };
    wait_for("the server to be full", || {
        // A 33rd client would wait: probe with a short read timeout.
        let (fate, _) = try_client(addr, Duration::from_millis(200));
        fate == Fate::Hanging
    });
    let start = Instant::now();
    let mut good = connect_from([127, 0, 0, 2], addr);
    good.write_all(b"hello").unwrap();
    assert_eq!(read_n(&mut good, 5), b"hello");
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "served only after {waited:?}"
    );
    for i in 0..5u8 {
        thread::sleep(Duration::from_millis(300));
        good.write_all(&[i]).unwrap();
        assert_eq!(read_n(&mut good, 1), [i], "still served");
    }
    stop.store(true, SeqCst);
    assert!(busy.join().unwrap(), "a busy connection was reclaimed");
    for a in attackers {
        a.join().unwrap();
    }
    server.stop();
    let line = server.summary();
    assert!(
        line.contains("idle reclaimed for waiting clients"),
        "{line}"
    );
    let warnings = server.count_lines("every slot taken and clients waiting");
    assert_eq!(warnings, 1, "logged once per episode: {:#?}", server.seen);
}

/// A peer that vanishes (no FIN, no reset: here its network goes down) is
/// found by TCP keepalive and its slot freed. Runs the server and a client
/// in a private network namespace, where taking `lo` down makes every
/// keepalive probe go unanswered.
#[test]
fn keepalive_finds_a_vanished_peer_and_frees_its_slot() {
    let probe = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        eprintln!("skipped: cannot create a network namespace here (unshare -n needs root)");
        return;
    }
    let ip = std::process::Command::new("ip").arg("-V").output();
    if !matches!(ip, Ok(o) if o.status.success()) {
        eprintln!("skipped: the `ip` command (iproute2) is not installed");
        return;
    }
    let script = r#"
import queue, socket, subprocess, sys, threading, time
server_bin = sys.argv[1]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
srv = subprocess.Popen([server_bin, "-v", "--max-connections", "1", "--keepalive", "1", "0"],
                       stderr=subprocess.PIPE, text=True)
line = srv.stderr.readline()
assert line.startswith("listening on tcp "), line
host, port = line.split()[-1].rsplit(":", 1)
c = socket.create_connection((host, int(port)), timeout=10)
c.sendall(b"x"); assert c.recv(1) == b"x"
subprocess.run(["ip", "link", "set", "lo", "down"], check=True)   # the peer vanishes
# A thread reads the server's lines, so that waiting for one is bounded: a
# server that says nothing fails the test instead of hanging it.
lines = queue.Queue()
threading.Thread(target=lambda: [lines.put(l) for l in srv.stderr], daemon=True).start()
deadline = time.time() + 30
seen = []
while time.time() < deadline:
    try:
        l = lines.get(timeout=max(0.01, deadline - time.time()))
    except queue.Empty:
        continue
    seen.append(l)
    if "vanished" in l:
        break
else:
    srv.kill()
    sys.exit("keepalive never closed the connection: %r" % seen)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
c2 = socket.create_connection((host, int(port)), timeout=10)   # the one slot is free
c2.sendall(b"y"); assert c2.recv(1) == b"y", "not served after the slot was freed"
srv.terminate()
try:
    srv.wait(timeout=15)
except subprocess.TimeoutExpired:
    srv.kill()
    sys.exit("the server did not stop on SIGTERM")
rest = ""
while True:
    try:
        rest += lines.get(timeout=2)
    except queue.Empty:
        break
assert "1 vanished (keepalive)" in rest, rest
print("ok")
"#;
    let out = std::process::Command::new("unshare")
        .args(["-n", "python3", "-c", script])
        .arg(env!("CARGO_BIN_EXE_echo-server"))
        .output()
        .expect("run python3 in a network namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

engine_tests! {
    a_silent_crowd_cannot_lock_a_full_server,
    out_of_file_descriptors_resets_extra_clients_and_recovers,
    the_descriptor_limit_caps_connections_and_keeps_room_for_metrics,
    a_stalled_reader_holds_bounded_memory_until_the_write_timeout,
    a_client_that_sends_256_mib_before_reading_gets_it_all_back,
    a_storm_of_resets_and_silent_clients_disturbs_no_one,
    per_source_cap_resets_only_the_excess_from_one_address,
}

/// A UDP port served by one socket cannot be joined: no other socket can
/// bind it with `SO_REUSEPORT` and take a share of its datagrams. (With
/// several receive threads the server's own sockets share it, which the
/// kernel allows only to the same user.)
#[test]
fn a_single_udp_socket_does_not_share_its_port() {
    let mut server = Binary::spawn(&["--udp", "--udp-threads", "1", "0"]);
    let udp: SocketAddr = server.listening("udp").parse().unwrap();
    let intruder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    intruder.set_reuse_port(true).unwrap();
    let joined = intruder.bind(&udp.into());
    assert!(joined.is_err(), "another socket joined {udp}");
    server.stop();
}

/// The UDP buffer asked for is granted to root (SO_RCVBUFFORCE), silently;
/// to another user only up to net.core.rmem_max, with one warning saying
/// what was granted and which sysctl to raise.
#[test]
fn a_udp_buffer_beyond_rmem_max_is_granted_to_root_and_warned_about_otherwise() {
    if skip_unless_root("compare with another user") {
        return;
    }
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(212_992);
    // Twice the system's maximum, in MiB, at least 1.
    let asked = format!("{}M", (2 * rmem_max).div_ceil(1 << 20));
    let warned = |server: &Binary| server.count_lines("receive buffer, not the");
    let args = ["--udp", "--udp-threads", "2", "--udp-buffer", &asked, "0"];
    let mut root = Binary::spawn(&args);
    let _ = root.listening("udp");
    assert_eq!(warned(&root), 0, "{:#?}", root.seen);
    root.stop();

    let mut other = spawn_as_a_stranger_with_nproc(1, &args, 100);
    let _ = other.listening("udp");
    assert_eq!(warned(&other), 1, "{:#?}", other.seen);
    assert!(other.logged("net.core.rmem_max"), "{:#?}", other.seen);
    other.stop();
}

/// A live Unix socket another user's server owns, which this user may not
/// connect to, is neither taken for stale nor replaced: the server refuses
/// to start and the other server keeps its socket.
#[test]
fn a_live_unix_socket_it_cannot_reach_is_left_alone() {
    use std::os::unix::fs::PermissionsExt;
    if skip_unless_root("run the server as another user") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Anyone may create and remove files here (no sticky bit).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("root.sock");
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut server = spawn_as_a_stranger_with_nproc(2, &["--unix", path.to_str().unwrap()], 100);
    assert_eq!(server.wait_exit().code(), Some(1), "{:#?}", server.seen);
    assert!(server.logged("Permission denied"), "{:#?}", server.seen);
    // Still root's, still answering.
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    live.set_nonblocking(true).unwrap();
    assert!(live.accept().is_ok(), "the live socket was replaced");
}

/// A burst while connections are still arriving: half of 1,000 new
/// connections each send 100 KB at once without reading yet, the other half
/// stay silent, all on one loop. Every sender gets every byte back. (An
/// outside attack broke the uring loops so: receives that found every
/// buffer taken, the silent connections' among them, waited for buffers
/// rationed in order; the silent ones used up the ration and some senders
/// were never read again, later closed as idle with their bytes unechoed.)
#[test]
fn a_burst_among_arriving_connections_is_echoed_to_every_sender() {
    let mut engines = vec![("events", Engine::Events)];
    #[cfg(feature = "uring")]
    engines.extend([("uring", Engine::Uring), ("auto", Engine::Auto)]);
    for (name, _) in engines {
        let mut server = Binary::spawn(&[
            "--engine",
            name,
            "--event-loops",
            "1",
            "--thread-connections",
            "0",
            "--max-connections",
            "2000",
            "--backlog",
            "2048",
            "0",
        ]);
        let addr = server.tcp_addr();
        let n = 1000;
        let size = 100_000;
        let clients: Vec<TcpStream> = (0..n).map(|_| connect(addr)).collect();
        let mut sent = vec![0usize; n / 2];
        for (c, sent) in clients.iter().zip(&mut sent) {
            c.set_nonblocking(true).unwrap();
            *sent = match (&*c).write(&vec![b'w'; size]) {
                Ok(k) => k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) => panic!("{e}"),
            };
        }
        // Not reading for a while: the echoes fill the sockets' buffers.
        thread::sleep(Duration::from_secs(3));
        let mut got = vec![0usize; n / 2];
        let mut buf = vec![0u8; 1 << 16];
        let start = Instant::now();
        while got != sent {
            assert!(
                start.elapsed() < DEADLINE,
                "{name}: {} of {} senders still wait for their echo",
                got.iter().zip(&sent).filter(|(g, s)| g < s).count(),
                n / 2
            );
            for (c, got) in clients.iter().zip(&mut got) {
                loop {
                    match (&*c).read(&mut buf) {
                        Ok(0) => panic!("{name}: closed"),
                        Ok(k) => *got += k,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{name}: {e}"),
                    }
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        drop(clients);
        server.stop();
    }
}
