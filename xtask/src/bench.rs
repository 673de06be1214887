//! `cargo xtask bench`: builds the `liteorm-bench` binary in release and runs the chosen
//! workloads one after another, streaming their JSON lines to stdout.

use std::path::Path;
use std::process::{Command, ExitCode};

/// The help text of `cargo xtask bench`.
pub(crate) const USAGE: &str = "\
usage: cargo xtask bench [--rows N] [--iters K] [--mb M] [--reps R] [--db mem|file] [workload...]

  Builds liteorm-bench in release and runs each workload (default: all of them, in the order
  capture capture_stream apply small conflicts stall replication orm diesel nats) with WORKLOADS.md's defaults
  (rows 100000, iters 10000, reps 5, db mem; stall: rows 1000000). --rows applies to every row-based
  workload, stall too; --iters to small and replication. Prints one JSON line per
  implementation (liteorm, raw) and one of ratios per workload (nats: liteorm only).

  capture_stream: the peak memory of finishing a capture of about --mb M megabytes (default 200)
  with the changeset kept in memory against written to a writer as SQLite generates it.

  orm: the capture mix written through SeaORM inside liteorm_seaorm::record and through sqlx
  queries inside capture, against the same writes with no capture (one line each, then the
  ratios; targets 1.15 and 1.10).

  diesel: the capture mix written through Diesel inside liteorm_diesel::capture, against the
  same Diesel writes in an immediate_transaction (one line, then the ratio; target 1.10).

  nats: one-row transactions recorded on a primary and applied on a follower through NATS
  JetStream on loopback (liteorm-nats's nats_bench example; it starts its own `nats-server -js`,
  which scripts/install-deps.sh installs when it is missing). One JSON line per scenario
  (record_only, burst, paced): throughput and p50/p99 end-to-end lag. --iters sets its
  transaction count (default 2000).
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

/// The NATS replication benchmark (an example of liteorm-nats).
const NATS_BENCH: [&str; 4] = ["-p", "liteorm-nats", "--example", "nats_bench"];

/// Options forwarded to the bench binary, and the workloads to run.
struct BenchOptions {
    forwarded: Vec<(String, String)>,
    workloads: Vec<String>,
}

fn parse(args: &[String]) -> Result<BenchOptions, String> {
    let mut opts = BenchOptions {
        forwarded: Vec::new(),
        workloads: Vec::new(),
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
    if opts.workloads.is_empty() {
        opts.workloads = WORKLOADS.iter().map(|w| (*w).to_owned()).collect();
    }
    Ok(opts)
}

/// The arguments of the bench binary for `workload`: `--iters` only for the per-transaction
/// workloads (`small`, `replication`), `--rows` for the others.
fn workload_args(workload: &str, forwarded: &[(String, String)]) -> Vec<String> {
    if workload == "nats" {
        // Only the transaction count applies to the NATS benchmark.
        return forwarded
            .iter()
            .filter(|(flag, _)| flag == "--iters")
            .flat_map(|(_, value)| ["--txns".to_owned(), value.clone()])
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
