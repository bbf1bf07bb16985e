//! Unix stream sockets: the same echo, limits and shutdown as TCP, and safe
//! handling of whatever is already at the path.
#![cfg(unix)]

mod support;

use echo_server::Engine;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use support::*;

fn connect_unix(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

fn echoes_and_half_closes_then_removes_the_file_on_shutdown(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let server = TestServer::start(builder(engine).unix(&path));
    assert!(server.addrs[0].to_string().ends_with("echo.sock"));
    let mut c = connect_unix(&path);
    c.write_all(b"hello\0unix").unwrap();
    assert_eq!(read_n(&mut c, 10), b"hello\0unix");
    c.write_all(b" tail").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b" tail");
    let stats = server.stop();
    assert_eq!((stats.accepted, stats.bytes_echoed), (1, 15));
    assert!(!path.exists(), "socket file left behind");
}

fn replaces_a_stale_socket_file(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listening
    assert!(path.exists());
    let _server = TestServer::start(builder(engine).unix(&path));
    let mut c = connect_unix(&path);
    c.write_all(b"fresh").unwrap();
    assert_eq!(read_n(&mut c, 5), b"fresh");
}

fn never_takes_over_a_live_socket(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.sock");
    let live = UnixListener::bind(&path).unwrap();
    let err = builder(engine).unix(&path).build().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let msg = err.to_string();
    assert!(msg.contains(&format!("unix {}", path.display())), "{msg}");
    assert!(msg.contains("another server"), "{msg}");
    // The live server still has its socket.
    let _c = UnixStream::connect(&path).expect("still reachable");
    live.accept().expect("the live server still accepts");
}

fn refuses_a_path_that_is_not_a_socket(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "keep me").unwrap();
    let err = builder(engine).unix(&path).build().unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

/// A path that cannot even be looked up is refused with the reason the
/// lookup gave, not a later, vaguer one.
#[test]
fn a_path_that_cannot_be_looked_up_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, "").unwrap();
    let err = builder(Engine::Threads)
        .unix(file.join("x.sock"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("Not a directory"), "{err}");
    let long = dir.path().join("d".repeat(5000));
    let err = builder(Engine::Threads).unix(&long).build().unwrap_err();
    assert!(err.to_string().contains("File name too long"), "{err}");
}

/// The socket file is removed on shutdown only if it is still the server's:
/// a file put there since (another server's, or anything) stays.
#[test]
fn shutdown_leaves_a_file_that_replaced_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moved.sock");
    let server = TestServer::start(builder(Engine::Threads).unix(&path));
    std::fs::remove_file(&path).unwrap();
    // Same directory, so same device: only the inode tells them apart.
    std::fs::write(&path, "not yours").unwrap();
    server.stop();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not yours");
}

/// A live server whose backlog is full (it is busy, not gone) is still a
/// live server: the socket is not taken, and the message says why.
#[test]
fn a_live_socket_with_a_full_backlog_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let live = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    live.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
    live.listen(0).unwrap();
    // Fill the backlog: a Unix connect then fails at once with EAGAIN.
    let mut waiting = Vec::new();
    loop {
        let c = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        match c.connect(&socket2::SockAddr::unix(&path).unwrap()) {
            Ok(()) => waiting.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        assert!(waiting.len() < 10_000, "the backlog never filled");
    }
    let (status, stderr) = run_binary(&["--unix", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another server is listening"), "{stderr}");
    assert!(path.exists());
}

fn connection_limit_applies_to_unix_clients(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limit.sock");
    let server = TestServer::start(builder(engine).unix(&path).max_connections(1));
    let mut first = connect_unix(&path);
    first.write_all(b"1").unwrap();
    assert_eq!(read_n(&mut first, 1), b"1");
    let mut second = connect_unix(&path);
    second.write_all(b"2").unwrap();
    second
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    assert!(second.read(&mut [0; 1]).is_err(), "served beyond the limit");
    drop(first);
    second.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(read_n(&mut second, 1), b"2");
    assert_eq!(server.handle.stats().accepted, 2);
}

#[test]
fn binary_serves_unix_alone_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bin.sock");
    let mut server = Binary::spawn(&["--unix", path.to_str().unwrap()]);
    assert_eq!(server.listening("unix"), path.display().to_string());
    let mut c = connect_unix(&path);
    c.write_all(b"via binary").unwrap();
    assert_eq!(read_n(&mut c, 10), b"via binary");
    drop(c);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(!path.exists());
    assert_eq!(
        server
            .seen
            .iter()
            .filter(|l| l.starts_with("listening on"))
            .count(),
        1,
        "{:#?}",
        server.seen
    );
}

#[test]
fn binary_exits_1_on_a_live_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let (status, stderr) = run_binary(&["--unix", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another server is listening"), "{stderr}");
    assert!(path.exists());
}

/// A full server frees the slot of the connection idle longest for a
/// waiting client, and never that of a busy one.
fn a_full_server_reclaims_the_idlest_slot_for_a_waiting_client(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.sock");
    let server = TestServer::start(
        builder(engine)
            .unix(&path)
            .max_connections(2)
            .reclaim_idle(Some(std::time::Duration::from_millis(300))),
    );
    reclaims_the_idlest_slot(server, || connect_unix(&path));
}

engine_tests! {
    a_full_server_reclaims_the_idlest_slot_for_a_waiting_client,
    echoes_and_half_closes_then_removes_the_file_on_shutdown,
    replaces_a_stale_socket_file,
    never_takes_over_a_live_socket,
    refuses_a_path_that_is_not_a_socket,
    connection_limit_applies_to_unix_clients,
}
