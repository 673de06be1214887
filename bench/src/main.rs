//! `liteorm-bench`: the workloads of `shared/bench/WORKLOADS.md` (plus `stall` and
//! `replication`), each run for
//! liteorm (async, through the `Session` trait and the `liteorm_changeset` API on a multi-thread tokio
//! runtime) and for a raw baseline (synchronous libsqlite3-sys calls on one connection) in the
//! same process, printing one JSON line per implementation and three with the liteorm/raw ratios
//! (of the medians, of the bests, and the median of the per-repetition ratios).
//!
//! ```text
//! liteorm-bench capture|apply|conflicts|stall [--rows N] [--reps R] [--db mem|file]
//! liteorm-bench small|replication [--iters K] [--reps R] [--db mem|file]
//! ```
//!
//! What every field means, and how liteorm's figures map to WORKLOADS.md's, is in
//! `bench/README.md`.

mod apply;
mod capture;
mod capture_stream;
mod common;
mod conflicts;
mod diesel;
mod instr;
mod lite;
mod orm;
mod raw;
mod replication;
mod small;
mod stall;

use std::process::ExitCode;

use common::{BenchResult, Common, DbMode};
use lite::LiteDb;

const USAGE: &str = "\
usage: liteorm-bench <workload> [options]

workloads (WORKLOADS.md, plus stall and replication):
  capture    --rows N   (default 100000)  the mix with/without a session; changeset, patchset
  apply      --rows N   (default 100000)  apply, invert, apply the inverse; SQL replay
  small      --iters K  (default 10000)   one-row transactions, plain and with a session cycle
  conflicts  --rows N   (default 100000)  N updates, N/2 DATA conflicts omitted by a handler
  stall      --rows N   (default 1000000) lateness of a 1 ms ticker task during an apply
  replication --iters K (default 10000)   one-row transactions recorded by a ChangeLog and
                                          applied by a Replica; raw: the same with direct calls
  orm        --rows N   (default 100000)  the capture mix through SeaORM inside record and
                                          through sqlx queries inside capture, against the
                                          same writes with no capture (liteorm only)
  capture_stream --mb M (default 200)   peak memory of finishing a capture of about M MB:
                                          kept in memory against written to a writer
  diesel     --rows N   (default 100000)  the capture mix through Diesel inside
                                          liteorm_diesel::capture, against the same Diesel
                                          writes with no capture (liteorm only)

options:
  --reps R        repetitions, liteorm's and raw's interleaved; every timed figure is the
                  median (default 5); the ratio line (medians) is followed by ratio_best
                  (best over best) and ratio_paired (median of the per-repetition ratios)
  --db mem|file   private :memory: databases, or temp files with WAL + synchronous=NORMAL
                  (default mem)
  --impl both|liteorm|raw
                  run only one side, for profiling it (no ratio lines); default both
  --baseline PATH the rusqlite-baseline binary (bench/rusqlite-baseline): for capture, apply,
                  small and conflicts, run it once per repetition after liteorm and raw, and
                  print its line and the raw/rusqlite and liteorm/rusqlite ratios (each
                  with its _best and _paired lines)
";

/// The parsed command line.
struct Args {
    workload: String,
    rows: Option<i64>,
    iters: Option<usize>,
    mb: Option<i64>,
    reps: usize,
    db: DbMode,
    only: Option<&'static str>,
    baseline: Option<std::path::PathBuf>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    let workload = it.next().ok_or("no workload given")?.clone();
    let mut parsed = Args {
        workload,
        rows: None,
        iters: None,
        mb: None,
        reps: 5,
        db: DbMode::Mem,
        only: None,
        baseline: None,
    };
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("`{arg}` needs a value"));
        match arg.as_str() {
            "--rows" => {
                let v = value()?;
                let rows = v.parse::<i64>().map_err(|e| format!("--rows {v}: {e}"))?;
                if rows < 10 {
                    return Err("--rows must be at least 10".into());
                }
                parsed.rows = Some(rows);
            }
            "--iters" => {
                let v = value()?;
                let iters = v
                    .parse::<usize>()
                    .map_err(|e| format!("--iters {v}: {e}"))?;
                if iters == 0 {
                    return Err("--iters must be at least 1".into());
                }
                parsed.iters = Some(iters);
            }
            "--mb" => {
                let v = value()?;
                let mb = v.parse::<i64>().map_err(|e| format!("--mb {v}: {e}"))?;
                if mb < 1 {
                    return Err("--mb must be at least 1".into());
                }
                parsed.mb = Some(mb);
            }
            "--reps" => {
                let v = value()?;
                let reps = v.parse::<usize>().map_err(|e| format!("--reps {v}: {e}"))?;
                if reps == 0 {
                    return Err("--reps must be at least 1".into());
                }
                parsed.reps = reps;
            }
            "--db" => {
                parsed.db = match value()?.as_str() {
                    "mem" => DbMode::Mem,
                    "file" => DbMode::File,
                    other => return Err(format!("--db {other}: expected mem or file")),
                };
            }
            "--impl" => {
                parsed.only = match value()?.as_str() {
                    "both" => None,
                    "liteorm" => Some("liteorm"),
                    "raw" => Some("raw"),
                    other => return Err(format!("--impl {other}: expected both, liteorm or raw")),
                };
            }
            "--baseline" => parsed.baseline = Some(value()?.into()),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(parsed)
}

