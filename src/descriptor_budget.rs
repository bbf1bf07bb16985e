//! How many connections this process's descriptors allow, worked out at
//! start-up once the listeners are bound, so that clients beyond the limit
//! wait in the backlog instead of being reset for want of a descriptor, and
//! the descriptors the server needs for itself (its event loops, the
//! metrics endpoint, splice pipes) are still there when it needs them.
//!
//! Each connection takes one descriptor. The soft `RLIMIT_NOFILE` (which
//! the command line raises to the hard limit) bounds them all, together
//! with what is open already.

/// Descriptors left for whatever the process opens later besides
/// connections and what the caller reserves: the splice pipes of the few
/// connections that may use them (two each), log files, a child process's
/// pipes.
const HEADROOM: u64 = 32;

/// At most this many connections, and the limit that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DescriptorBudget {
    pub(crate) connections: u64,
    /// The soft `RLIMIT_NOFILE`.
    pub(crate) limit: u64,
}

impl DescriptorBudget {
    /// The budget for `limit` descriptors with `open` open now and
    /// `reserved` more to come for the server's own use.
    pub(crate) fn from_limit(limit: u64, open: u64, reserved: u64) -> DescriptorBudget {
        DescriptorBudget {
            connections: limit.saturating_sub(open + reserved + HEADROOM),
            limit,
        }
    }

    /// This process's budget now, or `None` where the limit or the
    /// descriptors in use cannot be read (no limit is assumed then).
    pub(crate) fn of_this_process(reserved: u64) -> Option<DescriptorBudget> {
        let (limit, open) = (soft_limit()?, open_descriptors()?);
        Some(DescriptorBudget::from_limit(limit, open, reserved))
    }
}

#[cfg(unix)]
fn soft_limit() -> Option<u64> {
    use crate::sys::rlimit::{self, Resource};
    // RLIM_INFINITY is u64::MAX, which leaves any connection limit as it is.
    rlimit::get(Resource::OpenFiles).ok().map(|l| l.soft)
}

#[cfg(not(unix))]
fn soft_limit() -> Option<u64> {
    None
}

/// Descriptors open now (the entries of /proc/self/fd, less the one the
/// listing itself holds).
#[cfg(target_os = "linux")]
fn open_descriptors() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

#[cfg(not(target_os = "linux"))]
fn open_descriptors() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_open_reserved_and_the_headroom_come_off_the_limit() {
        let b = DescriptorBudget::from_limit(1024, 20, 40);
        assert_eq!(b.connections, 1024 - 20 - 40 - HEADROOM);
        assert_eq!(b.limit, 1024);
        assert_eq!(DescriptorBudget::from_limit(64, 50, 40).connections, 0);
    }

    /// What is read agrees with the process: its limit, and at least the
    /// three standard descriptors, growing by one with a file opened.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_budget_that_counts_its_descriptors() {
        let open = open_descriptors().unwrap();
        assert!(open >= 3, "stdin, stdout and stderr at least: {open}");
        use crate::sys::rlimit::{self, Resource};
        let lim = rlimit::get(Resource::OpenFiles).unwrap();
        assert_eq!(soft_limit(), Some(lim.soft));
        let before = DescriptorBudget::of_this_process(0).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let after = DescriptorBudget::of_this_process(0).unwrap();
        drop(file);
        assert!(before.limit >= 3 && before.connections < before.limit);
        // Other tests open and close descriptors meanwhile: allow for them.
        assert!(
            after.connections <= before.connections + 16,
            "{before:?} {after:?}"
        );
    }
}
