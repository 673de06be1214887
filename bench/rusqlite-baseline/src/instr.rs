//! Instruction counting for `cargo xtask bench --callgrind` (a copy of liteorm-bench's
//! `bench/src/instr.rs`; the two differ only in this sentence): Valgrind client requests that
//! mark the timed regions, so that callgrind counts only what the wall clock times.
//!
//! [`end`] writes what was counted since the last mark to a dump labelled with the figures it
//! belongs to (`CALLGRIND_DUMP_STATS_AT`), which zeroes the counters, so consecutive segments need
//! no [`begin`] between them; [`begin`] discards what was counted since the last mark by dumping
//! it under the label `-`. (`CALLGRIND_ZERO_STATS` would not do: it leaves the pending counts of
//! threads that are not running, so the untimed populating that liteorm's blocking thread did
//! before the region was counted in it.) A label is a comma-separated list of figure names: a segment that
//! belongs to several figures (creating raw's session belongs to `capture_ms` and
//! `capture_patchset_ms`) is counted once per name. Both requests are global: every thread's
//! instructions count, liteorm's blocking threads and sqlx's worker included.
//!
//! Outside Valgrind a client request is a handful of no-op instructions (rotations that add up
//! to 128 bits and `xchg rbx, rbx`); on targets other than x86-64 the marks do nothing.

use std::ffi::CStr;
use std::time::Instant;

/// `VG_USERREQ_TOOL_BASE('C','T')`: the first of callgrind's client requests.
const CALLGRIND_BASE: u64 = (b'C' as u64) << 24 | (b'T' as u64) << 16;
/// `VG_USERREQ__DUMP_STATS_AT`.
const DUMP_STATS_AT: u64 = CALLGRIND_BASE + 3;

/// One Valgrind client request with one argument (`VALGRIND_DO_CLIENT_REQUEST_STMT` of
/// `valgrind.h` for amd64).
#[cfg(target_arch = "x86_64")]
fn client_request(request: u64, arg: u64) {
    let args: [u64; 6] = [request, arg, 0, 0, 0, 0];
    let mut result: u64 = 0;
    // SAFETY: Valgrind's "special instruction" sequence: the four rotations of rdi add up to
    // 128 bits, so they leave it unchanged, and `xchg rbx, rbx` changes nothing; natively the
    // sequence has no effect. Under Valgrind, the core reads the request from the six words at
    // rax (live for the call) and writes the result to rdx. Callgrind's requests only read the
    // NUL-terminated label that `arg` points to, if any, which the caller keeps alive.
    unsafe {
        std::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            in("rax") args.as_ptr(),
            inout("rdx") result,
            options(nostack),
        );
    }
    let _ = result;
}

#[cfg(not(target_arch = "x86_64"))]
fn client_request(_request: u64, _arg: u64) {}

/// Starts a counted region: discards what was counted since the last mark (into a dump
/// labelled `-`, which `cargo xtask bench --callgrind` ignores).
pub(crate) fn begin() {
    client_request(DUMP_STATS_AT, c"-".as_ptr() as u64);
}

/// Ends a counted segment: dumps what was counted since the last mark under `label`.
pub(crate) fn end(label: &CStr) {
    client_request(DUMP_STATS_AT, label.as_ptr() as u64);
}

/// A timed region: the wall clock, and the instructions for `--callgrind`.
pub(crate) struct Timer(Instant);

impl Timer {
    /// Starts the clock and a counted region ([`begin`]).
    pub(crate) fn start() -> Self {
        begin();
        Timer(Instant::now())
    }

    /// Milliseconds since [`Timer::start`]; ends the counted segment under `label` ([`end`]).
    pub(crate) fn stop(self, label: &CStr) -> f64 {
        let elapsed = self.0.elapsed();
        end(label);
        elapsed.as_secs_f64() * 1e3
    }
}
