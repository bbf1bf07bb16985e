//! Testing clients against this server: [`TestServer`], an echo server
//! in the test's own process, impaired as the test asks (pieces, delays, a
//! rate, resets, stalls; UDP drops, duplicates, reordering).
//!
//! The crate's own test support lives here too, kept apart from the
//! modules that serve: nothing outside this folder imports it, except the
//! echo core's unit tests (and the fuzz targets, through the `scripted`
//! feature) for `scripted`.

#[cfg(all(test, shuttle))]
mod model_checks;
#[cfg(test)]
mod properties;
#[cfg(any(test, feature = "scripted"))]
pub mod scripted;

mod fixture;
pub use fixture::{TestServer, TestServerBuilder};
