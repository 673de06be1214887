//! `cargo xtask bench`: builds the `liteorm-bench` binary in release and runs the chosen
//! workloads one after another, streaming their JSON lines to stdout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The help text of `cargo xtask bench`.
pub(crate) const USAGE: &str = "\
usage: cargo xtask bench [--rows N] [--iters K] [--mb M] [--reps R] [--db mem|file] [workload...]
       cargo xtask bench --callgrind [--rows N] [--iters K] [--reps R] [--db mem|file] [workload...]

  Builds liteorm-bench in release and runs each workload (default: all of them, in the order
  capture capture_stream apply small conflicts stall replication orm diesel nats) with WORKLOADS.md's defaults
  (rows 100000, iters 10000, reps 5, db mem; stall: rows 1000000). --rows applies to every row-based
  workload, stall too; --iters to small and replication. Prints one JSON line per
  implementation (liteorm, raw) and three of liteorm/raw ratios per workload, all from the same
  interleaved repetitions: \"ratio\" (of the medians), \"ratio_best\" (best over best: lowest
  time, highest rate) and \"ratio_paired\" (the median of the per-repetition ratios).

  capture, apply, small and conflicts also run the rusqlite baseline (bench/rusqlite-baseline,
  its own workspace, built into target/rusqlite-baseline), once per repetition after liteorm
  and raw: one more line (\"impl\":\"rusqlite\") and the raw/rusqlite and liteorm/rusqlite ratios,
  each with its _best and _paired line.

  --callgrind: instead of timing, runs each side of each workload (default: capture apply small
  conflicts replication) once under `valgrind --tool=callgrind` at a small fixed size (defaults:
  rows 2000, iters 300, reps 1) and prints, per workload, one JSON line per side with the
  instructions of each timed figure (all threads, only inside the timed regions) and one line
  of ratios per pair of sides. Instruction counts do not depend on the machine's load. The
  callgrind files are left in target/callgrind/.

  capture_stream: the peak memory of finishing a capture of about --mb M megabytes (default 200)
  with the changeset kept in memory against written to a writer as SQLite generates it.

  orm: the capture mix written through SeaORM inside liteorm_seaorm::record and through sqlx
  queries inside capture, against the same writes with no capture (one line each, then the
  ratios; targets 1.15 and 1.10).

  diesel: the capture mix written through Diesel inside liteorm_diesel::capture, against the
  same Diesel writes in an immediate_transaction (one line, then the ratio; target 1.10).

  nats: one-row transactions replicated through NATS JetStream on loopback by liteorm (recorded
  on a primary, published, applied on a follower) and by a raw JetStream pipeline (the same
  changesets published with async-nats, applied with sqlite3changeset_apply), rounds interleaved
  (liteorm-nats's nats_bench example; it starts its own `nats-server -js`, which
  scripts/install-deps.sh installs when it is missing). One JSON line per scenario (record_only,
  drain, burst, paced at half of liteorm's burst rate) and round, the medians and bests, and the
  liteorm/raw ratios. --iters sets its transaction count (default 2000), --reps its rounds
  (default 3).
";

/// Every workload, in the order they run by default.
const WORKLOADS: [&str; 10] = [
    "capture",
    "capture_stream",
    "apply",
    "small",
    "conflicts",
    "stall",
    "replication",
    "orm",
    "diesel",
    "nats",
];

/// The workloads sized by `--iters` (transactions) rather than `--rows`.
const ITERATED: [&str; 2] = ["small", "replication"];

/// The workloads that the rusqlite baseline implements.
const BASELINE_WORKLOADS: [&str; 4] = ["capture", "apply", "small", "conflicts"];

/// The workloads `--callgrind` can count, in the order they run by default.
const CALLGRIND_WORKLOADS: [&str; 5] = ["capture", "apply", "small", "conflicts", "replication"];

/// The figures compared under `--callgrind`, per workload (the timed regions' labels).
fn callgrind_figures(workload: &str) -> &'static [&'static str] {
    match workload {
        "capture" => &["mix_without_ms", "capture_ms", "capture_patchset_ms"],
        "apply" => &["apply_ms", "invert_ms", "invert_apply_ms", "replay_sql_ms"],
        "small" => &["plain_tx", "session_tx"],
        "conflicts" => &["apply_ms", "clean_apply_ms"],
        "replication" => &["record_ms", "apply_ms"],
        _ => &[],
    }
}

/// The NATS replication benchmark (an example of liteorm-nats).
const NATS_BENCH: [&str; 4] = ["-p", "liteorm-nats", "--example", "nats_bench"];

/// Options forwarded to the bench binary, and the workloads to run.
struct BenchOptions {
    forwarded: Vec<(String, String)>,
    workloads: Vec<String>,
    callgrind: bool,
}

fn parse(args: &[String]) -> Result<BenchOptions, String> {
    let mut opts = BenchOptions {
        forwarded: Vec::new(),
        workloads: Vec::new(),
        callgrind: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rows" | "--iters" | "--reps" | "--db" | "--mb" => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("`{arg}` needs a value"))?;
                opts.forwarded.push((arg.clone(), value.clone()));
            }
            "--callgrind" => opts.callgrind = true,
            workload if WORKLOADS.contains(&workload) => {
                if !opts.workloads.iter().any(|w| w == workload) {
                    opts.workloads.push(workload.to_owned());
                }
            }
            other => {
                return Err(format!(
                    "unknown option or workload `{other}` (workloads: {})",
                    WORKLOADS.join(", ")
                ));
            }
        }
    }
    if opts.callgrind {
        if let Some(other) = opts
            .workloads
            .iter()
            .find(|w| !CALLGRIND_WORKLOADS.contains(&w.as_str()))
        {
            return Err(format!(
                "--callgrind counts {}, not {other}",
                CALLGRIND_WORKLOADS.join(", ")
            ));
        }
        if opts.forwarded.iter().any(|(flag, _)| flag == "--mb") {
            return Err("--callgrind takes no --mb".into());
        }
    }
    if opts.workloads.is_empty() {
        let all: &[&str] = if opts.callgrind {
            &CALLGRIND_WORKLOADS
        } else {
            &WORKLOADS
        };
        opts.workloads = all.iter().map(|w| (*w).to_owned()).collect();
    }
    Ok(opts)
}

