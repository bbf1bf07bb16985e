//! Socket activation: listening sockets passed by systemd (or any service
//! manager following its protocol), so the server can serve port 7 without
//! running as root.

use crate::sys;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// Takes the sockets passed the systemd way: `LISTEN_PID` names this process
/// and `LISTEN_FDS` counts descriptors starting at 3. Returns none when the
/// variables are absent or meant for another process. Each descriptor is
/// marked close-on-exec.
///
/// The descriptors are taken once per process: the first call owns them,
/// and every later call returns none (a second owner of the same
/// descriptors would close them under the first). The first call also
/// removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the
/// environment, as `sd_listen_fds(1)` does, so that child processes do not
/// take them for theirs.
///
/// # Errors
///
/// `InvalidData` if `LISTEN_FDS` is not a number, or a descriptor it
/// announces is not open.
pub fn systemd_sockets() -> io::Result<Vec<OwnedFd>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    take_once(&TAKEN, FIRST_FD)
}

/// [`systemd_sockets`] with its once-flag and first descriptor given, so
/// that tests can pass descriptors of their own.
fn take_once(taken: &AtomicBool, first_fd: i32) -> io::Result<Vec<OwnedFd>> {
    if taken.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let (pid, count) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS"));
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let (Ok(pid), Ok(count)) = (pid, count) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count: i32 = count.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("LISTEN_FDS is not a number: {count:?}"),
        )
    })?;
    if !(0..=1024).contains(&count) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("LISTEN_FDS out of range: {count}"),
        ));
    }
    let mut fds = Vec::with_capacity(count as usize);
    for fd in first_fd..first_fd + count {
        // The service manager passed this descriptor to this process
        // (LISTEN_PID), for it to own; it is taken once (`taken`).
        let Some(owned) = sys::fd::adopt_inherited(fd) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("LISTEN_FDS announces fd {fd}, which is not open"),
            ));
        };
        fds.push(owned);
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    /// The first call owns the descriptors and clears the variables; a
    /// second call (or a child process) gets none, so no descriptor ever
    /// has two owners.
    #[test]
    fn descriptors_are_taken_once_and_the_variables_cleared() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let first = 900;
        // A descriptor number this test process does not otherwise use;
        // `take_once` becomes its one owner.
        sys::fd::duplicate_onto(listener.as_fd(), first).unwrap();
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_FDNAMES", "echo");
        let taken = AtomicBool::new(false);
        let fds = take_once(&taken, first).unwrap();
        assert_eq!(fds.len(), 1);
        assert_eq!(fds[0].as_raw_fd(), first);
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            assert!(std::env::var_os(name).is_none(), "{name} is still set");
        }
        // Even with the variables set again, the second call takes nothing.
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        std::env::set_var("LISTEN_FDS", "1");
        assert!(take_once(&taken, first).unwrap().is_empty());
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
    }
}
