//! `poll(2)` on one descriptor.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Whether `fd` becomes readable within `wait` (waits longer than
/// `i32::MAX` milliseconds are cut to that). An interrupted or failed call
/// says not readable: the caller asks again.
pub(crate) fn readable_within(fd: BorrowedFd<'_>, wait: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd. Its result adds nothing: `revents`
    // stays 0 when nothing is ready, the wait ended or the call
    // failed (EINTR: the caller asks again).
    unsafe { libc::poll(&mut pfd, 1, ms) };
    pfd.revents & libc::POLLIN != 0
}
