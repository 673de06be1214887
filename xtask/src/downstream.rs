//! The downstream check of `cargo xtask test`: a project generated outside the workspace uses the
//! crates as the README's "Use it in your project" section says, and must build and run; without
//! the `.cargo/config.toml` lines it must fail with the build script's message, not at link time.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{Outcome, cargo, describe};

/// The `.cargo/config.toml` a project needs for the bundled SQLite; the README shows these lines
/// and the check fails if it stops doing so.
pub(crate) const CONFIG_LINES: &str = "\
[env]
LIBSQLITE3_FLAGS = \"-DSQLITE_ENABLE_SESSION -DSQLITE_ENABLE_PREUPDATE_HOOK\"
";

/// The generated project's `src/main.rs`: capture, apply, record and replicate, checked.
const MAIN_RS: &str = include_str!("../downstream/main.rs");

/// Text the failed build must show: the headline and the fix of `changeset/build.rs`.
const EXPECTED_FAILURE: &[&str] = &[
    "the bundled SQLite has no session extension",
    "liteorm-changeset needs SQLite's session extension",
    CONFIG_LINES,
    "libsqlite3-sys = { version = \"0.37\", features = [\"session\"] }",
];

/// What a failed build must not show: the undefined-symbol wall the check exists to prevent.
const LINKER_FAILURE: &[&str] = &["undefined symbol", "undefined reference", "linking with"];

/// Environment the xtask inherits from the workspace (`cargo xtask` applies its `[env]`, a
/// system cell sets pkg-config) that a project outside the workspace would not have.
const WORKSPACE_ENV: &[&str] = &[
    "LIBSQLITE3_FLAGS",
    "LIBSQLITE3_SYS_USE_PKG_CONFIG",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
];

/// Runs both variants; prints what went wrong and returns the outcome.
pub(crate) fn check(root: &Path) -> Outcome {
    match run_check(root) {
        Ok(()) => Outcome::Pass,
        Err(msg) => {
            eprintln!("xtask: downstream: {msg}");
            Outcome::Fail
        }
    }
}

fn run_check(root: &Path) -> Result<(), String> {
    let readme = fs::read_to_string(root.join("README.md"))
        .map_err(|err| format!("cannot read README.md: {err}"))?;
    if !readme.contains(CONFIG_LINES) {
        return Err(format!(
            "README.md no longer shows the config lines this check uses:\n{CONFIG_LINES}"
        ));
    }

    // Outside the workspace (a directory below it would be taken for a member), fresh each run.
    let project = std::env::temp_dir().join(format!("liteorm-downstream-{}", std::process::id()));
    let result = generate(root, &project).and_then(|()| variants(root, &project));
    // Best effort: a leftover directory in the temp dir is harmless.
    let _ = fs::remove_dir_all(&project);
    result
}

/// Writes the project: `Cargo.toml` with path dependencies, `src/main.rs`, and the workspace's
/// `Cargo.lock` so that it builds the dependency versions the suite tested.
fn generate(root: &Path, project: &Path) -> Result<(), String> {
    let io = |what: &str, err: std::io::Error| format!("cannot write {what}: {err}");
    let _ = fs::remove_dir_all(project);
    fs::create_dir_all(project.join("src")).map_err(|err| io("the project", err))?;
    let dep = |name: &str, dir: &str| {
        format!(
            "{name} = {{ path = {:?} }}\n",
            root.join(dir).display().to_string()
        )
    };
    let manifest = format!(
        "[package]\nname = \"downstream\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\
         publish = false\n\n[dependencies]\n{}{}{}{}\
         tokio = {{ version = \"1\", features = [\"macros\", \"rt-multi-thread\"] }}\n",
        dep("liteorm-core", "liteorm-core"),
        dep("liteorm-sqlite", "liteorm-sqlite"),
        dep("liteorm-changeset", "changeset"),
        dep("liteorm-replication", "replication"),
    );
    fs::write(project.join("Cargo.toml"), manifest).map_err(|err| io("Cargo.toml", err))?;
    fs::write(project.join("src").join("main.rs"), MAIN_RS).map_err(|err| io("main.rs", err))?;
    fs::copy(root.join("Cargo.lock"), project.join("Cargo.lock"))
        .map_err(|err| io("Cargo.lock", err))?;
    Ok(())
}

/// Without the config lines (must fail with the message), then with them (must run). Each has
/// its own target dir under the workspace's, kept between runs, so that neither rebuilds the
/// other's libsqlite3-sys and a rerun only recompiles what changed.
fn variants(root: &Path, project: &Path) -> Result<(), String> {
    let target = root.join("target").join("downstream");

    let mut build = downstream_cargo(root, project, &target.join("unconfigured"));
    build.arg("build");
    println!(
        "$ {}  (in {}, no .cargo/config.toml)",
        describe(&build),
        project.display()
    );
    let out = build
        .output()
        .map_err(|err| format!("cannot run `{}`: {err}", describe(&build)))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Cargo indents a build script's stderr; compare line by line without it.
    let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
    let shown = lines.join("\n");
    if out.status.success() {
        return Err("without the config lines the project built; it must fail".to_owned());
    }
    let missing: Vec<&str> = EXPECTED_FAILURE
        .iter()
        .copied()
        .filter(|text| !shown.contains(text.trim_end()))
        .collect();
    let linker: Vec<&str> = LINKER_FAILURE
        .iter()
        .copied()
        .filter(|text| stderr.contains(text))
        .collect();
    if !missing.is_empty() || !linker.is_empty() {
        return Err(format!(
            "without the config lines the build failed, but not with the documented message \
             (missing {missing:?}, linker errors {linker:?}):\n{stderr}"
        ));
    }
    println!("downstream: without the config lines the build fails with the documented message");

    let config = project.join(".cargo");
    fs::create_dir_all(&config).map_err(|err| format!("cannot create .cargo: {err}"))?;
    fs::write(config.join("config.toml"), CONFIG_LINES)
        .map_err(|err| format!("cannot write .cargo/config.toml: {err}"))?;
    let mut run = downstream_cargo(root, project, &target.join("readme"));
    run.args(["run", "--quiet"]);
    println!(
        "$ {}  (in {}, README's .cargo/config.toml)",
        describe(&run),
        project.display()
    );
    let out = run
        .output()
        .map_err(|err| format!("cannot run `{}`: {err}", describe(&run)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("downstream ok") {
        return Err(format!(
            "following the README the project did not run ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!("downstream: following the README the project builds and runs");
    Ok(())
}

/// `cargo` in the project, with its own target dir and none of the workspace's environment (but
/// [`crate::LINE_TABLES`]).
fn downstream_cargo(root: &Path, project: &Path, target: &Path) -> Command {
    let mut cmd = cargo(root);
    cmd.current_dir(project);
    for key in WORKSPACE_ENV {
        cmd.env_remove(key);
    }
    cmd.env("CARGO_TARGET_DIR", target)
        .env(crate::LINE_TABLES.0, crate::LINE_TABLES.1);
    cmd
}
