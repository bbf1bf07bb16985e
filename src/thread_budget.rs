//! How many connection threads the OS can give this process, worked out at
//! start-up from its limits, so that no number of clients can make the
//! process abort for want of a thread.
//!
//! A Rust thread on Linux takes about four memory mappings (its stack and
//! guard page, its signal stack and guard page), and a process may have at
//! most `vm.max_map_count` mappings (65,530 by default): about 16,000
//! threads. Threads are also tasks: `kernel.threads-max` and
//! `kernel.pid_max` bound them system-wide, `RLIMIT_NPROC` per user, and a
//! control group's `pids.max` per container or service unit. Past
//! any of these, spawning a thread fails at best and aborts the process at
//! worst (the signal stack allocation), so the server stays below all of
//! them, with headroom for the rest of the process and the system.

use std::fmt;

/// Memory mappings one connection thread takes.
const MAPS_PER_THREAD: u64 = 4;

/// Mappings left for everything else the process maps (libraries, heap
/// arenas, the event loops' buffers).
const MAP_HEADROOM: u64 = 2048;

/// Tasks (threads or processes) left for the rest of the system.
const TASK_HEADROOM: u64 = 1024;

/// The OS limits a thread budget is computed from; `None` where unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OsLimits {
    /// `vm.max_map_count`.
    pub(crate) max_map_count: Option<u64>,
    /// Mappings this process has now.
    pub(crate) maps_in_use: u64,
    /// `kernel.threads-max`.
    pub(crate) threads_max: Option<u64>,
    /// `kernel.pid_max`.
    pub(crate) pid_max: Option<u64>,
    /// `RLIMIT_NPROC` (soft), unless unlimited or not enforced (root).
    pub(crate) nproc: Option<u64>,
    /// Tasks running on the system now.
    pub(crate) tasks_in_use: u64,
    /// Tasks of our user now (what `RLIMIT_NPROC` counts).
    pub(crate) user_tasks: u64,
    /// The tightest `pids.max` of this process's control group and its
    /// ancestors, with the tasks that group holds now (`pids.current`).
    pub(crate) cgroup_pids: Option<CgroupPids>,
    /// Threads the server will run besides connection threads (signal
    /// handling, accept loops, event loops) that are not running yet.
    pub(crate) reserved: u64,
}

/// A control group's task limit and its use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupPids {
    pub(crate) max: u64,
    pub(crate) current: u64,
}

/// At most this many connection threads, and the limit that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThreadBudget {
    pub(crate) threads: usize,
    /// The limit that binds, or `None` when no limit is known.
    pub(crate) bound_by: Option<Bound>,
}

/// Which OS limit bounds the number of threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    MaxMapCount(u64),
    ThreadsMax(u64),
    PidMax(u64),
    Nproc(u64),
    CgroupPids(u64),
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::MaxMapCount(n) => write!(
                f,
                "vm.max_map_count is {n} and each thread takes {MAPS_PER_THREAD} mappings \
                 (raise it with `sysctl vm.max_map_count=N`)"
            ),
            Bound::ThreadsMax(n) => write!(
                f,
                "kernel.threads-max is {n} (raise it with `sysctl kernel.threads-max=N`)"
            ),
            Bound::PidMax(n) => write!(
                f,
                "kernel.pid_max is {n} (raise it with `sysctl kernel.pid_max=N`)"
            ),
            Bound::Nproc(n) => write!(
                f,
                "the process limit (RLIMIT_NPROC) is {n} (raise it with `ulimit -u`)"
            ),
            Bound::CgroupPids(n) => write!(
                f,
                "the control group's pids.max is {n} (raise the container's pids limit, \
                 or TasksMax= of the systemd unit)"
            ),
        }
    }
}

