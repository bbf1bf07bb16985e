//! Bulk echo on Linux without copying through user space: `splice(2)` moves
//! what arrived on the socket into a pipe, and from the pipe back into the
//! same socket, as page references. Used only once a connection sends in
//! bulk (see [`echo_until_bulk`](crate::echo_until_bulk)), so small and idle
//! connections never pay for the pipe's two descriptors.

use crate::sys;
use socket2::Socket;
use std::io;
use std::os::fd::AsFd;

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

/// How a spliced echo ended, with the bytes it echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spliced {
    /// The client closed its side: everything is echoed.
    Finished(u64),
    /// Urgent data (kept inline) is next in the stream, and TCP will not
    /// splice past the urgent mark: `splice` returns 0 as if at end of
    /// file. Everything before the mark is echoed; the caller goes on with
    /// plain reads, which do take the urgent byte.
    AtUrgentMark(u64),
}

/// Echoes everything until end of file (or the urgent mark) through a
/// pipe. `received` is told of every chunk taken from the socket, `written`
/// of every chunk sent back. Returns `Err((Side::Read,
/// ErrorKind::Unsupported))` before consuming anything if this socket cannot
/// be spliced.
///
/// `splice` into a socket does not take `MSG_NOSIGNAL`, so SIGPIPE is
/// blocked in the calling thread first: a vanished client then shows as an
/// `EPIPE` error, as with every other write.
pub(crate) fn echo(
    socket: &Socket,
    mut received: impl FnMut(usize),
    mut written: impl FnMut(usize),
) -> Result<Spliced, (Side, io::Error)> {
    sys::signal::block_sigpipe().map_err(|e| (Side::Read, e))?;
    let (pipe_out, pipe_in) = sys::pipe::pipe().map_err(|e| (Side::Read, e))?;
    // Failure only means a smaller pipe.
    let capacity = match sys::pipe::set_capacity(pipe_in.as_fd(), PIPE_SIZE) {
        Ok(n) if n > 0 => n,
        _ => 64 * 1024,
    };
    let fd = socket.as_fd();
    let mut total: u64 = 0;
    let mut first = true;
    loop {
        let n = match sys::pipe::splice(fd, pipe_in.as_fd(), capacity) {
            // Also what TCP returns at the urgent mark: only a peek tells.
            Ok(0) if at_end_of_file(socket) => return Ok(Spliced::Finished(total)),
            Ok(0) => return Ok(Spliced::AtUrgentMark(total)),
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
            let m = sys::pipe::splice(pipe_out.as_fd(), fd, left).map_err(|e| (Side::Write, e))?;
            if m == 0 {
                return Err((Side::Write, io::ErrorKind::WriteZero.into()));
            }
            written(m);
            left -= m;
        }
        total += n as u64;
    }
}

/// Whether the client has closed its side: a peek finds end of file, not
/// a byte (an error or "would block" is not end of file either: the caller's
/// plain reads will tell).
fn at_end_of_file(socket: &Socket) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(
        socket.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT),
        Ok(0)
    )
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
            let ended = echo(&server, |_| (), |n| sent += n)
                .map_err(|(_, e)| e)
                .unwrap();
            (ended, sent)
        });
        let mut reader = client.try_clone().unwrap();
        let collector = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        client.write_all(&data).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let (ended, sent) = engine.join().unwrap();
        // The engine returned: close the server side so the reader sees EOF.
        let n = data.len();
        assert_eq!((ended, sent), (Spliced::Finished(n as u64), n));
        drop(client);
        let got = collector.join().unwrap();
        assert!(got.len() <= data.len() && got == data[..got.len()]);
    }

    /// TCP will not splice past urgent data: the echo stops there, having
    /// echoed everything before it, and says so rather than taking the
    /// stop for end of file (which lost the urgent byte and reset the
    /// connection under the echo still owed).
    #[test]
    fn the_urgent_mark_stops_the_splice_without_losing_a_byte() {
        let (mut client, server) = pair();
        server.set_out_of_band_inline(true).unwrap();
        client.write_all(&[5; 100_000]).unwrap();
        socket2::SockRef::from(&client)
            .send_out_of_band(b"U")
            .unwrap();
        let engine = std::thread::spawn(move || {
            let ended = echo(&server, |_| (), |_| ()).map_err(|(_, e)| e).unwrap();
            (ended, server)
        });
        let mut back = vec![0; 100_000];
        client.read_exact(&mut back).unwrap();
        assert!(back.iter().all(|&b| b == 5));
        let (ended, server) = engine.join().unwrap();
        assert_eq!(ended, Spliced::AtUrgentMark(100_000));
        // The urgent byte is next, for a plain read.
        let mut rest = [0u8; 8];
        assert_eq!((&server).read(&mut rest).unwrap(), 1);
        assert_eq!(rest[0], b'U');
    }

    /// `splice` into a dead socket raises SIGPIPE unless it is blocked: with
    /// SIGPIPE at its default action (terminate), the test process survives.
    #[test]
    fn a_vanished_client_is_an_error_not_a_signal() {
        let (mut client, server) = pair();
        client.write_all(&[1; 4096]).unwrap();
        server.shutdown(Shutdown::Write).unwrap();
        // SIGPIPE at its default action for the whole process; every other
        // write in this process passes MSG_NOSIGNAL.
        let result = sys::signal::with_default_sigpipe(|| {
            std::thread::spawn(move || echo(&server, |_| (), |_| ())).join()
        })
        .unwrap();
        let (side, e) = result.unwrap_err();
        assert_eq!((side, e.kind()), (Side::Write, io::ErrorKind::BrokenPipe));
    }
}
