//! Fuzz target: rows of the change log table read back by replication (see
//! `liteorm_fuzz::log_row`).
#![no_main]

use std::sync::LazyLock;

use liteorm_fuzz::log_row::LogRowTarget;

static TARGET: LazyLock<LogRowTarget> = LazyLock::new(LogRowTarget::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| TARGET.check(data));