impl ThreadBudget {
    /// The budget these limits allow.
    pub(crate) fn from_limits(limits: &OsLimits) -> ThreadBudget {
        let reserved = limits.reserved;
        let tasks_left =
            |max: u64| max.saturating_sub(limits.tasks_in_use + reserved + TASK_HEADROOM);
        let candidates = [
            limits.max_map_count.map(|n| {
                let left = n.saturating_sub(limits.maps_in_use + MAP_HEADROOM);
                (
                    (left / MAPS_PER_THREAD).saturating_sub(reserved),
                    Bound::MaxMapCount(n),
                )
            }),
            limits
                .threads_max
                .map(|n| (tasks_left(n), Bound::ThreadsMax(n))),
            limits.pid_max.map(|n| (tasks_left(n), Bound::PidMax(n))),
            // Per user and usually small when set: exact, no headroom.
            limits.nproc.map(|n| {
                (
                    n.saturating_sub(limits.user_tasks + reserved),
                    Bound::Nproc(n),
                )
            }),
            // Counted for the group, exact like RLIMIT_NPROC.
            limits.cgroup_pids.map(|c| {
                (
                    c.max.saturating_sub(c.current + reserved),
                    Bound::CgroupPids(c.max),
                )
            }),
        ];
        match candidates.into_iter().flatten().min_by_key(|(n, _)| *n) {
            Some((n, bound)) => ThreadBudget {
                threads: usize::try_from(n).unwrap_or(usize::MAX),
                bound_by: Some(bound),
            },
            None => ThreadBudget {
                threads: usize::MAX,
                bound_by: None,
            },
        }
    }

    /// The budget of this process now, keeping `reserved` threads for the
    /// server's own use.
    pub(crate) fn of_this_process(reserved: usize) -> ThreadBudget {
        let mut limits = read_limits();
        limits.reserved = reserved as u64;
        ThreadBudget::from_limits(&limits)
    }
}

#[cfg(target_os = "linux")]
fn read_limits() -> OsLimits {
    use std::fs;
    let number = |path: &str| -> Option<u64> { fs::read_to_string(path).ok()?.trim().parse().ok() };
    let maps_in_use = fs::read("/proc/self/maps")
        .map(|maps| maps.iter().filter(|&&b| b == b'\n').count() as u64)
        .unwrap_or(0);
    // The fourth field of /proc/loadavg is "running/total" tasks.
    let tasks_in_use = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok())
        .unwrap_or(0);
    let nproc = nproc_limit();
    OsLimits {
        max_map_count: number("/proc/sys/vm/max_map_count"),
        maps_in_use,
        threads_max: number("/proc/sys/kernel/threads-max"),
        pid_max: number("/proc/sys/kernel/pid_max"),
        user_tasks: if nproc.is_some() { user_tasks() } else { 0 },
        nproc,
        tasks_in_use,
        cgroup_pids: fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|groups| cgroup_pids(&groups, |path| fs::read_to_string(path).ok())),
        reserved: 0,
    }
}

/// The tightest task limit over this process's control group and its
/// ancestors (each level's `pids.max` applies), given `/proc/self/cgroup`
/// and a way to read a file. cgroup v2 (`0::/path`, under /sys/fs/cgroup)
/// and v1's `pids` controller (`N:pids:/path`, under /sys/fs/cgroup/pids)
/// are both read; a level without a limit (`max`) or whose files cannot be
/// read is skipped.
#[cfg(target_os = "linux")]
fn cgroup_pids(
    proc_self_cgroup: &str,
    read: impl Fn(&std::path::Path) -> Option<String>,
) -> Option<CgroupPids> {
    use std::path::Path;
    let mut tightest: Option<CgroupPids> = None;
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let root = match controllers {
            "" => Path::new("/sys/fs/cgroup"),
            c if c.split(',').any(|c| c == "pids") => Path::new("/sys/fs/cgroup/pids"),
            _ => continue,
        };
        // Up from the process's own group to the root of the hierarchy.
        let mut level = Some(Path::new(path.trim()));
        while let Some(group) = level {
            let dir = root.join(group.strip_prefix("/").unwrap_or(group));
            let number = |name: &str| -> Option<u64> { read(&dir.join(name))?.trim().parse().ok() };
            if let (Some(max), Some(current)) = (number("pids.max"), number("pids.current")) {
                let here = CgroupPids { max, current };
                let left = |c: &CgroupPids| c.max.saturating_sub(c.current);
                if tightest.as_ref().is_none_or(|t| left(&here) < left(t)) {
                    tightest = Some(here);
                }
            }
            level = group.parent();
        }
    }
    tightest
}

