//! CI smoke test of the benchmark binary: every workload runs once with tiny sizes, prints its
//! liteorm, raw and ratio lines (of the medians, the bests and the pairs) as JSON, and passes its
//! content checks. No timing is asserted.

use std::process::Command;

use serde_json::Value;

/// Runs the binary with `args` and returns its stdout lines parsed as JSON objects.
fn run(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_liteorm-bench"))
        .args(args)
        .output()
        .expect("run liteorm-bench");
    assert!(
        out.status.success(),
        "liteorm-bench {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The `impl` of each line.
fn impls(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["impl"].as_str().unwrap_or("?"))
        .collect()
}

/// Checks the five lines of one workload: the implementations in order, the common fields, a
/// number for every listed figure on both implementations and on the three ratio lines, and
/// the same keys on the three ratio lines.
fn check(lines: &[Value], cmd: &str, db: &str, figures: &[&str], ratios: &[&str]) {
    assert_eq!(
        impls(lines),
        ["liteorm", "raw", "ratio", "ratio_best", "ratio_paired"],
        "{lines:?}"
    );
    for line in lines {
        assert_eq!(line["cmd"], cmd, "{line}");
        assert_eq!(line["db"], db, "{line}");
        assert_eq!(line["reps"], 1, "{line}");
        assert!(
            line["sqlite"].as_str().is_some_and(|v| v.starts_with('3')),
            "{line}"
        );
    }
    for line in &lines[..2] {
        for field in figures {
            assert!(line[field].is_number(), "{field} in {line}");
        }
        if line.get("content_checks").is_some() {
            assert_eq!(line["content_checks"], "passed", "{line}");
        }
    }
    let keys = |line: &Value| -> Vec<String> {
        let fields = line.as_object().expect("a JSON object");
        fields.keys().filter(|k| *k != "impl").cloned().collect()
    };
    for line in &lines[2..] {
        for field in ratios {
            assert!(line[field].is_number(), "{field} in {line}");
        }
        assert_eq!(keys(line), keys(&lines[2]), "{line}");
        // One repetition: its best is the median, and its only pair gives the same ratio.
        for key in keys(line) {
            assert_eq!(line[&key], lines[2][&key], "{key} in {line}");
        }
    }
}

#[test]
fn capture_runs() {
    let lines = run(&["capture", "--rows", "200", "--reps", "1"]);
    check(
        &lines,
        "capture",
        "mem",
        &[
            "mix_without_ms",
            "capture_ms",
            "changeset_ops",
            "patchset_bytes",
        ],
        &["mix_without_ms", "capture_ms", "capture_patchset_ms"],
    );
    assert_eq!(lines[0]["changeset_ops"], 220);
    assert_eq!(lines[1]["changeset_ops"], 220);
    // The split a wrapper cannot measure is reported as null, not made up.
    assert!(lines[0]["mix_with_ms"].is_null());
    assert!(lines[0]["session_create_delete_ms"].is_null());
    assert!(
        lines[1]["session_create_delete_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0)
    );
    assert!(lines[1]["mix_with_ms"].is_number());
}

#[test]
fn apply_runs() {
    let lines = run(&["apply", "--rows", "200", "--reps", "1"]);
    check(
        &lines,
        "apply",
        "mem",
        &["apply_ms", "invert_ms", "invert_apply_ms", "replay_sql_ms"],
        &["apply_ms", "apply_rows_per_s"],
    );
    assert_eq!(lines[0]["conflict_handler_calls"], 0);
}

#[test]
fn one_side_prints_no_ratio_lines() {
    let lines = run(&["conflicts", "--rows", "200", "--reps", "2", "--impl", "raw"]);
    assert_eq!(impls(&lines), ["raw"], "{lines:?}");
    assert_eq!(lines[0]["reps"], 2);
}

#[test]
fn apply_runs_on_files() {
    let lines = run(&["apply", "--rows", "200", "--reps", "1", "--db", "file"]);
    check(&lines, "apply", "file", &["apply_ms"], &["apply_ms"]);
}

#[test]
fn small_runs() {
    let lines = run(&["small", "--iters", "200", "--reps", "1"]);
    check(
        &lines,
        "small",
        "mem",
        &["plain_p50_us", "session_p50_us", "p50_ratio"],
        &["session_p50_us"],
    );
    assert_eq!(lines[0]["iters"], 200);
    assert_eq!(
        lines[0]["changeset_bytes_per_tx"],
        lines[1]["changeset_bytes_per_tx"]
    );
}

#[test]
fn conflicts_runs() {
    let lines = run(&["conflicts", "--rows", "200", "--reps", "1"]);
    check(
        &lines,
        "conflicts",
        "mem",
        &["apply_ms", "clean_apply_ms"],
        &["rows_per_s", "clean_rows_per_s"],
    );
    assert_eq!(lines[0]["handler_calls"], 100);
    assert_eq!(lines[1]["handler_calls"], 100);
}

#[test]
fn stall_runs() {
    let lines = run(&["stall", "--rows", "200", "--reps", "1"]);
    check(
        &lines,
        "stall",
        "mem",
        &["apply_ms", "idle_tick_p99_ms"],
        &["apply_ms"],
    );
}

#[test]
fn replication_runs() {
    let lines = run(&["replication", "--iters", "200", "--reps", "1"]);
    check(
        &lines,
        "replication",
        "mem",
        &[
            "record_ms",
            "record_tx_per_s",
            "apply_ms",
            "apply_tx_per_s",
            "total_tx_per_s",
            "log_bytes_per_tx",
        ],
        &["record_tx_per_s", "apply_tx_per_s", "total_tx_per_s"],
    );
    assert_eq!(lines[0]["iters"], 200);
    assert_eq!(lines[0]["log_bytes_per_tx"], lines[1]["log_bytes_per_tx"]);
}

#[test]
fn bad_options_are_usage_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_liteorm-bench"))
        .args(["capture", "--db", "disk"])
        .output()
        .expect("run liteorm-bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected mem or file"));
}

#[test]
fn diesel_runs() {
    let lines = run(&["diesel", "--rows", "200", "--reps", "1", "--db", "file"]);
    assert_eq!(impls(&lines), ["diesel", "ratio"], "{lines:?}");
    assert_eq!(lines[0]["content_checks"], "passed");
    for field in ["plain_ms", "captured_ms"] {
        assert!(lines[0][field].is_number(), "{field} in {}", lines[0]);
    }
    assert!(lines[1]["diesel_capture_ratio"].is_number(), "{}", lines[1]);
}
