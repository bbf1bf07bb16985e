//! Signal masks and actions (`pthread_sigmask(3)`, `signal(2)`): SIGPIPE.

use std::io;

/// Blocks SIGPIPE for the calling thread. A SIGPIPE raised by a write on
/// this thread then stays pending on it, which never unblocks it, and is
/// discarded when the thread ends.
#[cfg(target_os = "linux")]
pub(crate) fn block_sigpipe() -> io::Result<()> {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask for
    // the calling thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Runs `f` with SIGPIPE at its default action (terminate the process),
/// then puts the previous action back: a test that survives `f` shows that
/// `f` raised no SIGPIPE.
///
/// The action is the whole process's: only for tests, where every other
/// write passes `MSG_NOSIGNAL` (or blocks SIGPIPE first), so the window
/// harms no other test.
#[cfg(test)]
pub(crate) fn with_default_sigpipe<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: swaps the process's SIGPIPE action for the default (no
    // handler of ours is involved); see above for why that is harmless.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let result = f();
    // SAFETY: puts back the action signal returned above.
    unsafe { libc::signal(libc::SIGPIPE, previous) };
    result
}
