//! Project automation: `cargo xtask test` runs the suite per SQLite build; `tidy` checks sources.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod bench;
mod downstream;
mod fuzz;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  test [--keep-going] [--cell NAME]...
        install missing system deps (scripts/install-deps.sh), tidy, `cargo fmt --check`,
        then per cell: clippy -D warnings, tests (nextest if available), doc tests; and in
        the bundled cell: docs of the published crates with -D warnings, `cargo publish
        --workspace --dry-run`, and the downstream check (a project outside the workspace set
        up as the README says builds and runs, and fails with the documented message without
        its .cargo/config.toml)
        --keep-going  run every step and cell even after a failure, then summarize
        --cell NAME   only run the named cell (repeatable); cells: bundled, system
  tidy  check that every .rs file starts with a `//!` line and has no ignored tests
        or todo/unimplemented/dbg macros
  downstream
        only the downstream check of `test` (bundled SQLite)
  bench [--rows N] [--iters K] [--reps R] [--db mem|file] [workload...]
        build liteorm-bench in release and run the benchmarks (`cargo xtask bench --help`)
  fuzz [--time S] [--sanitizer address|none] [target...]
        run the cargo-fuzz targets for S seconds each (`cargo xtask fuzz --help`)
  soak [--minutes N] [--cache-kib K]
        the soak with faults (liteorm-soak, default 30 minutes): writers, a local replica
        and two NATS followers while followers are SIGKILLed, nats-server restarts, a
        replica's disk fills and a replica conflicts; prints JSON figures, fails on any
        divergence, and on a run of 10 minutes or more if memory other than SQLite's page
        caches grows (`cargo xtask test` runs it for 30 s)
        --cache-kib K  `PRAGMA cache_size` of every connection in KiB (default SQLite's
                       2 MiB): a small cache fills early, so that the whole RSS is flat
";

/// The crate directories `tidy` checks, recursively (src, tests, examples, benches, ...).
const TIDY_DIRS: &[&str] = &[
    "liteorm-core",
    "liteorm-sqlite",
    "changeset",
    "replication",
    "liteorm-diesel",
    "cli",
    "nats",
    "tests",
    "xtask",
    "bench",
    "fuzz",
    "soak",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = match workspace_root() {
        Ok(root) => root,
        Err(msg) => {
            eprintln!("xtask: error: {msg}");
            return ExitCode::FAILURE;
        }
    };
    match args.first().map(String::as_str) {
        Some("test") => match TestOptions::parse(&args[1..]) {
            Ok(opts) => test(&root, &opts),
            Err(msg) => usage_error(&msg),
        },
        Some("tidy") if args.len() == 1 => {
            if tidy(&root) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("tidy") => usage_error("`tidy` takes no options"),
        Some("downstream") if args.len() == 1 => match downstream::check(&root) {
            Outcome::Pass => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        },
        Some("downstream") => usage_error("`downstream` takes no options"),
        Some("bench") => bench::bench(&root, &args[1..]),
        Some("fuzz") => fuzz::fuzz(&root, &args[1..]),
        Some("soak") => soak(&root, &args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => usage_error(&format!("unknown command `{other}`")),
        None => usage_error("no command given"),
    }
}

/// `cargo xtask soak [--minutes N]`: runs liteorm-soak (dev profile, whose dependencies are
/// optimised) for N minutes.
fn soak(root: &Path, args: &[String]) -> ExitCode {
    let mut minutes = 30;
    let mut cache_kib = None;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let Some(n) = args.next() else {
            return usage_error("usage: cargo xtask soak [--minutes N] [--cache-kib K]");
        };
        let Some(n) = n.parse::<u64>().ok().filter(|&n| n > 0) else {
            return usage_error(&format!("`{flag} {n}`: expected a number > 0"));
        };
        match flag.as_str() {
            "--minutes" => minutes = n,
            "--cache-kib" => cache_kib = Some(n),
            _ => return usage_error("usage: cargo xtask soak [--minutes N] [--cache-kib K]"),
        }
    }
    let seconds = (minutes * 60).to_string();
    let mut cmd = cargo(root);
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "liteorm-soak",
        "--",
        "--seconds",
        &seconds,
    ]);
    if let Some(kib) = cache_kib {
        cmd.args(["--cache-kib", &kib.to_string()]);
    }
    match run(&mut cmd) {
        Outcome::Pass => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("xtask: error: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}

/// The workspace root is the parent of this crate's directory, whatever the current directory is.
fn workspace_root() -> Result<PathBuf, String> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{} has no parent directory", manifest_dir.display()))
}

// ---------------------------------------------------------------------------------------------
// test

/// One build of the workspace against one SQLite.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// Default features: libsqlite3-sys compiles its bundled SQLite with the session extension.
    Bundled,
    /// `system-sqlite`: links the system libsqlite3 found by pkg-config; bindings from bindgen.
    System,
}

