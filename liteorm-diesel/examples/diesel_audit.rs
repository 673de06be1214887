//! A Diesel app with an audit log: its units of work (Diesel DSL writes on a
//! `SqliteConnection`) recorded with `liteorm_diesel::ChangeLog`, the audit trail shown with the
//! `table!` column names, a change reverted, and a replica that another Diesel app reads
//! brought up to date.
//!
//! Run with `cargo run -p liteorm-diesel --example diesel_audit [DIR]` (files go to DIR, default
//! a fresh temporary directory).

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use liteorm_changeset::ColumnNames;
use liteorm_diesel::{ChangeLog, Error};
use liteorm_replication::{ConflictPolicy, LogFilter, LogTableSource, Meta, Replica};
use liteorm_sqlite::SqliteSession;

diesel::table! {
    /// The accounts.
    account (id) {
        /// Key.
        id -> BigInt,
        /// Who owns it.
        owner -> Text,
        /// In cents.
        balance -> BigInt,
    }
}

diesel::table! {
    /// Money moved out of an account.
    payment (id) {
        /// Key.
        id -> BigInt,
        /// The paying account.
        account_id -> BigInt,
        /// In cents.
        amount -> BigInt,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = account)]
struct Account {
    id: i64,
    owner: String,
    balance: i64,
}

#[derive(Insertable)]
#[diesel(table_name = payment)]
struct NewPayment {
    account_id: i64,
    amount: i64,
}

#[derive(AsChangeset)]
#[diesel(table_name = account)]
struct Rename<'a> {
    owner: &'a str,
}

/// Opens (creating) a database file with the app's tables.
fn open(path: &std::path::Path) -> Result<SqliteConnection, Error> {
    let mut conn = SqliteConnection::establish(&path.display().to_string())?;
    conn.batch_execute(
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;
         CREATE TABLE IF NOT EXISTS account(id INTEGER PRIMARY KEY, owner TEXT NOT NULL,
                                            balance INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS payment(id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL,
                                            amount INTEGER NOT NULL)",
    )?;
    Ok(conn)
}

/// Pays `amount` from `from` to `to`: two balance updates and a payment row, one unit of work.
fn pay(conn: &mut SqliteConnection, from: i64, to: i64, amount: i64) -> QueryResult<()> {
    for (id, delta) in [(from, -amount), (to, amount)] {
        diesel::update(account::table.find(id))
            .set(account::balance.eq(account::balance + delta))
            .execute(conn)?;
    }
    diesel::insert_into(payment::table)
        .values(&NewPayment {
            account_id: from,
            amount,
        })
        .execute(conn)?;
    Ok(())
}

fn accounts(conn: &mut SqliteConnection) -> QueryResult<Vec<Account>> {
    account::table
        .select(Account::as_select())
        .order(account::id)
        .load(conn)
}

fn show(title: &str, conn: &mut SqliteConnection) -> QueryResult<()> {
    println!("{title}:");
    for a in accounts(conn)? {
        println!("  {:>2} {:<6} {:>4}", a.id, a.owner, a.balance);
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let (app_path, replica_path) = (dir.join("app.db"), dir.join("replica.db"));
    for path in [&app_path, &replica_path] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    let mut app = open(&app_path)?;
    let log = ChangeLog::open(&mut app)?;

    // 1. The app's Diesel code, run inside `record`: each unit of work is captured and logged
    //    in the same Diesel transaction as the data.
    log.record(
        &mut app,
        Meta::actor("ada").reason("open accounts"),
        |conn| {
            diesel::insert_into(account::table)
                .values(&vec![
                    Account {
                        id: 1,
                        owner: "ada".into(),
                        balance: 100,
                    },
                    Account {
                        id: 2,
                        owner: "bob".into(),
                        balance: 50,
                    },
                ])
                .execute(conn)?;
            Ok::<_, Error>(())
        },
    )?;
    log.record(&mut app, Meta::actor("ada").reason("pay bob"), |conn| {
        pay(conn, 1, 2, 30)?;
        Ok::<_, Error>(())
    })?;
    log.record(&mut app, Meta::actor("bob").reason("rename"), |conn| {
        diesel::update(account::table.find(2))
            .set(&Rename { owner: "robert" })
            .execute(conn)?;
        Ok::<_, Error>(())
    })?;
    show("accounts", &mut app)?;

    // The log is liteorm's: read it, revert and replicate through a liteorm session on the
    // same file (async, so on a runtime of its own; the Diesel app stays synchronous).
    let runtime = tokio::runtime::Runtime::new()?;
    let session = runtime.block_on(SqliteSession::open(&app_path.display().to_string()))?;
    let trail = runtime.block_on(liteorm_replication::ChangeLog::open(&session))?;

    // 2. The audit trail, each change as SQL with the `table!` column names.
    let names = ColumnNames::new()
        .table(
            "account",
            [
                account::id::NAME,
                account::owner::NAME,
                account::balance::NAME,
            ],
        )
        .table(
            "payment",
            [
                payment::id::NAME,
                payment::account_id::NAME,
                payment::amount::NAME,
            ],
        );
    println!("\naudit trail:");
    for entry in runtime.block_on(trail.entries(&LogFilter::all()))? {
        println!(
            "  #{} {} ({})",
            entry.seq,
            entry.actor.as_deref().unwrap_or("-"),
            entry.reason.as_deref().unwrap_or("-")
        );
        // One statement per line; a changeset's order is not defined, so sort them.
        let sql = entry.changeset.to_sql(&names)?;
        let mut lines: Vec<&str> = sql.lines().collect();
        lines.sort_unstable();
        for line in lines {
            println!("      {line}");
        }
    }

    // 3. Revert the payment: the inverse is applied and logged as an entry of its own.
    let reverted = runtime.block_on(trail.revert(
        2,
        ConflictPolicy::abort(),
        Meta::actor("ops").reason("refund"),
    ))?;
    println!("\nreverted #2 as #{}", reverted.logged_as.unwrap_or(0));
    show("accounts", &mut app)?;

    // 4. A replica: the database of another Diesel app (a reporting service, say), brought up
    //    to date from the log, then read through Diesel.
    let mut reporting = open(&replica_path)?;
    runtime.block_on(async {
        let replica_session = SqliteSession::open(&replica_path.display().to_string()).await?;
        let replica = Replica::open(&replica_session).await?;
        let done = replica.catch_up(&mut LogTableSource::new(&session)).await?;
        println!(
            "\nreplica applied {} entries, at seq {}",
            done.applied, done.last_seq
        );
        Ok::<_, liteorm_replication::Error>(())
    })?;
    show("replica accounts (read by Diesel)", &mut reporting)?;
    assert_eq!(accounts(&mut app)?, accounts(&mut reporting)?);
    Ok(())
}
