//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` (libFuzzer on the stable toolchain
//! with `RUSTC_BOOTSTRAP=1`) for a fixed time each, and prints executions and crashes per target.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use super::{Outcome, capture, cargo, describe, run};

/// The help text of `cargo xtask fuzz`.
pub(crate) const USAGE: &str = "\
usage: cargo xtask fuzz [--time S] [--runs N] [--sanitizer address|none] [target...]

  Fuzzes the changeset entry points with cargo-fuzz (installed if missing): each target
  (default: all of validate invert concat apply changegroup stream rebase log_row
  nats_message) for S seconds (default 60), or until it has run N inputs when --runs is given
  (then with no time limit unless --time is given too: whichever comes first), starting from the committed corpus fuzz/corpus/<target>/, which is only
  read; inputs the fuzzer finds go to fuzz/target/corpus/<target>/. Builds in release with
  debug assertions, RUSTC_BOOTSTRAP=1 and ASan (--sanitizer none: faster, fewer checks).
  SQLite's C code is instrumented for coverage (and ASan) when a clang of rustc's LLVM version
  is available (clang-N; installed with apt-get when missing and running as root), otherwise
  only the Rust code guides the fuzzer.
  LeakSanitizer runs after each input that allocated more than it freed (the summary
  says when libFuzzer gave that up, leaving the check at exit).
  Prints executions and crashes per target; a crash, leak or hang leaves its input in
  fuzz/artifacts/<target>/ and makes the command fail. Reproduce one with
  `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <artifact>`.
";

/// Every fuzz target (`fuzz/fuzz_targets/<name>.rs`), in the order they run by default.
const TARGETS: [&str; 9] = [
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

/// A single input running longer than this is reported as a hang.
const TIMEOUT_SECS: u64 = 10;

struct FuzzOptions {
    /// `None`: no time limit (only with `runs`).
    seconds: Option<u64>,
    runs: Option<u64>,
    sanitizer: String,
    targets: Vec<String>,
}

fn parse(args: &[String]) -> Result<FuzzOptions, String> {
    let mut opts = FuzzOptions {
        seconds: None,
        runs: None,
        sanitizer: "address".to_owned(),
        targets: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--time" => {
                let value = args.next().ok_or("`--time` needs a number of seconds")?;
                opts.seconds = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|&s| s > 0)
                        .ok_or_else(|| format!("`--time {value}`: expected seconds > 0"))?,
                );
            }
            "--runs" => {
                let value = args.next().ok_or("`--runs` needs a number of inputs")?;
                opts.runs = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("`--runs {value}`: expected a count > 0"))?,
                );
            }
            "--sanitizer" => {
                let value = args.next().ok_or("`--sanitizer` needs a value")?;
                if value != "address" && value != "none" {
                    return Err(format!("`--sanitizer {value}`: expected address or none"));
                }
                opts.sanitizer.clone_from(value);
            }
            target if TARGETS.contains(&target) => {
                if !opts.targets.iter().any(|t| t == target) {
                    opts.targets.push(target.to_owned());
                }
            }
            other => {
                return Err(format!(
                    "unknown option or target `{other}` (targets: {})",
                    TARGETS.join(", ")
                ));
            }
        }
    }
    if opts.targets.is_empty() {
        opts.targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    if opts.runs.is_none() && opts.seconds.is_none() {
        opts.seconds = Some(60);
    }
    Ok(opts)
}

impl FuzzOptions {
    /// How long each target runs, for the log: "60 s", "1000000 runs", or both.
    fn limits(&self) -> String {
        match (self.seconds, self.runs) {
            (Some(s), Some(n)) => format!("{n} runs or {s} s"),
            (None, Some(n)) => format!("{n} runs"),
            (Some(s), None) => format!("{s} s"),
            (None, None) => "no limit".to_owned(),
        }
    }
}

/// What one target's run did, read from libFuzzer's output.
#[derive(Default)]
struct TargetReport {
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    new_units: Option<u64>,
    /// Inputs libFuzzer wrote as crash/timeout/oom/leak artifacts.
    artifacts: Vec<String>,
    /// Whether libFuzzer stopped checking for leaks after each input (only at exit then).
    leak_checks_stopped: bool,
    outcome: Option<Outcome>,
}