/// Tasks (threads) of processes whose real user is ours, as
/// `RLIMIT_NPROC` counts them. Read once, at start-up.
#[cfg(target_os = "linux")]
fn user_tasks() -> u64 {
    let uid = crate::sys::user::real_uid().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 1;
    };
    let mut tasks = 0;
    for entry in dir.flatten() {
        // Processes only: not `self` or `thread-self`, which repeat ours.
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue; // not a process, or gone
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::split_whitespace)
        };
        let ours = field("Uid:").and_then(|mut ids| ids.next()) == Some(uid.as_str());
        if ours {
            tasks += field("Threads:")
                .and_then(|mut n| n.next()?.parse().ok())
                .unwrap_or(1);
        }
    }
    tasks.max(1)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn read_limits() -> OsLimits {
    // Without /proc only RLIMIT_NPROC is known, and of the user's tasks
    // only this process's.
    OsLimits {
        max_map_count: None,
        maps_in_use: 0,
        threads_max: None,
        pid_max: None,
        nproc: nproc_limit(),
        tasks_in_use: 0,
        user_tasks: 1,
        cgroup_pids: None,
        reserved: 0,
    }
}

#[cfg(not(unix))]
fn read_limits() -> OsLimits {
    OsLimits::default()
}

#[cfg(unix)]
fn nproc_limit() -> Option<u64> {
    use crate::sys::rlimit::{self, Resource};
    if crate::sys::user::is_root() {
        return None; // root is not held to RLIMIT_NPROC
    }
    match rlimit::get(Resource::Processes) {
        Ok(lim) if lim.soft != rlimit::UNLIMITED => Some(lim.soft),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's numbers when the crash was seen: 65,530 mappings,
    /// pid_max 32,768.
    fn typical() -> OsLimits {
        OsLimits {
            max_map_count: Some(65_530),
            maps_in_use: 120,
            threads_max: Some(190_000),
            pid_max: Some(32_768),
            nproc: None,
            tasks_in_use: 600,
            user_tasks: 1,
            cgroup_pids: None,
            reserved: 4,
        }
    }

    /// A container's or unit's `pids.max` binds when it is the tightest,
    /// counted against the tasks its group holds.
    #[test]
    fn a_cgroup_task_limit_binds_and_is_named() {
        let limits = OsLimits {
            cgroup_pids: Some(CgroupPids {
                max: 100,
                current: 30,
            }),
            ..typical()
        };
        let b = ThreadBudget::from_limits(&limits);
        assert_eq!(b.threads, 100 - 30 - 4);
        assert_eq!(b.bound_by, Some(Bound::CgroupPids(100)));
        assert!(b.bound_by.unwrap().to_string().contains("pids.max is 100"));
    }

    /// v2 and v1 layouts, limits at the leaf or an ancestor, `max` levels
    /// skipped: the level with the least room left wins.
    #[cfg(target_os = "linux")]
    #[test]
    fn cgroup_limits_are_read_up_the_hierarchy_in_v1_and_v2() {
        use std::collections::HashMap;
        let files: HashMap<&str, &str> = HashMap::from([
            ("/sys/fs/cgroup/a/b/c/pids.max", "max\n"),
            ("/sys/fs/cgroup/a/b/c/pids.current", "5\n"),
            // Looser than its parent, and met first.
            ("/sys/fs/cgroup/a/b/pids.max", "1000\n"),
            ("/sys/fs/cgroup/a/b/pids.current", "5\n"),
            ("/sys/fs/cgroup/a/pids.max", "50\n"),
            ("/sys/fs/cgroup/a/pids.current", "40\n"),
            ("/sys/fs/cgroup/pids/x/pids.max", "1000"),
            ("/sys/fs/cgroup/pids/x/pids.current", "7"),
            // Where a v1 memory group's path would lead under the pids
            // hierarchy: never read for it.
            ("/sys/fs/cgroup/pids/y/pids.max", "3"),
            ("/sys/fs/cgroup/pids/y/pids.current", "1"),
        ]);
        let read = |p: &std::path::Path| files.get(p.to_str()?).map(|s| s.to_string());
        assert_eq!(
            cgroup_pids("0::/a/b/c\n", read),
            Some(CgroupPids {
                max: 50,
                current: 40
            })
        );
        assert_eq!(
            cgroup_pids("12:pids:/x\n11:memory:/y\n0::/\n", read),
            Some(CgroupPids {
                max: 1000,
                current: 7
            })
        );
        assert_eq!(cgroup_pids("0::/none\n", read), None);
        assert_eq!(cgroup_pids("garbage", read), None);
    }

    #[test]
    fn mappings_bind_first_on_a_default_linux() {
        let b = ThreadBudget::from_limits(&typical());
        assert_eq!(b.threads, (65_530 - 120 - 2048) / 4 - 4);
        assert_eq!(b.bound_by, Some(Bound::MaxMapCount(65_530)));
        assert!(b.threads < 16_363, "below where the process aborted");
    }

    #[test]
    fn the_tightest_limit_wins_and_is_named() {
        let limits = OsLimits {
            pid_max: Some(4_000),
            ..typical()
        };
        let b = ThreadBudget::from_limits(&limits);
        assert_eq!(b.threads, 4_000 - 600 - 4 - 1024);
        assert_eq!(b.bound_by, Some(Bound::PidMax(4_000)));
        assert!(b
            .bound_by
            .unwrap()
            .to_string()
            .contains("kernel.pid_max is 4000"));
        // RLIMIT_NPROC counts only our user's tasks, and the threads the
        // server keeps for itself.
        let limits = OsLimits {
            nproc: Some(20),
            user_tasks: 3,
            ..typical()
        };
        let b = ThreadBudget::from_limits(&limits);
        assert_eq!(b.bound_by, Some(Bound::Nproc(20)));
        assert_eq!(b.threads, 20 - 3 - 4);
    }

    #[test]
    fn exhausted_limits_give_no_threads_and_unknown_ones_no_bound() {
        let limits = OsLimits {
            max_map_count: Some(1_000),
            maps_in_use: 900,
            ..typical()
        };
        assert_eq!(ThreadBudget::from_limits(&limits).threads, 0);
        let none = ThreadBudget::from_limits(&OsLimits::default());
        assert_eq!(none.threads, usize::MAX);
        assert_eq!(none.bound_by, None);
    }

    /// What `read_limits` finds agrees with /proc read another way: one
    /// mapping per line of /proc/self/maps (give or take the allocations
    /// in between), and at least this process's threads on the system.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_limits_read_agree_with_proc() {
        let limits = read_limits();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let lines = maps.lines().count() as u64;
        assert!(
            (lines / 2..=lines * 2).contains(&limits.maps_in_use),
            "{} mappings counted, /proc/self/maps has {lines} lines",
            limits.maps_in_use
        );
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let threads: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap();
        assert!(limits.tasks_in_use >= threads, "{limits:?}");
        assert!(limits.pid_max.is_some() && limits.max_map_count.is_some());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_positive_bounded_budget() {
        let b = ThreadBudget::of_this_process(4);
        assert!(b.threads > 0 && b.threads < usize::MAX, "{b:?}");
        assert!(b.bound_by.is_some());
    }
}
