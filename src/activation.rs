//! Socket activation: listening sockets passed by systemd (or any service
//! manager following its protocol), so the server can serve port 7 without
//! running as root.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// Takes the sockets passed the systemd way: `LISTEN_PID` names this process
/// and `LISTEN_FDS` counts descriptors starting at 3. Returns none when the
/// variables are absent or meant for another process. Each descriptor is
/// marked close-on-exec. Call it once: the descriptors become owned.
///
/// # Errors
///
/// `InvalidData` if `LISTEN_FDS` is not a number, or a descriptor it
/// announces is not open.
pub fn systemd_sockets() -> io::Result<Vec<OwnedFd>> {
    let (Ok(pid), Ok(count)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
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
    for fd in FIRST_FD..FIRST_FD + count {
        // SAFETY: fcntl on any integer is safe; it fails for a closed fd.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("LISTEN_FDS announces fd {fd}, which is not open"),
            ));
        }
        // SAFETY: as above; keeps the socket from leaking into children.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        // SAFETY: the service manager passed this open descriptor to this
        // process (LISTEN_PID), for it to own; it is taken once.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(fds)
}