/// The workloads that the rusqlite baseline implements.
const BASELINE_WORKLOADS: [&str; 4] = ["capture", "apply", "small", "conflicts"];

/// The rusqlite baseline's invocation for one repetition of this run, if `--baseline` was
/// given and the workload is one it implements.
fn baseline(args: &Args) -> Option<common::Baseline> {
    let program = args.baseline.clone()?;
    if !BASELINE_WORKLOADS.contains(&args.workload.as_str()) {
        return None;
    }
    let mut cmd = vec![args.workload.clone()];
    if let Some(rows) = args.rows {
        cmd.extend(["--rows".to_owned(), rows.to_string()]);
    }
    if let Some(iters) = args.iters {
        cmd.extend(["--iters".to_owned(), iters.to_string()]);
    }
    cmd.extend(["--db".to_owned(), args.db.name().to_owned()]);
    cmd.extend(["--reps".to_owned(), "1".to_owned()]);
    // A multi-threaded process, as this one is (and as every process that runs liteorm is):
    // glibc's malloc and free skip their arena lock while a process has one thread.
    cmd.extend(["--threads".to_owned(), "2".to_owned()]);
    Some(common::Baseline {
        program,
        args: cmd,
        sqlite_options: raw::compile_options().ok()?,
        lines: std::cell::RefCell::new(Vec::new()),
    })
}

fn run(args: &Args) -> BenchResult<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let common = Common {
        db: args.db,
        reps: args.reps,
        sqlite: raw::libversion(),
        only: args.only,
        baseline: baseline(args),
    };
    // Both sides must run on the same SQLite for the ratios to mean anything.
    let probe = rt.block_on(LiteDb::open(args.db))?;
    let liteorm_sqlite = probe.session.info().version.clone();
    rt.block_on(probe.close());
    if liteorm_sqlite != common.sqlite {
        return Err(format!(
            "liteorm runs SQLite {liteorm_sqlite}, the raw baseline {}",
            common.sqlite
        )
        .into());
    }
    let rows = |default: i64| args.rows.unwrap_or(default);
    match args.workload.as_str() {
        "capture" => capture::run(&rt, &common, rows(100_000)),
        "apply" => apply::run(&rt, &common, rows(100_000)),
        "small" => small::run(&rt, &common, args.iters.unwrap_or(10_000)),
        "conflicts" => conflicts::run(&rt, &common, rows(100_000)),
        "stall" => stall::run(&rt, &common, rows(1_000_000)),
        "replication" => replication::run(&rt, &common, args.iters.unwrap_or(10_000)),
        "orm" => orm::run(&rt, &common, rows(100_000)),
        "diesel" => diesel::run(&common, rows(100_000)),
        "capture_stream" => capture_stream::run(&rt, &common, args.mb.unwrap_or(200)),
        other => Err(format!("unknown workload `{other}`\n\n{USAGE}").into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .first()
        .is_some_and(|a| matches!(a.as_str(), "-h" | "--help" | "help"))
    {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse(&args) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("liteorm-bench: error: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("liteorm-bench: {}: {err}", args.workload);
            ExitCode::FAILURE
        }
    }
}