impl Cell {
    const ALL: [Cell; 2] = [Cell::Bundled, Cell::System];

    fn name(self) -> &'static str {
        match self {
            Cell::Bundled => "bundled",
            Cell::System => "system",
        }
    }

    fn from_name(name: &str) -> Option<Cell> {
        Cell::ALL.into_iter().find(|cell| cell.name() == name)
    }

    /// Extra cargo arguments selecting the cell's features.
    fn cargo_args(self) -> &'static [&'static str] {
        match self {
            Cell::Bundled => &[],
            Cell::System => &["--features", "liteorm-sqlite/system-sqlite"],
        }
    }

    /// Extra environment. Both cells build in the same target dir: the system cell's
    /// `libsqlite3-sys/session` feature gives libsqlite3-sys, and every crate that depends on
    /// it, hashes of their own, so the two builds never overwrite each other's artifacts, and the
    /// dependencies that do not depend on SQLite (most of them) compile once for both.
    fn env(self) -> Vec<(&'static str, String)> {
        match self {
            Cell::Bundled => Vec::new(),
            Cell::System => vec![("LIBSQLITE3_SYS_USE_PKG_CONFIG", "1".to_owned())],
        }
    }

    /// The SQLite version this cell builds against, or why it could not be determined.
    fn sqlite_version(self, root: &Path) -> Result<String, String> {
        match self {
            Cell::Bundled => bundled_sqlite_version(root),
            Cell::System => {
                let out = capture(Command::new("pkg-config").args(["--modversion", "sqlite3"]))?;
                Ok(out.trim().to_owned())
            }
        }
    }
}

struct TestOptions {
    keep_going: bool,
    cells: Vec<Cell>,
}

impl TestOptions {
    fn parse(args: &[String]) -> Result<TestOptions, String> {
        let mut keep_going = false;
        let mut cells = Vec::new();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--keep-going" => keep_going = true,
                "--cell" => {
                    let name = args.next().ok_or("`--cell` needs a cell name")?;
                    let cell = Cell::from_name(name)
                        .ok_or_else(|| format!("unknown cell `{name}` (cells: bundled, system)"))?;
                    if !cells.contains(&cell) {
                        cells.push(cell);
                    }
                }
                other => return Err(format!("unknown option `{other}` for `test`")),
            }
        }
        if cells.is_empty() {
            cells = Cell::ALL.to_vec();
        }
        Ok(TestOptions { keep_going, cells })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    NotRun,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::NotRun => "-",
        };
        // `pad` so that width specifiers in the summary table apply.
        f.pad(text)
    }
}

const CELL_STEPS: [&str; 9] = [
    "clippy",
    "test",
    "doctest",
    "examples",
    "docs",
    "package",
    "downstream",
    "fuzz-replay",
    "soak",
];

/// The runnable examples, the README's demo first: each must exit 0. (Example names are unique
/// in the workspace: cargo puts every package's examples in one directory.)
const EXAMPLES: &[&str] = &[
    "seaorm_audit",    // liteorm-seaorm
    "diesel_audit",    // liteorm-diesel
    "audit_replicate", // liteorm-replication
    "sqlx_audit",      // liteorm-replication
    "demo",            // liteorm-changeset
];

/// The crates published to crates.io whose docs must build without warnings (the CLI is a
/// binary: docs.rs has nothing to show for it).
const DOC_CRATES: &[&str] = &[
    "liteorm-core",
    "liteorm-sqlite",
    "liteorm-changeset",
    "liteorm-replication",
    "liteorm-seaorm",
    "liteorm-diesel",
    "liteorm-nats",
];

