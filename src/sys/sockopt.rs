//! `setsockopt(2)` for the integer options socket2 has no call for.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Sets the integer socket option `name` at `level` (`SOL_SOCKET`,
/// `IPPROTO_IP`, ...) to `value`.
pub(crate) fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a c_int of the length given.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match result {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Bytes a TCP socket has sent but the peer has not acknowledged, plus
/// those not sent yet (`SIOCOUTQ`, Linux): 0 once everything written has
/// reached the peer's kernel.
#[cfg(target_os = "linux")]
pub(crate) fn unacknowledged(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: a valid fd and a pointer to a c_int, which SIOCOUTQ writes.
    let result = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut bytes) };
    match result {
        0 => Ok(usize::try_from(bytes).unwrap_or(0)),
        _ => Err(io::Error::last_os_error()),
    }
}
