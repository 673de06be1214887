//! The liteorm integration suite: one binary, one module per area.

mod apply;
mod capture;
mod dialect;
mod session;
mod support;