struct CellReport {
    cell: Cell,
    version: String,
    steps: [Outcome; 9],
    elapsed: Option<Duration>,
}

/// Runs the steps in order, recording outcomes; stops at the first failure unless `keep_going`.
struct Runner {
    keep_going: bool,
    failed: bool,
}

impl Runner {
    /// Whether steps should still run.
    fn go(&self) -> bool {
        self.keep_going || !self.failed
    }

    fn run(&mut self, cmd: &mut Command) -> Outcome {
        self.step_untimed(|| {
            let start = Instant::now();
            let outcome = run(cmd);
            println!("({outcome} in {})", format_duration(start.elapsed()));
            outcome
        })
    }

    /// Runs a step that is not one command, with its name and how long it took in the log.
    fn step(&mut self, name: &str, f: impl FnOnce() -> Outcome) -> Outcome {
        self.step_untimed(|| {
            println!("$ cargo xtask {name}");
            let start = Instant::now();
            let outcome = f();
            println!("{name}: {outcome} in {}", format_duration(start.elapsed()));
            outcome
        })
    }

    fn step_untimed(&mut self, f: impl FnOnce() -> Outcome) -> Outcome {
        if !self.go() {
            return Outcome::NotRun;
        }
        let outcome = f();
        if outcome == Outcome::Fail {
            self.failed = true;
        }
        outcome
    }
}

