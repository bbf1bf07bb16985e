//! Open-file limit: `hold` with 10,000 connections needs 10,000
//! descriptors, far over the usual soft limit of 1024. The soft limit may
//! be raised up to the hard one without privileges, so it is, at start.

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit
/// now in force, or `None` if it cannot be read.
#[cfg(unix)]
// `rlim_t` is u64 on Linux but not on every Unix, so the conversions stay.
#[allow(clippy::useless_conversion)]
pub fn raise_nofile() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid `rlimit`; the call only reads it. It
        // can fail (macOS refuses an unlimited soft limit): the old limit
        // then stays and is what we report.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(u64::from(raised.rlim_cur));
        }
    }
    Some(u64::from(limit.rlim_cur))
}

#[cfg(not(unix))]
pub fn raise_nofile() -> Option<u64> {
    None
}

/// Raises the limit and warns on stderr if `sockets` connections (plus a
/// few descriptors for the process itself) still do not fit: the run goes
/// ahead, and the connections that cannot be opened are counted as errors.
pub fn ensure_descriptors(sockets: usize) {
    const OWN: u64 = 32;
    if let Some(limit) = raise_nofile() {
        let needed = sockets as u64 + OWN;
        if needed > limit {
            eprintln!(
                "echo-bench: warning: open-file limit is {limit}, below the {needed} \
                 descriptors needed; connections beyond it will fail"
            );
        }
    }
}
