//! The system calls, each wrapped once in a safe function (layer 0). Every
//! `unsafe` block and every `libc` function call of the crate is here; the
//! crate root denies `unsafe_code` everywhere else. As in socket2 and mio,
//! the rest of the crate sees plain Rust types: descriptors as `OwnedFd` or
//! `BorrowedFd`, errors as `io::Error`, sizes as `usize` and `u64`.
//!
//! One file per concept, named after what it wraps, each compiled where its
//! callers are (the `cfg`s below match theirs). Nothing here imports from
//! the rest of the crate.

#[cfg(unix)]
pub(crate) mod fd;
#[cfg(target_os = "linux")]
pub(crate) mod mmsg;
#[cfg(target_os = "linux")]
pub(crate) mod pipe;
#[cfg(unix)]
pub(crate) mod poll;
#[cfg(unix)]
pub(crate) mod rlimit;
#[cfg(unix)]
pub(crate) mod signal;
#[cfg(any(test, not(target_os = "linux")))]
pub(crate) mod socket;
#[cfg(unix)]
pub(crate) mod sockopt;
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod thread;
#[cfg(all(target_os = "linux", feature = "uring"))]
pub(crate) mod uring;
#[cfg(unix)]
pub(crate) mod user;
