//! When the thread engine echoes bulk through `splice(2)`: only while few
//! connections are open (each spliced echo holds a pipe, two descriptors),
//! never when asked not to. A test binary of its own, so that no other test
//! opens pipes in this process while it counts them.
#![cfg(target_os = "linux")]

mod support;

use echo_server::Engine;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;
use support::*;

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

/// One test: tests run at once in one process, and another test's pipes
/// would count.
#[test]
fn a_few_connections_splice_and_pay_one_pipe_each_many_do_not() {
    assert_eq!(pipes_of_a_bulk_echo(true, 0), 2, "splice holds a pipe");
    // At the limit, 8 open in all: still spliced; 9: the copy loop.
    assert_eq!(pipes_of_a_bulk_echo(true, 7), 2, "8 open");
    assert_eq!(pipes_of_a_bulk_echo(true, 8), 0, "9 open");
    assert_eq!(pipes_of_a_bulk_echo(false, 0), 0, "--no-splice");
}
