//! The synchronisation primitives of the connection limit, the shutdown flag
//! and the connection table: std's, or, in the crate's unit tests built with
//! `RUSTFLAGS="--cfg shuttle"`, the model checker's, so that the model checks
//! (`src/testing/model_checks.rs`, docs/model-checking.md) run the production code
//! under many thread schedules.

#[cfg(all(test, shuttle))]
pub(crate) use shuttle::sync::{atomic::AtomicUsize, Arc, Condvar, Mutex, MutexGuard, PoisonError};
#[cfg(not(all(test, shuttle)))]
pub(crate) use std::sync::{atomic::AtomicUsize, Arc, Condvar, Mutex, MutexGuard, PoisonError};
