//! Fuzz target: `apply` of every changeset or patchset that `from_bytes` accepts onto a small real
//! in-memory database (`liteorm_fuzz::SCHEMA`), with a handler that omits or replaces.
#![no_main]

use std::sync::OnceLock;

use liteorm_fuzz::ApplyTarget;

/// One database and runtime for the whole run; each input is rolled back.
static TARGET: OnceLock<ApplyTarget> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| TARGET.get_or_init(ApplyTarget::new).check(data));
