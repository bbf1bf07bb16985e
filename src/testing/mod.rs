//! Tests and test support, kept apart from the modules that serve: nothing
//! outside this folder imports it, except the echo core's unit tests (and
//! the fuzz targets, through the `scripted` feature) for [`scripted`].

#[cfg(all(test, shuttle))]
mod model_checks;
#[cfg(test)]
mod properties;
pub mod scripted;
