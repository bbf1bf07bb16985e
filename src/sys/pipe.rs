//! Pipes and `splice(2)`: moving bytes between a socket and a pipe inside
//! the kernel (`pipe2(2)`, `fcntl(2)` `F_SETPIPE_SZ`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

/// A pipe: (read end, write end), close-on-exec.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for the pipe `fd` to hold `size` bytes (`F_SETPIPE_SZ`, capped at
/// `c_int::MAX`); returns the capacity the kernel granted, which it rounds
/// up to a page. Fails past `pipe-max-size` for an unprivileged process.
pub(crate) fn set_capacity(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on a borrowed, open fd, with an integer argument.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One `splice` call from `from` to `to` (one of them a pipe), of at most
/// `len` bytes, retried on `EINTR`. Returns the bytes moved: 0 at end of
/// file (and, on TCP, at the urgent mark).
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both fds are open for the duration of the call; null
        // offsets are required for pipes and sockets.
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                ptr::null_mut(),
                to.as_raw_fd(),
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
