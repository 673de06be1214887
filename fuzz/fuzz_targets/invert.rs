//! Fuzz target: `Changeset::invert` on every changeset that `from_bytes` accepts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| liteorm_fuzz::check_invert(data));
