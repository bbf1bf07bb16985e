//! Bulk echo on Linux without copying through user space: `splice(2)` moves
//! what arrived on the socket into a pipe, and from the pipe back into the
//! same socket, as page references. Used only once a connection sends in
//! bulk (see [`echo_until_bulk`](crate::echo_until_bulk)), so small and idle
//! connections never pay for the pipe's two descriptors.

use socket2::Socket;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

/// Pipe capacity asked for: more per system call than the 64 KiB default.
/// The kernel may refuse (pipe-max-size); the default is fine then.
const PIPE_SIZE: usize = 256 * 1024;

/// Which half of the echo failed, so a timeout can be told apart: an idle
/// client (reading) from a client that does not read its echo (writing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Read,
    Write,
}

/// Echoes everything until end of file through a pipe. `received` is told
/// of every chunk taken from the socket, `written` of every chunk sent back. Returns `Err((Side::Read, ErrorKind::Unsupported))`
/// before consuming anything if this socket cannot be spliced.
///
/// `splice` into a socket does not take `MSG_NOSIGNAL`, so SIGPIPE is
/// blocked in the calling thread first: a vanished client then shows as an
/// `EPIPE` error, as with every other write.
pub(crate) fn echo(
    socket: &Socket,
    mut received: impl FnMut(usize),
    mut written: impl FnMut(usize),
) -> Result<u64, (Side, io::Error)> {
    block_sigpipe().map_err(|e| (Side::Read, e))?;
    let (pipe_out, pipe_in) = pipe().map_err(|e| (Side::Read, e))?;
    // SAFETY: fcntl on a pipe fd we own; failure only means a smaller pipe.
    let capacity = match unsafe {
        libc::fcntl(
            pipe_in.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            PIPE_SIZE as libc::c_int,
        )
    } {
        n if n > 0 => n as usize,
        _ => 64 * 1024,
    };
    let fd = socket.as_raw_fd();
    let mut total: u64 = 0;
    let mut first = true;
    loop {
        let n = match splice(fd, pipe_in.as_raw_fd(), capacity) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if first && e.raw_os_error() == Some(libc::EINVAL) => {
                return Err((Side::Read, io::ErrorKind::Unsupported.into()))
            }
            Err(e) => return Err((Side::Read, e)),
        };
        first = false;
        received(n);
        let mut left = n;
        while left > 0 {
            let m = splice(pipe_out.as_raw_fd(), fd, left).map_err(|e| (Side::Write, e))?;
            if m == 0 {
                return Err((Side::Write, io::ErrorKind::WriteZero.into()));
            }
            written(m);
            left -= m;
        }
        total += n as u64;
    }
}

/// One `splice` call, retried on `EINTR`.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both fds are open for the duration of the call; null
        // offsets are required for pipes and sockets.
        let n = unsafe {
            libc::splice(
                from,
                ptr::null_mut(),
                to,
                ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A pipe: (read end, write end), close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Blocks SIGPIPE for this thread. A SIGPIPE raised by `splice` then stays
/// pending on this thread, which never unblocks it, and is discarded when
/// the thread ends.
fn block_sigpipe() -> io::Result<()> {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask for
    // the calling thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, ptr::null_mut()) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::Duration;

    fn pair() -> (TcpStream, Socket) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let server = Socket::from(listener.accept().unwrap().0);
        (client, server)
    }

    #[test]
    fn echoes_a_stream_and_counts_it() {
        let (mut client, server) = pair();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let engine = std::thread::spawn(move || {
            let mut sent = 0;
            let total = echo(&server, |_| (), |n| sent += n)
                .map_err(|(_, e)| e)
                .unwrap();
            (total, sent)
        });
        let mut reader = client.try_clone().unwrap();
        let collector = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        client.write_all(&data).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let (total, sent) = engine.join().unwrap();
        // The engine returned: close the server side so the reader sees EOF.
        assert_eq!((total, sent), (data.len() as u64, data.len()));
        drop(client);
        let got = collector.join().unwrap();
        assert!(got.len() <= data.len() && got == data[..got.len()]);
    }

    /// `splice` into a dead socket raises SIGPIPE unless it is blocked: with
    /// SIGPIPE at its default action (terminate), the test process survives.
    #[test]
    fn a_vanished_client_is_an_error_not_a_signal() {
        let (mut client, server) = pair();
        client.write_all(&[1; 4096]).unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        // SAFETY: sets SIGPIPE to its default action for the whole process;
        // every other write in this process passes MSG_NOSIGNAL.
        let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let result = std::thread::spawn(move || echo(&server, |_| (), |_| ()))
            .join()
            .unwrap();
        unsafe { libc::signal(libc::SIGPIPE, previous) };
        let (side, e) = result.unwrap_err();
        assert_eq!((side, e.kind()), (Side::Write, io::ErrorKind::BrokenPipe));
    }
}