/// Runs `cargo xtask fuzz` with `args` (everything after `fuzz`).
pub(crate) fn fuzz(root: &Path, args: &[String]) -> ExitCode {
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
    if let Err(msg) = ensure_cargo_fuzz(root) {
        eprintln!("xtask: error: {msg}");
        return ExitCode::FAILURE;
    }
    let c_flags = sqlite_instrumentation(root, &opts.sanitizer);

    let fuzz_cmd = |subcommand: &str| {
        let mut cmd = cargo(root);
        cmd.args(["fuzz", subcommand, "--sanitizer", &opts.sanitizer])
            .env("RUSTC_BOOTSTRAP", "1");
        if let Some((cc, cflags)) = &c_flags {
            cmd.env("CC", cc).env("CFLAGS", cflags);
        }
        cmd
    };

    // Build every target first, so build time does not eat into fuzzing time.
    if run(&mut fuzz_cmd("build")) != Outcome::Pass {
        eprintln!("xtask: building the fuzz targets failed");
        return ExitCode::FAILURE;
    }

    let mut reports = Vec::new();
    for target in &opts.targets {
        let work = root.join("fuzz").join("target").join("corpus").join(target);
        let seeds = root.join("fuzz").join("corpus").join(target);
        // cargo-fuzz writes crashing inputs to fuzz/artifacts/<target>/ itself.
        for dir in [&work, &seeds] {
            if let Err(err) = fs::create_dir_all(dir) {
                eprintln!("xtask: cannot create {}: {err}", dir.display());
                return ExitCode::FAILURE;
            }
        }
        let mut cmd = fuzz_cmd("run");
        cmd.arg(target).arg(&work).arg(&seeds).arg("--");
        if let Some(seconds) = opts.seconds {
            cmd.arg(format!("-max_total_time={seconds}"));
        }
        if let Some(runs) = opts.runs {
            cmd.arg(format!("-runs={runs}"));
        }
        cmd.args([
            format!("-timeout={TIMEOUT_SECS}"),
            "-rss_limit_mb=4096".to_owned(),
            "-print_final_stats=1".to_owned(),
            // LeakSanitizer after every input that allocated more than it freed. libFuzzer turns
            // this off by itself after 1000 such inputs that leaked nothing (a target keeping
            // allocations in global state); the summary reports it, since only the check at
            // exit is left then.
            "-detect_leaks=1".to_owned(),
        ]);
        println!("\n== fuzz {target}: {} ==", opts.limits());
        reports.push((target.clone(), run_target(&mut cmd)));
    }

    print_summary(&opts, c_flags.as_ref().map(|(cc, _)| cc.as_str()), &reports);
    let failed = reports.iter().any(|(_, r)| {
        !r.artifacts.is_empty() || r.outcome != Some(Outcome::Pass) || r.executions.is_none()
    });
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Installs cargo-fuzz with `cargo install --locked` unless `cargo fuzz` already works.
fn ensure_cargo_fuzz(root: &Path) -> Result<(), String> {
    let present = cargo(root)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if present {
        return Ok(());
    }
    println!("xtask: cargo-fuzz is missing; installing it");
    match run(cargo(root).args(["install", "cargo-fuzz", "--locked"])) {
        Outcome::Pass => Ok(()),
        _ => Err("`cargo install cargo-fuzz --locked` failed".to_owned()),
    }
}

/// `CC` and `CFLAGS` that compile the bundled SQLite with libFuzzer's coverage instrumentation
/// (and ASan), or `None` (with a warning) when no clang of rustc's LLVM version can be had: the
/// objects must match the LLVM that rustc instruments the Rust code and links the runtimes with.
fn sqlite_instrumentation(root: &Path, sanitizer: &str) -> Option<(String, String)> {
    let flags = if sanitizer == "address" {
        "-fsanitize=fuzzer-no-link,address -gline-tables-only"
    } else {
        "-fsanitize=fuzzer-no-link -gline-tables-only"
    };
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let llvm = match capture(Command::new(&rustc).current_dir(root).arg("-vV")) {
        Ok(out) => out
            .lines()
            .find_map(|l| l.strip_prefix("LLVM version: "))
            .and_then(|v| v.split('.').next())
            .map(str::to_owned),
        Err(msg) => {
            eprintln!("xtask: warning: {msg}");
            None
        }
    };
    let Some(major) = llvm else {
        eprintln!("xtask: warning: cannot tell rustc's LLVM version; SQLite is not instrumented");
        return None;
    };
    let clang = format!("clang-{major}");
    let works = |cc: &str| {
        Command::new(cc).arg("--version").output().is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(&format!("clang version {major}."))
        })
    };
    for cc in [clang.as_str(), "clang"] {
        if works(cc) {
            return Some((cc.to_owned(), flags.to_owned()));
        }
    }
    let root_user = capture(Command::new("id").arg("-u")).is_ok_and(|id| id.trim() == "0");
    if root_user && Command::new("apt-get").arg("--version").output().is_ok() {
        println!("xtask: installing {clang} (apt) to instrument SQLite's C code");
        let installed = run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", &clang])
            .env("DEBIAN_FRONTEND", "noninteractive"));
        if installed == Outcome::Pass && works(&clang) {
            return Some((clang, flags.to_owned()));
        }
    }
    eprintln!(
        "xtask: warning: no {clang} (rustc uses LLVM {major}); SQLite's C code is not \
         instrumented, so only the Rust code guides the fuzzer. Install {clang} to fix it."
    );
    None
}

