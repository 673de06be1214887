//! An app written with sqlx's query API keeps an audit log: its own `sqlx::query` /
//! `query_as` calls run on the session `ChangeLog::record` hands its closure, and are recorded.
//!
//! Run with `cargo run -p liteorm-replication --example sqlx_audit`.

use liteorm_replication::{ChangeLog, ConflictPolicy, Error, LogFilter, Meta};
use liteorm_sqlite::SqliteSession;

#[derive(Debug, sqlx::FromRow)]
struct Account {
    id: i64,
    owner: String,
    balance: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = SqliteSession::open(&dir.path().join("app.db").to_string_lossy()).await?;
    sqlx::query("CREATE TABLE account(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL)")
        .execute(&db)
        .await?;
    let log = ChangeLog::open(&db).await?;

    // The app's sqlx code, unchanged but for the executor: `&s`, the recording session.
    log.record(Meta::actor("ada").reason("open accounts"), |s| async move {
        for (id, owner, balance) in [(1_i64, "ada", 100_i64), (2, "bob", 50)] {
            sqlx::query("INSERT INTO account(id, owner, balance) VALUES (?, ?, ?)")
                .bind(id)
                .bind(owner)
                .bind(balance)
                .execute(&s)
                .await?;
        }
        Ok::<_, Error>(())
    })
    .await?;
    log.record(Meta::actor("ada").reason("pay bob"), |s| async move {
        let ada: Account = sqlx::query_as("SELECT id, owner, balance FROM account WHERE id = 1")
            .fetch_one(&s)
            .await?;
        assert!(ada.balance >= 30, "{} cannot pay", ada.owner);
        sqlx::query("UPDATE account SET balance = balance - 30 WHERE id = ?")
            .bind(ada.id)
            .execute(&s)
            .await?;
        sqlx::query("UPDATE account SET balance = balance + 30 WHERE id = 2")
            .execute(&s)
            .await?;
        Ok::<_, Error>(())
    })
    .await?;

    for entry in log.entries(&LogFilter::all()).await? {
        println!(
            "#{} {} ({}): {} changes",
            entry.seq,
            entry.actor.as_deref().unwrap_or("-"),
            entry.reason.as_deref().unwrap_or("-"),
            entry.changeset.changes()?.len()
        );
    }
    log.revert(
        2,
        ConflictPolicy::abort(),
        Meta::actor("ops").reason("refund"),
    )
    .await?;
    let accounts: Vec<Account> =
        sqlx::query_as("SELECT id, owner, balance FROM account ORDER BY id")
            .fetch_all(&db)
            .await?;
    println!("after the refund: {accounts:?}");
    assert_eq!(accounts[0].balance, 100);
    Ok(())
}
