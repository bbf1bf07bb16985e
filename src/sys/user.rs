//! User ids (`getuid(2)`, `geteuid(2)`).

/// The real user id of this process (the one `RLIMIT_NPROC` counts tasks
/// of).
pub(crate) fn real_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// Whether this process runs as root (effective user id 0), which no
/// `RLIMIT_NPROC` holds.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0
}
