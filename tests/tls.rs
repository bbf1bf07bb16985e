//! TLS through the binary.
