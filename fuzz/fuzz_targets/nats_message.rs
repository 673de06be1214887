//! Fuzz target: a JetStream message's headers and payload as a follower decodes them (see
//! `liteorm_fuzz::nats_message`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| liteorm_fuzz::nats_message::check(data));
