//! Replays every committed input of every fuzz target through its check, as an ordinary test
//! (no sanitizer, no libFuzzer): the corpus (`fuzz/corpus/<target>/`) and every input a fuzzer
//! ever found a problem with (`fuzz/regressions/<target>/`), so that a fix that regresses fails
//! `cargo xtask test` instead of waiting for the next fuzzing run.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use liteorm_fuzz::log_row::LogRowTarget;
use liteorm_fuzz::{
    ApplyTarget, check_changegroup, check_concat, check_invert, check_rebase, check_validate,
    nats_message,
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The files of `fuzz/<kind>/<target>/`, sorted (none if the directory does not exist).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `check` on every corpus and regression input of `target`; fails naming each input
/// that panicked. Returns how many inputs ran.
fn replay(target: &str, check: &dyn Fn(&[u8])) -> usize {
    let corpus = inputs("corpus", target);
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ is empty");
    let all: Vec<PathBuf> = corpus
        .into_iter()
        .chain(inputs("regressions", target))
        .collect();
    let failed: Vec<String> = all
        .iter()
        .filter(|path| {
            let data = fs::read(path).expect("a readable input");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail their check: {failed:#?}",
        failed.len(),
        all.len()
    );
    all.len()
}

#[test]
fn every_target_is_replayed_here() {
    // A new target without a replay below (or a corpus) fails this test.
    let replayed = [
        "validate",
        "invert",
        "concat",
        "apply",
        "changegroup",
        "stream",
        "rebase",
        "log_row",
        "nats_message",
    ];
    let mut targets: Vec<String> = fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| e.expect("a directory entry").path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    targets.sort();
    let mut expected: Vec<String> = replayed.iter().map(|t| (*t).to_owned()).collect();
    expected.sort();
    assert_eq!(targets, expected);
    // Every regression belongs to a target.
    if let Ok(dirs) = fs::read_dir(fuzz_dir().join("regressions")) {
        for dir in dirs {
            let dir = dir.expect("a directory entry");
            if !dir.path().is_dir() {
                continue;
            }
            let name = dir.file_name();
            let name = name.to_string_lossy();
            assert!(
                replayed.contains(&&*name),
                "fuzz/regressions/{name}: no such target"
            );
        }
    }
}

#[test]
fn validate_inputs_replay() {
    replay("validate", &check_validate);
}

#[test]
fn invert_inputs_replay() {
    replay("invert", &check_invert);
}

#[test]
fn concat_inputs_replay() {
    replay("concat", &check_concat);
}

#[test]
fn changegroup_inputs_replay() {
    replay("changegroup", &check_changegroup);
}

#[test]
fn rebase_inputs_replay() {
    // The leak `sqlite3rebaser_configure` had is among them (as a regression).
    assert!(!inputs("regressions", "rebase").is_empty());
    replay("rebase", &check_rebase);
}

#[test]
fn apply_inputs_replay() {
    let target = ApplyTarget::new();
    replay("apply", &|data| target.check(data));
}

#[test]
fn stream_inputs_replay() {
    let target = ApplyTarget::new();
    replay("stream", &|data| target.check_stream(data));
}

#[test]
fn log_row_inputs_replay() {
    let target = LogRowTarget::new();
    replay("log_row", &|data| target.check(data));
}

#[test]
fn nats_message_inputs_replay() {
    replay("nats_message", &nats_message::check);
}
