//! Integration tests of liteorm-nats against a real `nats-server -js` on 127.0.0.1.

// Test helpers (not only `#[test]` functions) panic on unexpected errors on purpose.
#![allow(clippy::unwrap_used)]

mod bootstrap;
mod crash;
mod follow;
mod migrations;
mod publish;
mod secure;
mod support;
mod tamper;
