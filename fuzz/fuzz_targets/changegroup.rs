//! Fuzz target: a `Changegroup` of two changesets or two patchsets split from one input, the
//! second added whole or through `add_filtered` (see `liteorm_fuzz::check_changegroup`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| liteorm_fuzz::check_changegroup(data));
