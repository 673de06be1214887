//! Build script: finds the version of the SQLite that libsqlite3-sys builds against (its bundled
//! copy, or the system library when `LIBSQLITE3_SYS_USE_PKG_CONFIG` is set) and enables a
//! `cfg(sqlite_has_*)` for every session-extension feature that version has.
//!
//! The bindings libsqlite3-sys uses are generated from that same `sqlite3.h` (prebuilt for the
//! bundled copy, bindgen for a system one), so a function or constant newer than the header is
//! not declared at all. Code that calls one is compiled only under its cfg; without it the public
//! API returns `Error::Unsupported` naming the SQLite version it needs.
//!
//! It also stops the build, with the fix in the message, when libsqlite3-sys compiled its bundled
//! SQLite without the session extension: the pregenerated bindings declare the session API
//! either way, so such a build would otherwise end in undefined `sqlite3changeset_*` symbols at
//! link time. A linked system library is checked at run time instead
//! (`liteorm_sqlite::SqliteInfo`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[macro_use]
#[path = "src/capability_table.rs"]
mod capability_table;

/// Lists each capability's cfg and first SQLite release (as `SQLITE_VERSION_NUMBER`).
macro_rules! cfgs {
    ($($variant:ident, $cfg:ident, $version:literal, $number:literal, $what:literal;)*) => {
        &[$((stringify!($cfg), $number)),*]
    };
}

/// Each cfg and the first SQLite release (as `SQLITE_VERSION_NUMBER`) that has the feature.
const FEATURES: &[(&str, u32)] = capability_table!(cfgs);

/// The oldest SQLite libsqlite3-sys accepts from pkg-config; assumed when nothing else is found.
const FALLBACK: (&str, u32) = ("3.34.1", 3_034_001);