/// The arguments of the bench binary for `workload`: `--iters` only for the per-transaction
/// workloads (`small`, `replication`), `--rows` for the others.
fn workload_args(workload: &str, forwarded: &[(String, String)]) -> Vec<String> {
    if workload == "nats" {
        // The transaction count and the rounds (interleaved liteorm and raw runs) apply to the
        // NATS benchmark; it always uses files.
        return forwarded
            .iter()
            .filter_map(|(flag, value)| match flag.as_str() {
                "--iters" => Some(["--txns".to_owned(), value.clone()]),
                "--reps" => Some(["--rounds".to_owned(), value.clone()]),
                _ => None,
            })
            .flatten()
            .collect();
    }
    let mut args = vec![workload.to_owned()];
    for (flag, value) in forwarded {
        let applies = match flag.as_str() {
            "--rows" => !ITERATED.contains(&workload) && workload != "capture_stream",
            "--mb" => workload == "capture_stream",
            "--iters" => ITERATED.contains(&workload),
            _ => true,
        };
        if applies {
            args.push(flag.clone());
            args.push(value.clone());
        }
    }
    args
}

/// Whether `nats-server` (which the `nats` workload starts) is on the `PATH`.
fn nats_server_installed() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `cargo xtask bench` with `args` (everything after `bench`).
pub(crate) fn bench(root: &Path, args: &[String]) -> ExitCode {
    if args.iter().any(|a| matches!(a.as_str(), "-h" | "--help")) {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match parse(args) {
        Ok(opts) => opts,
        Err(msg) => {
            eprintln!("xtask: error: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if opts.workloads.iter().any(|w| w == "nats") && !nats_server_installed() {
        // The project's own script installs it (with the rest of the test matrix's packages).
        let script = root.join("scripts").join("install-deps.sh");
        match Command::new("bash").arg(&script).status() {
            Ok(status) if status.success() => {}
            other => {
                eprintln!("xtask: `bash {}` failed ({other:?})", script.display());
                return ExitCode::FAILURE;
            }
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let baseline = if opts
        .workloads
        .iter()
        .any(|w| BASELINE_WORKLOADS.contains(&w.as_str()))
    {
        match build_baseline(root, &cargo, &target) {
            Some(path) => Some(path),
            None => return ExitCode::FAILURE,
        }
    } else {
        None
    };
    let mut build = Command::new(&cargo);
    build
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "liteorm-bench"]);
    if opts.workloads.iter().any(|w| w == "nats") {
        build.args(NATS_BENCH);
    }
    let build = build.status();
    match build {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("xtask: building liteorm-bench failed ({status})");
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("xtask: cannot run cargo: {err}");
            return ExitCode::FAILURE;
        }
    }
    if opts.callgrind {
        let bench = target.join("release").join("liteorm-bench");
        return callgrind(&target, &bench, baseline.as_deref(), &opts);
    }
    let mut failed = false;
    for workload in &opts.workloads {
        // `cargo run` finds the binary wherever the target directory is; it is already built,
        // and the child's stdout is inherited, so each JSON line appears as soon as it is printed.
        let package: &[&str] = if workload == "nats" {
            &NATS_BENCH
        } else {
            &["-p", "liteorm-bench"]
        };
        let status = Command::new(&cargo)
            .current_dir(root)
            .args(["run", "--release", "--quiet"])
            .args(package)
            .arg("--")
            .args(workload_args(workload, &opts.forwarded))
            .args(
                baseline
                    .iter()
                    .filter(|_| BASELINE_WORKLOADS.contains(&workload.as_str()))
                    .flat_map(|path| [std::ffi::OsStr::new("--baseline"), path.as_os_str()]),
            )
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => {
                eprintln!("xtask: bench `{workload}` failed ({status})");
                failed = true;
            }
            Err(err) => {
                eprintln!("xtask: cannot run cargo: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Builds the rusqlite baseline (its own workspace, so that rusqlite's `session` feature, which
/// needs bindgen, never reaches this workspace's build) into `target/rusqlite-baseline`, and
/// returns the binary's path.
fn build_baseline(root: &Path, cargo: &std::ffi::OsStr, target: &Path) -> Option<PathBuf> {
    let dir = target.join("rusqlite-baseline");
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "--locked",
            "--manifest-path",
        ])
        .arg(
            root.join("bench")
                .join("rusqlite-baseline")
                .join("Cargo.toml"),
        )
        .arg("--target-dir")
        .arg(&dir)
        .status();
    match status {
        Ok(status) if status.success() => Some(dir.join("release").join("rusqlite-baseline")),
        other => {
            eprintln!("xtask: building bench/rusqlite-baseline failed ({other:?})");
            None
        }
    }
}

/// The value of `--flag` among the forwarded options, or `default`.
fn forwarded_or(forwarded: &[(String, String)], flag: &str, default: &str) -> String {
    forwarded
        .iter()
        .rev()
        .find(|(f, _)| f == flag)
        .map_or_else(|| default.to_owned(), |(_, v)| v.clone())
}

/// `--callgrind`: each side of each workload under callgrind, then the instruction counts of
/// the timed figures and their ratios as JSON lines.
fn callgrind(
    target: &Path,
    bench: &Path,
    baseline: Option<&Path>,
    opts: &BenchOptions,
) -> ExitCode {
    let out_dir = target.join("callgrind");
    if let Err(err) = std::fs::create_dir_all(&out_dir) {
        eprintln!("xtask: cannot create {}: {err}", out_dir.display());
        return ExitCode::FAILURE;
    }
    let rows = forwarded_or(&opts.forwarded, "--rows", "2000");
    let iters = forwarded_or(&opts.forwarded, "--iters", "300");
    let reps = forwarded_or(&opts.forwarded, "--reps", "1");
    let db = forwarded_or(&opts.forwarded, "--db", "mem");
    for workload in &opts.workloads {
        let size = if ITERATED.contains(&workload.as_str()) {
            ["--iters", iters.as_str()]
        } else {
            ["--rows", rows.as_str()]
        };
        let args = [
            workload.as_str(),
            size[0],
            size[1],
            "--reps",
            &reps,
            "--db",
            &db,
        ];
        let mut sides: Vec<(&str, &Path, Vec<&str>)> = vec![
            ("liteorm", bench, vec!["--impl", "liteorm"]),
            ("raw", bench, vec!["--impl", "raw"]),
        ];
        if let Some(baseline) = baseline.filter(|_| BASELINE_WORKLOADS.contains(&workload.as_str()))
        {
            sides.push(("rusqlite", baseline, Vec::new()));
        }
        let mut counts: Vec<(&str, BTreeMap<String, u64>)> = Vec::new();
        for (side, program, extra) in &sides {
            let prefix = format!("{workload}-{side}-{db}");
            match run_callgrind(&out_dir, &prefix, program, &args, extra) {
                Ok(figures) => counts.push((side, figures)),
                Err(err) => {
                    eprintln!("xtask: callgrind of {workload} ({side}): {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let figures = callgrind_figures(workload);
        let fields = |values: &dyn Fn(&str) -> String| {
            figures
                .iter()
                .map(|f| format!(",\"{f}\":{}", values(f)))
                .collect::<String>()
        };
        let header = |imp: &str| {
            format!(
                "{{\"cmd\":\"{workload}\",\"mode\":\"callgrind\",\"impl\":\"{imp}\",\"db\":\"{db}\",\"{}\":{},\"reps\":{reps}",
                &size[0][2..],
                size[1]
            )
        };
        for (side, figures_of) in &counts {
            let value = |f: &str| figures_of.get(f).map_or("null".to_owned(), u64::to_string);
            println!("{}{}}}", header(side), fields(&value));
        }
        for (a, b) in [
            ("liteorm", "raw"),
            ("raw", "rusqlite"),
            ("liteorm", "rusqlite"),
        ] {
            let get = |side: &str| counts.iter().find(|(s, _)| *s == side).map(|(_, c)| c);
            let (Some(ca), Some(cb)) = (get(a), get(b)) else {
                continue;
            };
            let ratio = |f: &str| match (ca.get(f), cb.get(f)) {
                (Some(&x), Some(&y)) if y > 0 => format!("{:.4}", x as f64 / y as f64),
                _ => "null".to_owned(),
            };
            println!("{}{}}}", header(&format!("{a}/{b}")), fields(&ratio));
        }
    }
    ExitCode::SUCCESS
}

/// Runs `program args extra` under callgrind with its dumps under `out_dir/prefix.*`, and sums
/// the instructions of the dumps by figure (a dump's label lists the figures it counts for).
fn run_callgrind(
    out_dir: &Path,
    prefix: &str,
    program: &Path,
    args: &[&str],
    extra: &[&str],
) -> Result<BTreeMap<String, u64>, String> {
    for entry in std::fs::read_dir(out_dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{prefix}."))
        {
            std::fs::remove_file(entry.path()).map_err(|e| e.to_string())?;
        }
    }
    let out_file = out_dir.join(format!("{prefix}.out"));
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .args(["--dump-line=no", "--compress-strings=no"])
        .arg(program)
        .args(args)
        .args(extra)
        .output()
        .map_err(|e| format!("cannot run valgrind (is it installed?): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut figures = BTreeMap::new();
    for entry in std::fs::read_dir(out_dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Dumps are `prefix.out.N`; `prefix.out` itself is the rest of the run at exit.
        if !name.starts_with(&format!("{prefix}.out.")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
        let label = text
            .lines()
            .find_map(|l| l.strip_prefix("desc: Trigger: Client Request: "))
            .ok_or_else(|| format!("{name}: not a client request dump"))?;
        let total = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary: ")
                    .or_else(|| l.strip_prefix("totals: "))
            })
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or_else(|| format!("{name}: no instruction total"))?;
        for figure in label.split(',') {
            *figures.entry(figure.to_owned()).or_insert(0) += total;
        }
    }
    Ok(figures)
}
