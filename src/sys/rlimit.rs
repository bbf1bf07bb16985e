//! Resource limits (`getrlimit(2)`, `setrlimit(2)`).

use std::io;

/// A limited resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// `RLIMIT_NOFILE`: open descriptors.
    OpenFiles,
    /// `RLIMIT_NPROC`: tasks (processes and threads) of the real user.
    Processes,
}

impl Resource {
    fn raw(self) -> RawResource {
        match self {
            Resource::OpenFiles => libc::RLIMIT_NOFILE,
            Resource::Processes => libc::RLIMIT_NPROC,
        }
    }
}

// The type `getrlimit` takes its resource as: not `c_int` on glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
type RawResource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type RawResource = libc::c_int;

/// The value of an unlimited limit (`RLIM_INFINITY`), as [`get`] gives it.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every Unix
pub(crate) const UNLIMITED: u64 = libc::RLIM_INFINITY as u64;

/// A soft and a hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The limit enforced (`rlim_cur`).
    pub(crate) soft: u64,
    /// The ceiling up to which the soft limit may be raised (`rlim_max`).
    pub(crate) hard: u64,
}

/// This process's limits for `resource`.
pub(crate) fn get(resource: Resource) -> io::Result<Limits> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed in.
    if unsafe { libc::getrlimit(resource.raw(), &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every Unix
    Ok(Limits {
        soft: lim.rlim_cur as u64,
        hard: lim.rlim_max as u64,
    })
}

/// Sets this process's limits for `resource` (values from [`get`]).
/// Only the command line raises a limit.
#[cfg(feature = "cli")]
pub(crate) fn set(resource: Resource, limits: Limits) -> io::Result<()> {
    let wanted = libc::rlimit {
        rlim_cur: limits.soft as libc::rlim_t,
        rlim_max: limits.hard as libc::rlim_t,
    };
    // SAFETY: setrlimit only reads the struct passed in.
    if unsafe { libc::setrlimit(resource.raw(), &wanted) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
