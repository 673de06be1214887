//! The README's main demo: an app writes through the change log on an embedded SQLite file; we
//! read the audit trail, revert a change (handling the conflict a later change causes), and bring
//! a replica up to date (handling a row that diverged there).
//!
//! Run with `cargo run -p liteorm-replication --example audit_replicate [DIR]` (files go to DIR,
//! default a fresh temporary directory).

use liteorm_changeset::{ChangeOp, ConflictAction, ConflictKind};
use liteorm_core::{Session, Value};
use liteorm_replication::{
    ChangeLog, ConflictPolicy, Error, LogFilter, LogTableSource, Meta, Replica,
};
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
    let (primary_path, replica_path) = (dir.join("app.db"), dir.join("replica.db"));
    for path in [&primary_path, &replica_path] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    let app = SqliteSession::open(&primary_path.to_string_lossy()).await?;
    println!(
        "app database: {} (SQLite {})",
        primary_path.display(),
        app.info().version
    );
    app.execute_batch(SCHEMA).await?;

    // 1. The app writes through the change log: each unit of work is captured and logged in the
    //    same transaction as the data.
    let log = ChangeLog::open(&app).await?;
    let work: [(&str, &str, &'static str); 4] = [
        (
            "ada",
            "open accounts",
            "INSERT INTO account VALUES (1, 'ada', 100), (2, 'bob', 50)",
        ),
        (
            "ada",
            "pay bob",
            "UPDATE account SET balance = balance - 30 WHERE id = 1; UPDATE account SET balance = balance + 30 WHERE id = 2",
        ),
        (
            "bob",
            "bonus",
            "UPDATE account SET balance = balance + 5 WHERE id = 2",
        ),
        (
            "cy",
            "open account",
            "INSERT INTO account VALUES (3, 'cy', 10)",
        ),
    ];
    for (actor, reason, sql) in work {
        log.record(Meta::actor(actor).reason(reason), move |s| async move {
            s.execute_batch(sql).await?;
            Ok::<_, Error>(())
        })
        .await?;
    }
    show("accounts", &app).await?;

    // 2. The audit trail: who changed which rows, decoded from each entry's changeset.
    println!("\naudit trail:");
    for entry in log.entries(&LogFilter::all()).await? {
        println!(
            "  #{} {:<4} {:<14} {} bytes",
            entry.seq,
            entry.actor.as_deref().unwrap_or("-"),
            entry.reason.as_deref().unwrap_or("-"),
            entry.changeset.len()
        );
        let mut changes = entry.changeset.changes()?;
        changes.sort_by_key(|c| c.primary_key()[0].to_string());
        for change in changes {
            let key = change.primary_key()[0].to_string();
            let balance =
                |side: &[Option<Value>]| side.get(2).cloned().flatten().map(|v| v.to_string());
            let what = match change.op {
                ChangeOp::Insert => format!(
                    "insert, balance {}",
                    balance(&change.new).unwrap_or_default()
                ),
                ChangeOp::Delete => "delete".to_owned(),
                ChangeOp::Update => format!(
                    "balance {} -> {}",
                    balance(&change.old).unwrap_or_default(),
                    balance(&change.new).unwrap_or_default()
                ),
            };
            println!("      {} id={key}: {what}", change.table);
        }
    }
    let bob_entries = log.entries(&LogFilter::all().actor("bob")).await?;
    println!(
        "  entries by bob: {:?}",
        bob_entries.iter().map(|e| e.seq).collect::<Vec<_>>()
    );

    // 3. Revert "pay bob" (#2). Bob's balance changed again later (#3), so reverting it is a
    //    conflict: by default the revert is refused and nothing changes...
    println!("\nrevert #2 (pay bob):");
    match log
        .revert(2, ConflictPolicy::abort(), Meta::actor("auditor"))
        .await
    {
        Err(err) => println!("  refused: {err}"),
        Ok(_) => return Err("the revert should have conflicted".into()),
    }
    // ...and with a policy that lets the revert win, it goes through, logged as a new entry.
    let policy = ConflictPolicy::abort().on(ConflictKind::Data, ConflictAction::Replace);
    let outcome = log
        .revert(2, policy, Meta::actor("auditor").reason("refund"))
        .await?;
    let report = &outcome.reports[0].1;
    println!(
        "  with Data -> Replace: {} changes applied ({} replaced); logged as #{}",
        report.applied,
        report.replaced,
        outcome.logged_as.unwrap_or_default()
    );
    show("accounts after the revert", &app).await?;

    // 4. A replica catches up from the log. Someone edited it locally, so one entry conflicts;
    //    the default policy stops there, naming the seq; a policy resolves it.
    let replica_db = SqliteSession::open(&replica_path.to_string_lossy()).await?;
    replica_db.execute_batch(SCHEMA).await?;
    replica_db
        .execute("INSERT INTO account VALUES (3, 'local', 0)", &[])
        .await?;
    let replica = Replica::open(&replica_db).await?;
    let mut source = LogTableSource::new(&app);
    println!("\nreplica {}:", replica_path.display());
    match replica.catch_up(&mut source).await {
        Err(err) => println!(
            "  stopped: {err} (last applied: #{})",
            replica.last_applied().await?
        ),
        Ok(done) => println!("  caught up to #{}", done.last_seq),
    }
    let replica =
        replica.policy(ConflictPolicy::abort().on(ConflictKind::Conflict, ConflictAction::Replace));
    let done = replica.catch_up(&mut source).await?;
    println!(
        "  with Conflict -> Replace: applied {} more, now at #{}",
        done.applied, done.last_seq
    );
    show("replica accounts", &replica_db).await?;
    let same = dump(&replica_db).await? == dump(&app).await?;
    println!("\nreplica matches the app database: {same}");
    // (A temporary directory is gone when this returns: nothing to point at.)
    if std::env::args().nth(1).is_some() {
        println!("files are in {}", dir.display());
    }
    Ok(())
}

async fn dump(db: &SqliteSession) -> Result<Vec<Vec<Value>>, liteorm_core::Error> {
    let rows = db
        .query("SELECT id, owner, balance FROM account ORDER BY id", &[])
        .await?;
    Ok(rows.into_iter().map(|r| r.into_values()).collect())
}

async fn show(label: &str, db: &SqliteSession) -> Result<(), liteorm_core::Error> {
    println!("\n{label}:");
    for row in dump(db).await? {
        let values: Vec<String> = row.iter().map(Value::to_string).collect();
        println!("  {}", values.join(" | "));
    }
    Ok(())
}
