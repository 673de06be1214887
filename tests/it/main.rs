//! The liteorm integration suite: one binary, one module per area.

mod dialect;
mod session;
mod support;
