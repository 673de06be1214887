//! `log migrate` and `log prune` run as a user would: the binary on real database files, its
//! output, its one-line errors and exit codes.

// Test helpers panic on unexpected errors on purpose.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;
use liteorm_core::Session;
use liteorm_replication::{ChangeLog, EntryKind, Error, Meta};
use liteorm_sqlite::SqliteSession;

fn run(args: &[&str]) -> Output {
    Command::cargo_bin("liteorm-changeset")
        .expect("the binary is built")
        .args(args)
        .output()
        .expect("run liteorm-changeset")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a failure with `code` and one line on stderr that contains `says`.
fn fails(out: &Output, code: i32, says: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(says), "{err}");
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A primary with a change log of `entries` units of work.
async fn primary(path: &Path, entries: u64) -> (SqliteSession, ChangeLog) {
    let db = SqliteSession::open(s(path)).await.unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT)")
        .await
        .unwrap();
    let log = ChangeLog::open(&db).await.unwrap();
    for i in 0..entries {
        log.record(Meta::actor("app"), move |s| async move {
            s.execute(
                "INSERT INTO t(name) VALUES (?)",
                &[format!("row {i}").into()],
            )
            .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    }
    (db, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_migrate_runs_and_logs_the_ddl_or_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let (db, log) = primary(&path, 2).await;
    let file = dir.path().join("v2.sql");
    std::fs::write(
        &file,
        "ALTER TABLE t ADD COLUMN note TEXT DEFAULT ''; CREATE INDEX t_note ON t(note);",
    )
    .unwrap();

    let out = run(&[
        "log",
        "migrate",
        "--db",
        s(&path),
        "--file",
        s(&file),
        "--actor",
        "dba",
        "--reason",
        "v2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: migrated, logged as seq 3 (tables: t)\n",
            path.display()
        )
    );
    let entry = log.entry(3).await.unwrap();
    assert_eq!(entry.kind, EntryKind::Schema);
    assert_eq!(
        (entry.actor.as_deref(), entry.reason.as_deref()),
        (Some("dba"), Some("v2"))
    );
    let columns = db
        .query("SELECT name FROM pragma_table_info('t')", &[])
        .await
        .unwrap();
    assert_eq!(columns.len(), 3);

    // Failing or refused SQL: exit 8, nothing changed or logged.
    let out = run(&[
        "log",
        "migrate",
        "--db",
        s(&path),
        "--sql",
        "ALTER TABLE nope ADD x",
    ]);
    fails(&out, 8, "no such table: nope");
    let out = run(&[
        "log",
        "migrate",
        "--db",
        s(&path),
        "--sql",
        "DROP INDEX t_note; COMMIT",
    ]);
    fails(&out, 8, "COMMIT is not allowed");
    assert_eq!(log.last_seq().await.unwrap(), 3);
    let out = run(&["log", "migrate", "--db", s(&path), "--file", "missing.sql"]);
    fails(&out, 3, "missing.sql");
    let out = run(&[
        "log",
        "migrate",
        "--db",
        s(&dir.path().join("none.db")),
        "--sql",
        "x",
    ]);
    fails(&out, 5, "no such database file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_prune_keeps_what_a_replica_has_not_applied_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let (_db, log) = primary(&path, 5).await;
    log.report_cursor("eu-1", 2).await.unwrap();

    let out = run(&["log", "prune", "--db", s(&path), "--up-to", "4"]);
    fails(&out, 7, "replica \"eu-1\" has applied only up to seq 2");
    assert_eq!(log.horizon().await.unwrap(), 0);

    let out = run(&["log", "prune", "--db", s(&path), "--up-to", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: pruned 2 entries; the log starts after seq 2\n",
            path.display()
        )
    );
    let out = run(&["log", "prune", "--db", s(&path), "--up-to", "4", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(log.horizon().await.unwrap(), 4);
    let out = run(&["log", "verify", "--db", s(&path)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 entries")
            && text(&out.stdout).contains("entries up to seq 4 were pruned"),
        "{}",
        text(&out.stdout)
    );

    let out = run(&["log", "prune", "--db", s(&path), "--up-to", "9", "--force"]);
    fails(&out, 1, "no change log entry with seq 9");
    let out = run(&["log", "prune", "--db", s(&path), "--up-to", "x"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
}
