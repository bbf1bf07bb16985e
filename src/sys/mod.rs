//! The system calls the safe layers above cannot make safely: all of the
//! crate's `unsafe` code, each block with the reason it is sound.

#[cfg(all(target_os = "linux", feature = "uring"))]
pub(crate) mod uring;
