//! Fuzz target: `concat` of two changesets or two patchsets split from one input (see
//! `liteorm_fuzz::split_pair` for the format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| liteorm_fuzz::check_concat(data));
