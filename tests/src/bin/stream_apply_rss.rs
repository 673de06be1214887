//! Applies a changeset file to a database by stream and reports this process's peak resident
//! memory, for the streaming test (`tests/it/stream.rs`), which runs it as a child process so
//! that the figure covers the apply alone.
//!
//! Usage: `stream_apply_rss CHANGESET_FILE DATABASE_FILE`. Prints one line,
//! `baseline_kib=B peak_kib=P changes=N applied=A`, where B is the peak before the apply.

use std::fs::File;
use std::io::BufReader;
use std::process::ExitCode;

use liteorm_sqlite::SqliteSession;

/// `VmHWM` (peak resident set size) of this process, in KiB.
fn peak_rss_kib() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM in /proc/self/status".to_owned())
}

async fn run(changeset: &str, database: &str) -> Result<String, Box<dyn std::error::Error>> {
    let db = SqliteSession::open(database).await?;
    let input = BufReader::with_capacity(1 << 16, File::open(changeset)?);
    let baseline = peak_rss_kib()?;
    let report = liteorm_changeset::stream::apply(&db, input).await?;
    let peak = peak_rss_kib()?;
    Ok(format!(
        "baseline_kib={baseline} peak_kib={peak} changes={} applied={}",
        report.changes, report.applied
    ))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [changeset, database] = args.as_slice() else {
        eprintln!("usage: stream_apply_rss CHANGESET_FILE DATABASE_FILE");
        return ExitCode::from(2);
    };
    match run(changeset, database).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("stream_apply_rss: {err}");
            ExitCode::FAILURE
        }
    }
}
