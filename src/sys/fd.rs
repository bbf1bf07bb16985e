//! Descriptor flags (`fcntl(2)` `F_GETFD`/`F_SETFD`): taking ownership of
//! descriptors this process inherited.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of `fd`, a descriptor this process inherited, and marks
/// it close-on-exec so that it does not leak into children. `None` if `fd`
/// is not open.
///
/// Only for descriptors nothing else in the process owns: socket activation
/// calls it for those the service manager passed (`LISTEN_PID` names this
/// process), and takes them once per process, so each has one owner.
pub(crate) fn adopt_inherited(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: fcntl on any integer is safe; it fails for a closed fd.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: as above; keeps the socket from leaking into children.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open (F_GETFD succeeded) and, by this
    // function's contract, owned by nobody else in the process.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Duplicates `fd` onto the descriptor number `target` (`dup2(2)`), for
/// tests that pass descriptors the way a service manager does. `target`
/// must be a number nothing in the process uses: `dup2` would close it.
#[cfg(test)]
pub(crate) fn duplicate_onto(
    fd: std::os::fd::BorrowedFd<'_>,
    target: RawFd,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 on a borrowed, open descriptor; `target` is unused by
    // this function's contract, so no descriptor owned elsewhere is closed.
    match unsafe { libc::dup2(fd.as_raw_fd(), target) } {
        n if n == target => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
