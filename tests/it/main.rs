//! The liteorm integration suite: one binary, one module per area.

// Test helpers (not only `#[test]` functions) panic on unexpected errors on purpose.
#![allow(clippy::unwrap_used)]

mod apply;
mod blobs;
mod capture;
mod conflicts;
mod crosscheck;
mod dialect;
mod gate;
mod replication;
mod session;
mod support;
