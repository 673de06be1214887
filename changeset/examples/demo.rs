//! The README demo: capture changes on an embedded SQLite file, inspect them, apply them to a
//! replica where one row conflicts, and invert them to revert the primary.
//!
//! Run with `cargo run -p liteorm-changeset --example demo [DIR]` (files go to DIR, default a
//! fresh temporary directory).

use liteorm_changeset::{Change, ChangeOp, ConflictAction, ConflictKind, apply, capture};
use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS account(
    id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The databases stay in a directory given as the argument (to look at them afterwards, with
    // the CLI for instance); otherwise in a temporary one, removed at the end.
    let temp;
    let dir = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let primary_path = dir.join("primary.db");
    let replica_path = dir.join("replica.db");
    for path in [&primary_path, &replica_path] {
        let _ = std::fs::remove_file(path);
    }

    let primary = SqliteSession::open(path_str(&primary_path)?).await?;
    let replica = SqliteSession::open(path_str(&replica_path)?).await?;
    println!(
        "SQLite {} (session extension: {})",
        primary.info().version,
        primary.info().session_extension
    );
    for db in [&primary, &replica] {
        db.execute_batch(SCHEMA).await?;
        db.execute_batch("INSERT INTO account VALUES (1, 'ada', 100), (2, 'bob', 50)")
            .await?;
    }
    show("primary before", &primary).await?;

    // 1. Capture: everything the closure does through `s` is recorded, atomically.
    let changes = capture(&primary, &["account"], |s| async move {
        s.execute(
            "UPDATE account SET balance = balance - 30 WHERE id = ?",
            &[1.into()],
        )
        .await?;
        s.execute(
            "UPDATE account SET balance = balance + 30 WHERE id = ?",
            &[2.into()],
        )
        .await?;
        s.execute(
            "INSERT INTO account VALUES (?, ?, ?)",
            &[3.into(), "cy".into(), 0.into()],
        )
        .await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await?;
    println!("\ncaptured a changeset of {} bytes:", changes.len());
    // 2. Inspect it (row order within a table is not defined, so sort for display).
    let columns: Vec<String> = primary
        .query(
            "SELECT name FROM pragma_table_info('account') ORDER BY cid",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut entries = changes.changes()?;
    entries.sort_by_key(|c| c.primary_key()[0].to_string());
    for change in &entries {
        println!("  {}", describe(change, &columns));
    }
    show("primary after", &primary).await?;

    // 3. Apply to a replica where someone else already changed bob's balance: a Data conflict.
    replica
        .execute("UPDATE account SET balance = 75 WHERE id = 2", &[])
        .await?;
    show("replica before apply (bob diverged)", &replica).await?;
    let report = apply(&replica, &changes)
        .on_conflict(|conflict| {
            let row: Vec<String> = conflict
                .conflicting_row
                .iter()
                .flatten()
                .map(Value::to_string)
                .collect();
            println!(
                "  conflict: {} on {}, the replica has ({}) -> keep the primary's version",
                conflict.kind,
                conflict.table().unwrap_or("?"),
                row.join(", "),
            );
            match conflict.kind {
                ConflictKind::Data | ConflictKind::Conflict => ConflictAction::Replace,
                _ => ConflictAction::Abort,
            }
        })
        .await?;
    println!(
        "applied {} of {} changes ({} replaced, {} omitted)",
        report.applied, report.changes, report.replaced, report.omitted
    );
    show("replica after apply", &replica).await?;

    // 4. Invert: the changeset that undoes the capture, applied to the primary.
    let undo = changes.invert()?;
    apply(&primary, &undo).await?;
    show("primary after applying the inverse", &primary).await?;
    // (A temporary directory is gone when this returns: nothing to point at.)
    if std::env::args().nth(1).is_some() {
        println!("\ndatabases are in {}", dir.display());
    }
    Ok(())
}

fn path_str(path: &std::path::Path) -> Result<&str, Box<dyn std::error::Error>> {
    path.to_str()
        .ok_or_else(|| format!("not a UTF-8 path: {}", path.display()).into())
}

/// One line per change: `UPDATE account [1]: balance 100 -> 70`.
fn describe(change: &Change, columns: &[String]) -> String {
    let key: Vec<String> = change.primary_key().iter().map(Value::to_string).collect();
    let op = match change.op {
        ChangeOp::Insert => "INSERT",
        ChangeOp::Update => "UPDATE",
        ChangeOp::Delete => "DELETE",
    };
    let columns: Vec<String> = (0..change.column_count())
        .filter(|&i| change.pk[i] == 0)
        .filter_map(|i| {
            let show = |v: Option<&Option<Value>>| v.cloned().flatten().map(|v| v.to_string());
            match (show(change.old.get(i)), show(change.new.get(i))) {
                (None, None) => None,
                (old, new) => Some(format!(
                    "{} {} -> {}",
                    columns.get(i).map_or("?", String::as_str),
                    old.unwrap_or_else(|| "_".into()),
                    new.unwrap_or_else(|| "_".into())
                )),
            }
        })
        .collect();
    format!(
        "{op} {} [{}]: {}",
        change.table,
        key.join(", "),
        columns.join(", ")
    )
}

async fn show(label: &str, db: &SqliteSession) -> Result<(), liteorm_core::Error> {
    println!("\n{label}:");
    for row in db
        .query("SELECT id, owner, balance FROM account ORDER BY id", &[])
        .await?
    {
        let values: Vec<String> = row.values().iter().map(Value::to_string).collect();
        println!("  {}", values.join(" | "));
    }
    Ok(())
}
