//! The liteorm integration suite: one binary, one module per area.

// Test helpers (not only `#[test]` functions) panic on unexpected errors on purpose.
#![allow(clippy::unwrap_used)]

mod apply;
mod apply_flags;
mod blobs;
mod build;
mod capture;
mod capture_options;
mod change_filter;
mod conflicts;
mod crosscheck;
mod dialect;
mod diff;
mod gate;
mod group;
mod inspect;
mod migrations;
mod properties;
mod rebase;
mod regressions;
mod reliability;
mod replication;
mod routing;
mod session;
mod sqlx_executor;
mod stream;
mod support;