/// Runs one `cargo fuzz run`, passing its output through and reading libFuzzer's statistics.
fn run_target(cmd: &mut Command) -> TargetReport {
    println!("$ {}", describe(cmd));
    let mut report = TargetReport::default();
    let mut child = match cmd.stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(err) => {
            eprintln!("xtask: cannot run `{}`: {err}", describe(cmd));
            report.outcome = Some(Outcome::Fail);
            return report;
        }
    };
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            read_line(&line, &mut report);
        }
    }
    report.outcome = Some(match child.wait() {
        Ok(status) if status.success() => Outcome::Pass,
        Ok(status) => {
            eprintln!("xtask: `{}` failed ({status})", describe(cmd));
            Outcome::Fail
        }
        Err(err) => {
            eprintln!("xtask: waiting for `{}`: {err}", describe(cmd));
            Outcome::Fail
        }
    });
    report
}

/// Picks the numbers out of one line of libFuzzer's output.
fn read_line(line: &str, report: &mut TargetReport) {
    let number = |rest: &str| rest.trim().parse::<u64>().ok();
    if let Some(rest) = line.strip_prefix("stat::number_of_executed_units:") {
        report.executions = number(rest);
    } else if let Some(rest) = line.strip_prefix("stat::average_exec_per_sec:") {
        report.exec_per_sec = number(rest);
    } else if let Some(rest) = line.strip_prefix("stat::new_units_added:") {
        report.new_units = number(rest);
    } else if line.contains("libFuzzer disabled leak detection") {
        report.leak_checks_stopped = true;
    } else if let Some((_, path)) = line.split_once("Test unit written to ") {
        report.artifacts.push(path.trim().to_owned());
    } else if let Some(rest) = line.strip_prefix('#') {
        // Progress lines (`#123456\tpulse ...`) until the final statistics arrive.
        if let Some(count) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
            report.executions = Some(report.executions.map_or(count, |e: u64| e.max(count)));
        }
    }
}

fn print_summary(opts: &FuzzOptions, cc: Option<&str>, reports: &[(String, TargetReport)]) {
    println!(
        "\n== fuzz summary: {} per target, sanitizer {}, SQLite {} ==",
        opts.limits(),
        opts.sanitizer,
        cc.map_or_else(
            || "not instrumented".to_owned(),
            |cc| format!("instrumented with {cc}")
        )
    );
    println!(
        "{:<11}  {:>12}  {:>8}  {:>9}  {:>7}  {:<7}  result",
        "target", "executions", "exec/s", "new units", "crashes", "leaks"
    );
    let show = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    for (target, report) in reports {
        let result = match (&report.outcome, report.artifacts.is_empty()) {
            (Some(Outcome::Pass), true) => "ok".to_owned(),
            (_, false) => format!("FOUND: {}", report.artifacts.join(", ")),
            _ => "FAIL (see the output above)".to_owned(),
        };
        // Leak checks after each input, or (libFuzzer gave up on them) only at exit.
        let leaks = if report.leak_checks_stopped {
            "at exit"
        } else {
            "each"
        };
        println!(
            "{:<11}  {:>12}  {:>8}  {:>9}  {:>7}  {leaks:<7}  {result}",
            target,
            show(report.executions),
            show(report.exec_per_sec),
            show(report.new_units),
            report.artifacts.len(),
        );
    }
    let artifacts: Vec<PathBuf> = reports
        .iter()
        .flat_map(|(_, r)| r.artifacts.iter().map(PathBuf::from))
        .collect();
    if !artifacts.is_empty() {
        println!(
            "reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> {}",
            artifacts[0].display()
        );
    }
}
