//! What a running server holds of the process it runs in: the pipes of
//! spliced bulk echoes, the CPU time of idle event loops. A test binary of
//! its own, and its tests one at a time, so that nothing else in the
//! process opens pipes or runs event loops while they count.
#![cfg(target_os = "linux")]

mod support;

use echo_server::Engine;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;
use support::*;

/// Held by each test: they count what the whole process holds.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Pipes open in this process (the server runs in it).
fn pipes() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}

/// The pipes a bulk echo holds with `others` idle connections open beside
/// it: its client sends more than the buffers hold and reads nothing, so
/// the echo is stalled in the middle, pipe and all, while they are counted.
fn pipes_of_a_bulk_echo(splice: bool, others: usize) -> usize {
    let server = TestServer::start(
        builder(Engine::Threads)
            .tcp(([127, 0, 0, 1], 0))
            .splice(splice)
            // The stalled echo is cut off at once when the test stops.
            .shutdown_grace(Duration::from_millis(100)),
    );
    let idle: Vec<TcpStream> = (0..others).map(|_| connect(server.addr)).collect();
    wait_for("the idle connections", || {
        server.handle.stats().active == others as u64
    });
    let before = pipes();
    let bulk = connect(server.addr);
    let mut writer = bulk.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        // Ends with an error once the server closes at shutdown.
        let _ = writer.write_all(&vec![7u8; 32 << 20]);
    });
    let mut echoed = 0;
    wait_for("the bulk echo to stall", || {
        std::thread::sleep(Duration::from_millis(200));
        let now = server.handle.stats().bytes_echoed;
        std::mem::replace(&mut echoed, now) == now && now > 0
    });
    let held = pipes() - before;
    drop(bulk);
    drop(idle);
    server.stop();
    writing.join().unwrap();
    held
}

/// When the thread engine echoes bulk through `splice(2)`: only while few
/// connections are open (each spliced echo holds a pipe, two descriptors),
/// never when asked not to.
#[test]
fn a_few_connections_splice_and_pay_one_pipe_each_many_do_not() {
    let _alone = alone();
    assert_eq!(pipes_of_a_bulk_echo(true, 0), 2, "splice holds a pipe");
    // At the limit, 8 open in all: still spliced; 9: the copy loop.
    assert_eq!(pipes_of_a_bulk_echo(true, 7), 2, "8 open");
    assert_eq!(pipes_of_a_bulk_echo(true, 8), 0, "9 open");
    assert_eq!(pipes_of_a_bulk_echo(false, 0), 0, "--no-splice");
}

/// CPU time (user + system, in clock ticks) of this process's threads
/// named `name`.
fn cpu_ticks_of_threads(name: &str) -> u64 {
    threads_of("self")
        .into_iter()
        .filter(|(_, n)| n == name)
        .filter_map(|(dir, _)| {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the command (which is in parentheses): state is
            // the 3rd field, utime the 14th and stime the 15th.
            let after = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after.split(' ').collect();
            Some(fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?)
        })
        .sum()
}

/// Idle event loops sleep in the kernel: with connections open but quiet
/// and timeouts to watch (a sweep per second), they take next to no CPU,
/// not a core spinning.
#[test]
fn idle_event_loops_take_no_cpu() {
    let _alone = alone();
    let server = TestServer::start(
        builder(Engine::Events)
            .tcp(([127, 0, 0, 1], 0))
            .idle_timeout(Some(Duration::from_secs(60))),
    );
    let mut quiet: Vec<TcpStream> = (0..4).map(|_| connect(server.addr)).collect();
    for c in &mut quiet {
        c.write_all(b"x").unwrap();
        assert_eq!(read_n(c, 1), b"x");
    }
    let before = cpu_ticks_of_threads("echo-events");
    let start = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks_of_threads("echo-events") - before;
    // Clock ticks are 1/100 s on Linux; allow a tenth of the wall time, far
    // above an idle loop's share and far below a spinning one's.
    let allowed = start.elapsed().as_millis() as u64 / 10 / 10;
    assert!(used <= allowed, "idle event loops used {used} ticks in 2 s");
    drop(quiet);
    server.stop();
}