fn test(root: &Path, opts: &TestOptions) -> ExitCode {
    let mut runner = Runner {
        keep_going: opts.keep_going,
        failed: false,
    };

    let deps = runner.run(Command::new("bash").arg(root.join("scripts").join("install-deps.sh")));
    let tidy = if runner.go() {
        println!("$ cargo xtask tidy");
        if tidy(root) {
            Outcome::Pass
        } else {
            runner.failed = true;
            Outcome::Fail
        }
    } else {
        Outcome::NotRun
    };
    let fmt = runner.run(cargo(root).args(["fmt", "--all", "--", "--check"]));
    let checks = [("deps", deps), ("tidy", tidy), ("fmt", fmt)];

    let nextest = runner.go()
        && cargo(root)
            .args(["nextest", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());

    let mut reports = Vec::new();
    for &cell in &opts.cells {
        let mut report = CellReport {
            cell,
            version: "?".to_owned(),
            steps: [Outcome::NotRun; 9],
            elapsed: None,
        };
        if !runner.go() {
            reports.push(report);
            continue;
        }
        let start = Instant::now();
        report.version = match cell.sqlite_version(root) {
            Ok(version) => version,
            Err(msg) => {
                eprintln!(
                    "xtask: warning: cannot tell the SQLite version of cell {}: {msg}",
                    cell.name()
                );
                "unknown".to_owned()
            }
        };
        println!("\n== cell {}: SQLite {} ==", cell.name(), report.version);

        let env = cell.env();
        let features = cell.cargo_args();
        let cell_cmd = |args: &[&str], tail: &[&str]| {
            let mut cmd = cargo(root);
            cmd.args(args).args(features).args(tail);
            cmd.env("INSTA_UPDATE", "no").env_remove("INSTA_FORCE_PASS");
            for (key, value) in &env {
                cmd.env(key, value);
            }
            cmd
        };

        report.steps[0] = runner.run(&mut cell_cmd(
            &["clippy", "--workspace", "--all-targets"],
            &["--", "-D", "warnings"],
        ));
        report.steps[1] = if nextest {
            runner.run(&mut cell_cmd(
                &["nextest", "run", "--workspace"],
                &["--no-fail-fast"],
            ))
        } else {
            runner.run(&mut cell_cmd(&["test", "--workspace"], &["--no-fail-fast"]))
        };
        report.steps[2] = runner.run(&mut cell_cmd(&["test", "--workspace", "--doc"], &[]));
        // The demos run against the cell's SQLite too: a README command that only compiles
        // proves nothing. Built for the whole workspace, like the tests just were, so that
        // nothing is compiled again (see `run_built`).
        report.steps[3] = runner.step("examples", || {
            run_built(
                root,
                &mut cell_cmd(WORKSPACE_BUILD, &[]),
                &EXAMPLES
                    .iter()
                    .map(|example| (Path::new("examples").join(example), Vec::new()))
                    .collect::<Vec<_>>(),
            )
        });
        // What a user or crates.io sees does not depend on the SQLite the suite links: once.
        if cell == Cell::Bundled {
            let mut docs = cell_cmd(&["doc", "--no-deps"], &[]);
            for krate in DOC_CRATES {
                docs.args(["-p", krate]);
            }
            report.steps[4] = runner.run(docs.env("RUSTDOCFLAGS", "-D warnings"));
            // In a target dir of its own, where this workspace's crates (which the dry run
            // builds as registry crates of one version) always rebuild: see
            // `forget_packaged_sources`.
            let verify_dir = root.join("target").join("package-verify");
            forget_packaged_sources(&verify_dir);
            report.steps[5] = runner.run(
                cell_cmd(
                    &["publish", "--workspace", "--dry-run", "--allow-dirty"],
                    &[],
                )
                .env("CARGO_TARGET_DIR", &verify_dir)
                .env(LINE_TABLES.0, LINE_TABLES.1),
            );
            report.steps[6] = runner.step("downstream", || downstream::check(root));
            // Every committed fuzz input and past finding through its target's check (the fuzz
            // crate is a workspace of its own; no sanitizer here, that is `cargo xtask fuzz`).
            // In the workspace's target dir, so that the dependencies it shares with the
            // workspace are not compiled a second time.
            report.steps[7] = runner.run(
                cell_cmd(&["test", "--manifest-path", "fuzz/Cargo.toml"], &[])
                    .env("CARGO_TARGET_DIR", root.join("target")),
            );
            // The soak with faults, short: every fault kind once or twice.
            report.steps[8] = runner.step("soak --seconds 30", || {
                run_built(
                    root,
                    &mut cell_cmd(WORKSPACE_BUILD, &[]),
                    &[(PathBuf::from("liteorm-soak"), vec!["--seconds", "30"])],
                )
            });
        }

        let elapsed = start.elapsed();
        report.elapsed = Some(elapsed);
        println!(
            "== cell {}: done in {} ==",
            cell.name(),
            format_duration(elapsed)
        );
        reports.push(report);
    }

    print_summary(&checks, &reports);
    if runner.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The build before the examples and the soak run: the workspace's binaries and examples, with
/// features unified as in the test build. Both steps use exactly this, so the second compiles
/// nothing (without `--examples` the dev-dependencies' features drop out and sqlx and its
/// dependents compile again).
const WORKSPACE_BUILD: &[&str] = &["build", "--workspace", "--examples", "--bins"];

/// Runs `build`, then each of `programs` (a path under the target dir's `debug`, and its
/// arguments) in the workspace root; fails if any fails, after running them all.
///
/// The build is the workspace's (`--workspace`), so its features are unified exactly as in the
/// test build before it and nothing is compiled again. `cargo run -p <package>` would resolve
/// features for that one package: every dependency whose features differ (tokio, sqlx, ...)
/// would compile once more per package, minutes per cell.
fn run_built(root: &Path, build: &mut Command, programs: &[(PathBuf, Vec<&str>)]) -> Outcome {
    if run(build) == Outcome::Fail {
        return Outcome::Fail;
    }
    let debug = match target_dir(root) {
        Ok(dir) => dir.join("debug"),
        Err(msg) => {
            eprintln!("xtask: cannot find the target directory: {msg}");
            return Outcome::Fail;
        }
    };
    let mut outcome = Outcome::Pass;
    for (program, args) in programs {
        let mut path = debug.join(program);
        path.as_mut_os_string().push(std::env::consts::EXE_SUFFIX);
        let mut cmd = Command::new(path);
        cmd.args(args).current_dir(root);
        let start = Instant::now();
        let ran = run(&mut cmd);
        println!("({ran} in {})", format_duration(start.elapsed()));
        if ran == Outcome::Fail {
            outcome = Outcome::Fail;
        }
    }
    outcome
}

/// The workspace's target directory, as cargo resolves it (`CARGO_TARGET_DIR`, config, or
/// `target`), from `cargo metadata`; a plain string search, like [`bundled_sqlite_version`].
fn target_dir(root: &Path) -> Result<PathBuf, String> {
    let metadata = capture(cargo(root).args(["metadata", "--no-deps", "--format-version", "1"]))?;
    metadata
        .split("\"target_directory\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|path| PathBuf::from(path.replace("\\\\", "\\")))
        .ok_or_else(|| "no target_directory in `cargo metadata`".to_owned())
}

/// For the builds of packaged crates and of the downstream project, whose manifests do not have
/// the workspace's profile: dependencies with line tables only, as in the workspace (full debug
/// info is most of a debug build's time), which changes nothing the checks look at.
pub(crate) const LINE_TABLES: (&str, &str) = ("CARGO_PROFILE_DEV_DEBUG", "line-tables-only");

/// Removes what earlier `cargo publish --dry-run`s left of this workspace's own crates: their
/// extracted sources and their build fingerprints in `verify_dir`.
///
/// The dry run verifies each crate against the ones packaged before it through a local registry
/// under `target/package`, whose crates cargo extracts to `$CARGO_HOME/registry/src/-<hash>/`
/// (named by the registry's path, the crate's name and version only) and builds as registry
/// crates, which it never rebuilds for a changed source. Both an extraction and a build left by
/// an earlier run of the same version would be reused as they are, verifying against stale
/// sources. Only local-registry directories (named `-<hash>`, unlike crates.io's) and only
/// `liteorm-*` crates are touched.
fn forget_packaged_sources(verify_dir: &Path) {
    let fingerprints = verify_dir.join("debug").join(".fingerprint");
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    let sources = home.map(|home| home.join("registry").join("src"));
    let mut dirs = vec![fingerprints];
    if let Some(Ok(registries)) = sources.map(fs::read_dir) {
        dirs.extend(
            registries
                .flatten()
                .filter(|r| r.file_name().to_string_lossy().starts_with('-'))
                .map(|r| r.path()),
        );
    }
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("liteorm-") {
                // A directory that cannot be removed is reported by the dry run itself.
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn print_summary(checks: &[(&str, Outcome)], reports: &[CellReport]) {
    println!("\n== summary ==");
    let checks: Vec<String> = checks
        .iter()
        .map(|(name, outcome)| format!("{name} {outcome}"))
        .collect();
    println!("checks: {}", checks.join(", "));
    print!("{:<8}  {:<8}", "cell", "SQLite");
    for step in CELL_STEPS {
        print!("  {step:<10}");
    }
    println!("  time");
    for report in reports {
        print!("{:<8}  {:<8}", report.cell.name(), report.version);
        for outcome in report.steps {
            print!("  {outcome:<10}");
        }
        println!(
            "  {}",
            report
                .elapsed
                .map_or_else(|| "-".to_owned(), format_duration)
        );
    }
}

fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// `cargo`, the same one that runs this xtask, in the workspace root.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// Runs a command with inherited stdio, echoing it first.
fn run(cmd: &mut Command) -> Outcome {
    println!("$ {}", describe(cmd));
    match cmd.status() {
        Ok(status) if status.success() => Outcome::Pass,
        Ok(status) => {
            eprintln!("xtask: `{}` failed ({status})", describe(cmd));
            Outcome::Fail
        }
        Err(err) => {
            eprintln!("xtask: cannot run `{}`: {err}", describe(cmd));
            Outcome::Fail
        }
    }
}

/// Runs a command and returns its stdout; stderr is shown only on failure.
fn capture(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|err| format!("cannot run `{}`: {err}", describe(cmd)))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| format!("`{}` printed non-UTF-8 output", describe(cmd)))
}

/// A shell-like rendering of a command with the environment it sets, for logs.
fn describe(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    let program = cmd.get_program().to_string_lossy();
    // Show `cargo`, not the absolute path of the toolchain's cargo.
    let program = if Path::new(&*program)
        .file_stem()
        .is_some_and(|stem| stem == "cargo")
    {
        "cargo".into()
    } else {
        program
    };
    parts.push(program.into_owned());
    parts.extend(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// The version of the SQLite amalgamation that libsqlite3-sys bundles: found via `cargo metadata`
/// (the manifest path of the libsqlite3-sys package) and `#define SQLITE_VERSION` in its copy of
/// `sqlite3.h`. A plain string search keeps xtask free of JSON dependencies.
fn bundled_sqlite_version(root: &Path) -> Result<String, String> {
    let metadata = capture(cargo(root).args(["metadata", "--format-version", "1"]))?;
    let key = "\"manifest_path\":\"";
    let manifest = metadata
        .split(key)
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|path| PathBuf::from(path.replace("\\\\", "\\")))
        .find(|path| {
            path.parent()
                .and_then(Path::file_name)
                .is_some_and(|dir| dir.to_string_lossy().starts_with("libsqlite3-sys-"))
        })
        .ok_or("no libsqlite3-sys package in `cargo metadata`")?;
    let header = manifest.with_file_name("sqlite3").join("sqlite3.h");
    let text = fs::read_to_string(&header)
        .map_err(|err| format!("cannot read {}: {err}", header.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("#define SQLITE_VERSION "))
        .and_then(|rest| rest.split('"').nth(1))
        .map(str::to_owned)
        .ok_or_else(|| format!("no `#define SQLITE_VERSION` in {}", header.display()))
}

// ---------------------------------------------------------------------------------------------
// tidy

/// Patterns that must not appear in any source file; split so this file does not match itself.
const FORBIDDEN: &[(&str, &str)] = &[
    (
        concat!("#[", "ignore"),
        "ignored test: make it pass or delete it",
    ),
    (concat!("todo", "!("), "todo macro"),
    (concat!("unimplemented", "!("), "unimplemented macro"),
    (concat!("dbg", "!("), "dbg macro"),
];

/// Checks every `.rs` file under [`TIDY_DIRS`]; prints each problem, returns whether there were none.
fn tidy(root: &Path) -> bool {
    let mut files = Vec::new();
    for dir in TIDY_DIRS {
        let dir = root.join(dir);
        if dir.is_dir()
            && let Err(err) = rust_files(&dir, &mut files)
        {
            eprintln!("tidy: cannot walk {}: {err}", dir.display());
            return false;
        }
    }
    files.sort();

    let mut problems = 0;
    for file in &files {
        let shown = file.strip_prefix(root).unwrap_or(file).display();
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("{shown}: cannot read: {err}");
                problems += 1;
                continue;
            }
        };
        let first = text
            .lines()
            .enumerate()
            .find(|(_, line)| !line.trim().is_empty());
        if !first.is_some_and(|(_, line)| line.trim_start().starts_with("//!")) {
            let number = first.map_or(1, |(index, _)| index + 1);
            eprintln!(
                "{shown}:{number}: does not start with a `//!` line saying what the module is for"
            );
            problems += 1;
        }
        for (number, line) in text.lines().enumerate() {
            for (pattern, what) in FORBIDDEN {
                if line.contains(pattern) {
                    eprintln!("{shown}:{}: {what}: {}", number + 1, line.trim());
                    problems += 1;
                }
            }
        }
    }
    if problems == 0 {
        println!("tidy: {} files ok", files.len());
        true
    } else {
        eprintln!(
            "tidy: {problems} problem(s) in {} files checked",
            files.len()
        );
        false
    }
}

/// Collects `.rs` files below `dir`, skipping build output and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// `run_built` runs programs from the target dir `cargo metadata` names: the one cargo
    /// builds into for this workspace (the test runs in xtask's directory, below the root).
    #[test]
    fn the_target_dir_is_where_cargo_builds() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask is below the workspace root");
        let dir = super::target_dir(root).expect("cargo metadata names a target dir");
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(set) => assert_eq!(dir, Path::new(&set)),
            None => assert_eq!(dir, root.join("target")),
        }
        // This very test binary was built there.
        let exe = std::env::current_exe().expect("the test binary's path");
        assert!(
            exe.starts_with(&dir),
            "{} is not under {}",
            exe.display(),
            dir.display()
        );
    }
}
