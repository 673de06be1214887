//! Fuzz target: `Changeset::from_bytes` / `Patchset::from_bytes` on arbitrary bytes, then
//! `changes()` on whatever they accept.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| liteorm_fuzz::check_validate(data));
