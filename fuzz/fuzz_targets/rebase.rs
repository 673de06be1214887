//! Fuzz target: `Rebaser::configure` with a rebase buffer and `rebase` of a changeset, both split
//! from one input (see `liteorm_fuzz::check_rebase`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| liteorm_fuzz::check_rebase(data));