fn main() {
    // First, so that a failure's output is the message alone.
    check_bundled_session();
    for (cfg, _) in FEATURES {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    for var in [
        "LIBSQLITE3_SYS_USE_PKG_CONFIG",
        "SQLITE3_INCLUDE_DIR",
        "SQLITE3_LIB_DIR",
        "DEP_SQLITE3_INCLUDE",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let (version, number) = match detect() {
        Ok(found) => found,
        Err(why) => {
            println!(
                "cargo::warning=cannot tell the linked SQLite version ({why}); assuming {} \
                 and disabling newer session-extension features",
                FALLBACK.0
            );
            (FALLBACK.0.to_owned(), FALLBACK.1)
        }
    };
    for (cfg, since) in FEATURES {
        if number >= *since {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
    println!("cargo::rustc-env=LITEORM_CHANGESET_SQLITE_VERSION={version}");
}

/// What a project needs so that the bundled SQLite has the session extension; printed when it
/// does not. The README's "Use it in your project" section gives the same lines.
const SESSION_FIX: &str = r#"liteorm-changeset needs SQLite's session extension, but libsqlite3-sys
compiled its bundled SQLite without it (it would fail to link with undefined
`sqlite3changeset_*` symbols).
Add this to `.cargo/config.toml` at the root of your project (next to its Cargo.toml):

[env]
LIBSQLITE3_FLAGS = "-DSQLITE_ENABLE_SESSION -DSQLITE_ENABLE_PREUPDATE_HOOK"

(no libclang needed), or, with libclang installed, enable the `session` feature of
libsqlite3-sys in your Cargo.toml (bindgen then generates the bindings):

libsqlite3-sys = { version = "0.37", features = ["session"] }

or link the system's libsqlite3 (built with the session extension) with the
`liteorm-sqlite/system-sqlite` feature and LIBSQLITE3_SYS_USE_PKG_CONFIG=1."#;

/// Fails the build when libsqlite3-sys's bundled SQLite lacks the session extension.
///
/// The evidence is the static library itself (libsqlite3-sys exports its directory as
/// `DEP_SQLITE3_LIB_DIR` for bundled builds only): whatever enabled the extension (the
/// `LIBSQLITE3_FLAGS` it reads, its `session` feature), the library defines
/// `sqlite3changeset_start` or it does not. The check only fails when the library is readable and
/// names `sqlite3_open_v2`, so a format it cannot see symbol names in is never a false alarm.
fn check_bundled_session() {
    println!("cargo::rerun-if-env-changed=DEP_SQLITE3_LIB_DIR");
    println!("cargo::rerun-if-env-changed=LIBSQLITE3_FLAGS");
    println!("cargo::rerun-if-env-changed=DOCS_RS");
    // docs.rs builds without the project's config, and documentation never links.
    if env::var_os("DOCS_RS").is_some() {
        return;
    }
    let linked = env::var_os("LIBSQLITE3_SYS_USE_PKG_CONFIG").is_some_and(|v| v != "0");
    let Some(dir) = env::var_os("DEP_SQLITE3_LIB_DIR").filter(|_| !linked) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let Some(archive) = [
        "libsqlite3.a",
        "sqlite3.lib",
        "libsqlcipher.a",
        "sqlcipher.lib",
    ]
    .iter()
    .map(|name| dir.join(name))
    .find(|path| path.is_file()) else {
        return;
    };
    println!("cargo::rerun-if-changed={}", archive.display());
    let Ok(bytes) = fs::read(&archive) else {
        return;
    };
    if contains(&bytes, b"sqlite3_open_v2\0") && !contains(&bytes, b"sqlite3changeset_start\0") {
        let flags = env::var("LIBSQLITE3_FLAGS").map_or_else(
            |_| "LIBSQLITE3_FLAGS is not set".to_owned(),
            |flags| format!("LIBSQLITE3_FLAGS is {flags:?}"),
        );
        println!(
            "cargo::error=the bundled SQLite has no session extension ({flags}); \
             the fix is below"
        );
        eprintln!("{SESSION_FIX}");
        std::process::exit(1);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The SQLite version the bindings were generated for: from the header when it can be found,
/// else from pkg-config.
fn detect() -> Result<(String, u32), String> {
    match header() {
        Some(header) => {
            println!("cargo::rerun-if-changed={}", header.display());
            parse_header(&header)
        }
        None => {
            let out = pkg_config(&["--modversion", "sqlite3"])
                .ok_or("no sqlite3.h found and `pkg-config --modversion sqlite3` failed")?;
            let number = version_number(&out)
                .ok_or_else(|| format!("pkg-config reported version {out:?}"))?;
            Ok((out, number))
        }
    }
}

/// The `sqlite3.h` libsqlite3-sys compiled against. A bundled build exports its include dir as
/// `DEP_SQLITE3_INCLUDE`; a linked build does not, and bindgen then reads the header from
/// `SQLITE3_INCLUDE_DIR`, pkg-config's include dir, or the system include path, in that order.
fn header() -> Option<PathBuf> {
    let linked = env::var_os("LIBSQLITE3_SYS_USE_PKG_CONFIG").is_some_and(|v| v != "0");
    let mut dirs: Vec<PathBuf> = Vec::new();
    if !linked && let Some(dir) = env::var_os("DEP_SQLITE3_INCLUDE") {
        dirs.push(dir.into());
    }
    if let Some(dir) = env::var_os("SQLITE3_INCLUDE_DIR") {
        dirs.push(dir.into());
    }
    if let Some(dir) = pkg_config(&["--variable=includedir", "sqlite3"]) {
        dirs.push(dir.into());
    }
    dirs.extend(["/usr/include", "/usr/local/include"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join("sqlite3.h"))
        .find(|header| header.is_file())
}

fn parse_header(header: &Path) -> Result<(String, u32), String> {
    let text = fs::read_to_string(header)
        .map_err(|err| format!("cannot read {}: {err}", header.display()))?;
    let define = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix("#define ")?.trim_start();
            let value = rest.strip_prefix(name)?;
            value
                .starts_with([' ', '\t'])
                .then(|| value.trim().to_owned())
        })
    };
    let version = define("SQLITE_VERSION")
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or_else(|| format!("no SQLITE_VERSION in {}", header.display()))?;
    let number = define("SQLITE_VERSION_NUMBER")
        .and_then(|n| n.parse().ok())
        .or_else(|| version_number(&version))
        .ok_or_else(|| format!("no SQLITE_VERSION_NUMBER in {}", header.display()))?;
    Ok((version, number))
}

/// `"3.40.1"` as SQLite encodes it: 3040001.
fn version_number(version: &str) -> Option<u32> {
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some(major * 1_000_000 + minor * 1_000 + patch)
}

fn pkg_config(args: &[&str]) -> Option<String> {
    let out = Command::new("pkg-config").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
