//! Fuzz target: the streaming `apply`, `invert` and `concat`, reading the input in small chunks
//! (see `liteorm_fuzz::ApplyTarget::check_stream`).
#![no_main]

use std::sync::OnceLock;

use liteorm_fuzz::ApplyTarget;

/// One database and runtime for the whole run; each apply is rolled back.
static TARGET: OnceLock<ApplyTarget> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| TARGET.get_or_init(ApplyTarget::new).check_stream(data));
