//! The program of `cargo xtask test`'s downstream check: a project outside the workspace that
//! uses liteorm as the README says, captures a changeset, applies it, and replicates a logged
//! change, checking each result. Prints `downstream ok` when everything matched.

use liteorm_changeset::{apply, capture};
use liteorm_core::Session;
use liteorm_replication::{ChangeLog, LogTableSource, Meta, Replica};
use liteorm_sqlite::SqliteSession;

const SCHEMA: &str = "CREATE TABLE account(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let primary = SqliteSession::open_in_memory().await?;
    let replica = SqliteSession::open_in_memory().await?;
    for db in [&primary, &replica] {
        db.execute_batch(SCHEMA).await?;
    }

    let changes = capture(&primary, &["account"], |s| async move {
        s.execute("INSERT INTO account VALUES (1, 100), (2, 50)", &[]).await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await?;
    let report = apply(&replica, &changes).await?;
    if report.applied != 2 {
        return Err(format!("applied {} changes, expected 2", report.applied).into());
    }

    let log = ChangeLog::open(&primary).await?;
    log.record(Meta::actor("downstream"), |s| async move {
        s.execute("UPDATE account SET balance = balance - 30 WHERE id = 1", &[]).await?;
        Ok::<_, liteorm_replication::Error>(())
    })
    .await?;
    Replica::open(&replica)
        .await?
        .catch_up(&mut LogTableSource::new(&primary))
        .await?;

    let rows = replica.query("SELECT id, balance FROM account ORDER BY id", &[]).await?;
    let balances = rows
        .iter()
        .map(|row| row.try_get::<i64>(1))
        .collect::<Result<Vec<_>, _>>()?;
    if balances != [70, 50] {
        return Err(format!("replica balances {balances:?}, expected [70, 50]").into());
    }
    println!("downstream ok");
    Ok(())
}
