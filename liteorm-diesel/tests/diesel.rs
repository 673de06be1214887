//! liteorm-diesel on real SQLite files with a Diesel `table!` schema: capture, apply, nesting,
//! failures and panics, interop with liteorm-sqlite, diesel-async, and a replica.

// `table!` generates modules and column types without docs.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_query;
use liteorm_changeset::{
    CaptureOptions, ChangeOp, Changeset, ConflictAction, ConflictKind, Error as CsError,
};
use liteorm_core::{Session, Value};
use liteorm_diesel::Error;
use liteorm_sqlite::SqliteSession;

diesel::table! {
    account (id) {
        id -> Integer,
        owner -> Text,
        balance -> BigInt,
    }
}

diesel::table! {
    payment (id) {
        id -> Integer,
        account_id -> Integer,
        amount -> BigInt,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = account)]
struct Account {
    id: i32,
    owner: String,
    balance: i64,
}

#[derive(Debug, AsChangeset)]
#[diesel(table_name = account)]
struct AccountUpdate<'a> {
    owner: Option<&'a str>,
    balance: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = payment)]
struct Payment {
    id: i32,
    account_id: i32,
    amount: i64,
}

const SCHEMA: &str = "CREATE TABLE account(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL);
     CREATE TABLE payment(id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL, amount INTEGER NOT NULL)";

fn acct(id: i32, owner: &str, balance: i64) -> Account {
    Account {
        id,
        owner: owner.into(),
        balance,
    }
}

/// A Diesel connection to a new file database with the schema.
fn open(dir: &Path, name: &str) -> SqliteConnection {
    let path = dir.join(name);
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(SCHEMA).unwrap();
    conn
}

fn accounts(conn: &mut SqliteConnection) -> Vec<Account> {
    account::table
        .select(Account::as_select())
        .order(account::id)
        .load(conn)
        .unwrap()
}

fn payments(conn: &mut SqliteConnection) -> Vec<Payment> {
    payment::table
        .select(Payment::as_select())
        .order(payment::id)
        .load(conn)
        .unwrap()
}

/// (table, op, primary key) of every change, sorted (changeset order is not defined).
fn summary(changes: &Changeset) -> Vec<(String, ChangeOp, Vec<Value>)> {
    let mut out: Vec<_> = changes
        .changes()
        .unwrap()
        .into_iter()
        .map(|c| (c.table.to_string(), c.op, c.primary_key()))
        .collect();
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

fn key(table: &str, op: ChangeOp, id: i64) -> (String, ChangeOp, Vec<Value>) {
    (table.into(), op, vec![Value::Integer(id)])
}

fn live_sessions(dir: &Path, name: &str) -> usize {
    let path = dir.join(name).canonicalize().unwrap();
    liteorm_changeset::live_session_objects(path.to_str().unwrap())
}

/// Two accounts to start from.
fn seed(conn: &mut SqliteConnection) {
    diesel::insert_into(account::table)
        .values(&vec![acct(1, "ada", 100), acct(2, "bob", 50)])
        .execute(conn)
        .unwrap();
}

#[test]
fn single_and_batch_inserts_updates_and_deletes_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(dir.path(), "app.db");
    seed(&mut conn);
    let changes = liteorm_diesel::capture(&mut conn, &["account", "payment"], |conn| {
        diesel::insert_into(account::table)
            .values(&acct(3, "cy", 0))
            .execute(conn)?;
        diesel::insert_into(payment::table)
            .values(&vec![
                Payment {
                    id: 1,
                    account_id: 1,
                    amount: 30,
                },
                Payment {
                    id: 2,
                    account_id: 2,
                    amount: 5,
                },
            ])
            .execute(conn)?;
        diesel::update(account::table.find(1))
            .set(&AccountUpdate {
                owner: None,
                balance: Some(70),
            })
            .execute(conn)?;
        diesel::delete(account::table.filter(account::id.eq(2))).execute(conn)?;
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(
        summary(&changes),
        [
            key("account", ChangeOp::Delete, 2),
            key("account", ChangeOp::Insert, 3),
            key("account", ChangeOp::Update, 1),
            key("payment", ChangeOp::Insert, 1),
            key("payment", ChangeOp::Insert, 2),
        ]
    );
    // Committed with the changeset.
    assert_eq!(accounts(&mut conn), [acct(1, "ada", 70), acct(3, "cy", 0)]);
    assert_eq!(live_sessions(dir.path(), "app.db"), 0);

    // The changeset says what happened: applied to a copy of the start, it gives the end.
    let mut copy = open(dir.path(), "copy.db");
    seed(&mut copy);
    let report = liteorm_diesel::apply(&mut copy, &changes).run().unwrap();
    assert_eq!((report.changes, report.applied), (5, 5));
    assert_eq!(accounts(&mut copy), accounts(&mut conn));
    assert_eq!(payments(&mut copy), payments(&mut conn));
}

#[test]
fn patchsets_and_returned_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(dir.path(), "app.db");
    seed(&mut conn);
    let options = CaptureOptions::new().tables(["account"]);
    let (deleted, patch) = liteorm_diesel::patchset_with(&mut conn, options, |conn| {
        Ok::<_, Error>(diesel::delete(account::table.find(2)).execute(conn)?)
    })
    .unwrap();
    assert_eq!(deleted, 1);
    let mut copy = open(dir.path(), "copy.db");
    seed(&mut copy);
    liteorm_diesel::apply(&mut copy, &patch).run().unwrap();
    assert_eq!(accounts(&mut copy), [acct(1, "ada", 100)]);
}

#[test]
fn nested_transactions_are_savepoints_and_a_rolled_back_one_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(dir.path(), "app.db");
    let changes = liteorm_diesel::capture(&mut conn, &[], |conn| {
        conn.transaction(|conn| {
            diesel::insert_into(account::table)
                .values(&acct(1, "ada", 1))
                .execute(conn)
        })?;
        let rolled_back = conn.transaction(|conn| {
            diesel::insert_into(account::table)
                .values(&acct(2, "bob", 2))
                .execute(conn)?;
            Err::<(), _>(DieselError::RollbackTransaction)
        });
        assert!(matches!(rolled_back, Err(DieselError::RollbackTransaction)));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(summary(&changes), [key("account", ChangeOp::Insert, 1)]);
    assert_eq!(accounts(&mut conn), [acct(1, "ada", 1)]);
}

#[test]
fn a_capture_inside_a_diesel_transaction_is_a_savepoint_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(dir.path(), "app.db");
    let outer = conn.transaction(|conn| {
        let changes = liteorm_diesel::capture(conn, &["account"], |conn| {
            diesel::insert_into(account::table)
                .values(&acct(1, "ada", 1))
                .execute(conn)?;
            Ok::<_, Error>(())
        })?;
        assert_eq!(summary(&changes), [key("account", ChangeOp::Insert, 1)]);
        Err::<(), Error>(DieselError::RollbackTransaction.into())
    });
    assert!(matches!(
        outer,
        Err(Error::Diesel(DieselError::RollbackTransaction))
    ));
    // The outer transaction rolled back the captured write too.
    assert!(accounts(&mut conn).is_empty());
}

/// After a failed capture: nothing was written, no session object is left, and the next
/// capture on the same connection records normally.
fn assert_rolled_back_and_reusable(dir: &Path, conn: &mut SqliteConnection) {
    assert_eq!(accounts(conn), [acct(1, "ada", 100), acct(2, "bob", 50)]);
    assert_eq!(live_sessions(dir, "app.db"), 0);
    let changes = liteorm_diesel::capture(conn, &["account"], |conn| {
        diesel::delete(account::table.find(1)).execute(conn)?;
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(summary(&changes), [key("account", ChangeOp::Delete, 1)]);
}

#[test]
fn an_error_in_the_closure_rolls_back_and_is_returned_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(dir.path(), "app.db");
    seed(&mut conn);
    let failed = liteorm_diesel::capture(&mut conn, &["account"], |conn| {
        diesel::update(account::table)
            .set(account::balance.eq(0))
            .execute(conn)?;
        // A duplicate key: Diesel's error, through `?`.
        diesel::insert_into(account::table)
            .values(&acct(1, "dup", 0))
            .execute(conn)?;
        Ok::<_, Error>(())
    });
    assert!(
        matches!(failed, Err(Error::Diesel(DieselError::DatabaseError(..)))),
        "{failed:?}"
    );
    assert_rolled_back_and_reusable(dir.path(), &mut conn);
}

#[test]
fn a_panic_in_the_closure_rolls_back_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(dir.path(), "app.db");
    seed(&mut conn);
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        liteorm_diesel::capture(&mut conn, &["account"], |conn| {
            diesel::update(account::table)
                .set(account::balance.eq(0))
                .execute(conn)?;
            // Inside a nested transaction, which Diesel does not roll back on a panic.
            conn.transaction(|conn| {
                diesel::delete(account::table).execute(conn)?;
                panic!("boom");
                #[allow(unreachable_code)]
                Ok::<_, DieselError>(())
            })?;
            Ok::<_, Error>(())
        })
    }));
    let payload = panicked.expect_err("the panic resumes");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    assert_rolled_back_and_reusable(dir.path(), &mut conn);
}

#[test]
fn a_panicking_table_filter_fails_the_capture_without_unwinding_through_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(dir.path(), "app.db");
    seed(&mut conn);
    let options = CaptureOptions::new().table_filter(|table| {
        assert_ne!(table, "account", "filter refuses to decide");
        true
    });
    let failed = liteorm_diesel::capture_with(&mut conn, options, |conn| {
        diesel::update(account::table)
            .set(account::balance.eq(0))
            .execute(conn)?;
        Ok::<_, Error>(())
    });
    assert!(
        matches!(
            failed,
            Err(Error::Changeset(CsError::CallbackPanicked {
                callback: "table filter",
                ..
            }))
        ),
        "{failed:?}"
    );
    assert_rolled_back_and_reusable(dir.path(), &mut conn);
}

#[test]
fn a_raw_commit_in_the_closure_fails_the_capture() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(dir.path(), "app.db");
    let failed = liteorm_diesel::capture(&mut conn, &["account"], |conn| {
        sql_query("COMMIT").execute(conn)?;
        Ok::<_, Error>(())
    });
    assert!(
        matches!(failed, Err(Error::Changeset(CsError::TransactionEnded))),
        "{failed:?}"
    );
    assert_eq!(live_sessions(dir.path(), "app.db"), 0);
    // Diesel's view of the connection is consistent again.
    seed(&mut conn);
    assert_eq!(accounts(&mut conn).len(), 2);
}

#[test]
fn a_missing_table_is_a_typed_error_before_the_closure_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(dir.path(), "app.db");
    let failed = liteorm_diesel::capture(&mut conn, &["nope"], |_| -> Result<(), Error> {
        unreachable!("the closure does not run")
    });
    assert!(matches!(failed, Err(Error::Changeset(CsError::NoSuchTable(t))) if t == "nope"));
    seed(&mut conn);
}

/// A changeset that inserts accounts 1 and 3 and deletes nothing.
fn inserts(dir: &Path) -> Changeset {
    let mut conn = open(dir, "source.db");
    liteorm_diesel::capture(&mut conn, &["account"], |conn| {
        diesel::insert_into(account::table)
            .values(&vec![acct(1, "ada", 1), acct(3, "cy", 3)])
            .execute(conn)?;
        Ok::<_, Error>(())
    })
    .unwrap()
}

#[test]
fn a_conflict_with_no_handler_aborts_the_whole_apply() {
    let dir = tempfile::tempdir().unwrap();
    let changes = inserts(dir.path());
    let mut target = open(dir.path(), "app.db");
    seed(&mut target); // account 1 exists: its insert conflicts
    let failed = liteorm_diesel::apply(&mut target, &changes).run();
    match failed {
        Err(CsError::Aborted { conflict }) => assert_eq!(conflict.kind, ConflictKind::Conflict),
        other => panic!("{other:?}"),
    }
    // Atomic: account 3's insert, applied before or after, is not there either.
    assert_eq!(
        accounts(&mut target),
        [acct(1, "ada", 100), acct(2, "bob", 50)]
    );
    // Inside a Diesel transaction, the apply joins it and only its own savepoint is undone.
    target
        .transaction(|conn| {
            diesel::insert_into(account::table)
                .values(&acct(9, "kept", 9))
                .execute(conn)?;
            let failed = liteorm_diesel::apply(conn, &changes).run();
            assert!(matches!(failed, Err(CsError::Aborted { .. })));
            let report = liteorm_diesel::apply(conn, &changes)
                .on_conflict(|c| match c.kind {
                    ConflictKind::Conflict => ConflictAction::Omit,
                    _ => ConflictAction::Abort,
                })
                .log_conflicts()
                .run()?;
            assert_eq!((report.applied, report.omitted), (1, 1));
            assert_eq!(report.conflict_log.len(), 1);
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(
        accounts(&mut target),
        [
            acct(1, "ada", 100),
            acct(2, "bob", 50),
            acct(3, "cy", 3),
            acct(9, "kept", 9)
        ]
    );
}

#[test]
fn a_panicking_handler_or_filter_rolls_the_apply_back_without_unwinding_through_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let changes = inserts(dir.path());
    let mut target = open(dir.path(), "app.db");
    seed(&mut target);
    let failed = liteorm_diesel::apply(&mut target, &changes)
        .on_conflict(|_| panic!("handler boom"))
        .run();
    assert!(
        matches!(&failed, Err(CsError::CallbackPanicked { message, .. }) if message.contains("handler boom")),
        "{failed:?}"
    );
    let failed = liteorm_diesel::apply(&mut target, &changes)
        .filter(|_| panic!("filter boom"))
        .run();
    assert!(
        matches!(&failed, Err(CsError::CallbackPanicked { message, .. }) if message.contains("filter boom")),
        "{failed:?}"
    );
    assert_eq!(
        accounts(&mut target),
        [acct(1, "ada", 100), acct(2, "bob", 50)]
    );
    // The connection is fine afterwards.
    liteorm_diesel::apply(&mut target, &changes)
        .on_conflict(|_| ConflictAction::Replace)
        .run()
        .unwrap();
    assert_eq!(
        accounts(&mut target),
        [acct(1, "ada", 1), acct(2, "bob", 50), acct(3, "cy", 3)]
    );
}

/// The accounts of a liteorm session, as Diesel structs.
async fn session_accounts(session: &SqliteSession) -> Vec<Account> {
    let rows = session
        .query("SELECT id, owner, balance FROM account ORDER BY id", &[])
        .await
        .unwrap();
    rows.iter()
        .map(|r| Account {
            id: r.try_get::<i64>(0).unwrap().try_into().unwrap(),
            owner: r.try_get(1).unwrap(),
            balance: r.try_get(2).unwrap(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changesets_cross_between_diesel_and_liteorm_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    // Diesel -> liteorm-sqlite.
    let mut diesel_primary = open(dir.path(), "diesel.db");
    seed(&mut diesel_primary);
    let from_diesel = liteorm_diesel::capture(&mut diesel_primary, &["account"], |conn| {
        diesel::update(account::table.find(1))
            .set(account::balance.eq(account::balance - 30))
            .execute(conn)?;
        diesel::insert_into(account::table)
            .values(&acct(3, "cy", 7))
            .execute(conn)?;
        Ok::<_, Error>(())
    })
    .unwrap();
    let session = SqliteSession::open(dir.path().join("session.db").to_str().unwrap())
        .await
        .unwrap();
    session.execute_batch(SCHEMA).await.unwrap();
    session
        .execute_batch("INSERT INTO account VALUES (1, 'ada', 100), (2, 'bob', 50)")
        .await
        .unwrap();
    liteorm_changeset::apply(&session, &from_diesel)
        .await
        .unwrap();
    assert_eq!(
        session_accounts(&session).await,
        accounts(&mut diesel_primary)
    );

    // liteorm-sqlite -> Diesel.
    let from_session = liteorm_changeset::capture(&session, &["account"], |s| async move {
        s.execute("DELETE FROM account WHERE id = 2", &[]).await?;
        s.execute("UPDATE account SET owner = 'cyd' WHERE id = 3", &[])
            .await?;
        Ok::<_, CsError>(())
    })
    .await
    .unwrap();
    liteorm_diesel::apply(&mut diesel_primary, &from_session)
        .run()
        .unwrap();
    assert_eq!(
        accounts(&mut diesel_primary),
        session_accounts(&session).await
    );
    assert_eq!(
        accounts(&mut diesel_primary),
        [acct(1, "ada", 70), acct(3, "cyd", 7)]
    );
    // The same bytes from both sides: an inverse captured one way undoes the other.
    liteorm_diesel::apply(&mut diesel_primary, &from_session.invert().unwrap())
        .run()
        .unwrap();
    liteorm_changeset::apply(&session, &from_session.invert().unwrap())
        .await
        .unwrap();
    assert_eq!(
        accounts(&mut diesel_primary),
        session_accounts(&session).await
    );
}

mod on_diesel_async {
    use super::*;
    use diesel_async::AsyncConnection;
    use diesel_async::pooled_connection::AsyncDieselConnectionManager;
    use diesel_async::pooled_connection::deadpool::Pool;
    use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    use futures::FutureExt;
    use liteorm_diesel::async_conn;

    type AsyncConn = SyncConnectionWrapper<SqliteConnection>;

    async fn open_async(dir: &Path, name: &str) -> AsyncConn {
        drop(open(dir, name)); // the schema
        let path = dir.join(name);
        AsyncConn::establish(path.to_str().unwrap()).await.unwrap()
    }

    async fn accounts_of(conn: &mut AsyncConn) -> Vec<Account> {
        conn.spawn_blocking(|conn| Ok(accounts(conn)))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn capture_and_apply_on_the_sync_connection_wrapper() {
        let dir = tempfile::tempdir().unwrap();
        let mut primary = open_async(dir.path(), "primary.db").await;
        let mut replica = open_async(dir.path(), "replica.db").await;
        let changes = async_conn::capture(&mut primary, &["account"], |conn| {
            seed(conn);
            diesel::update(account::table.find(2))
                .set(account::owner.eq("bobby"))
                .execute(conn)?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(
            summary(&changes),
            [
                key("account", ChangeOp::Insert, 1),
                key("account", ChangeOp::Insert, 2)
            ]
        );
        let report = async_conn::apply(&mut replica, &changes).await.unwrap();
        assert_eq!(report.applied, 2);
        assert_eq!(
            accounts_of(&mut replica).await,
            accounts_of(&mut primary).await
        );
        // Undone with the same builder (a handler that omits what is already gone).
        let undone = async_conn::apply(&mut replica, &changes.invert().unwrap())
            .on_conflict(|c| match c.kind {
                ConflictKind::Data => ConflictAction::Abort,
                _ => ConflictAction::Omit,
            })
            .await
            .unwrap();
        assert_eq!(undone.applied, 2);
        assert!(accounts_of(&mut replica).await.is_empty());

        let (count, patch) = async_conn::patchset_with(
            &mut primary,
            CaptureOptions::new().tables(["account"]),
            |conn| Ok::<_, Error>(diesel::delete(account::table).execute(conn)?),
        )
        .await
        .unwrap();
        assert_eq!((count, patch.changes().unwrap().len()), (2, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_and_panics_roll_back_and_the_connection_is_reusable() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_async(dir.path(), "app.db").await;
        conn.spawn_blocking(|conn| {
            seed(conn);
            Ok(())
        })
        .await
        .unwrap();
        let failed = async_conn::capture(&mut conn, &["account"], |conn| {
            diesel::delete(account::table).execute(conn)?;
            Err::<(), _>(Error::Diesel(DieselError::NotFound))
        })
        .await;
        assert!(matches!(failed, Err(Error::Diesel(DieselError::NotFound))));
        let panicked = AssertUnwindSafe(async_conn::capture(&mut conn, &["account"], |conn| {
            diesel::delete(account::table).execute(conn)?;
            panic!("async boom");
            #[allow(unreachable_code)]
            Ok::<_, Error>(())
        }))
        .catch_unwind()
        .await;
        let payload = panicked.expect_err("the panic resumes on the awaiting task");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"async boom"));
        assert_eq!(accounts_of(&mut conn).await.len(), 2);
        assert_eq!(live_sessions(dir.path(), "app.db"), 0);
        let changes = async_conn::capture(&mut conn, &["account"], |conn| {
            diesel::delete(account::table.find(1)).execute(conn)?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(summary(&changes), [key("account", ChangeOp::Delete, 1)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pooled_connection_from_deadpool() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), "app.db"));
        let url = dir.path().join("app.db");
        let manager = AsyncDieselConnectionManager::<AsyncConn>::new(url.to_str().unwrap());
        let pool = Pool::builder(manager).max_size(2).build().unwrap();
        let mut pooled = pool.get().await.unwrap();
        let changes = async_conn::capture(&mut *pooled, &[], |conn| {
            seed(conn);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(changes.changes().unwrap().len(), 2);
        drop(pooled);
        // Another pooled connection sees the committed rows; undo them through the pool.
        let mut pooled = pool.get().await.unwrap();
        async_conn::apply(&mut *pooled, &changes.invert().unwrap())
            .await
            .unwrap();
        assert!(accounts_of(&mut pooled).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_a_primary_into_the_database_a_diesel_app_uses() {
    use liteorm_replication::{ChangeLog, LogTableSource, Meta, Replica};

    let dir = tempfile::tempdir().unwrap();
    let mut app = open(dir.path(), "replica.db");
    let primary = SqliteSession::open(dir.path().join("primary.db").to_str().unwrap())
        .await
        .unwrap();
    primary.execute_batch(SCHEMA).await.unwrap();
    let log = ChangeLog::open(&primary).await.unwrap();
    for (id, owner) in [(1, "ada"), (2, "bob")] {
        log.record(Meta::actor("test"), |s| async move {
            s.execute(
                "INSERT INTO account VALUES (?, ?, 10)",
                &[id.into(), owner.into()],
            )
            .await?;
            Ok::<_, liteorm_replication::Error>(())
        })
        .await
        .unwrap();
    }
    let replica_session = SqliteSession::open(dir.path().join("replica.db").to_str().unwrap())
        .await
        .unwrap();
    let replica = Replica::open(&replica_session).await.unwrap();
    let caught_up = replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap();
    assert_eq!((caught_up.applied, caught_up.last_seq), (2, 2));
    // The Diesel app reads what the replica applied, and its own writes go on alongside.
    assert_eq!(accounts(&mut app), [acct(1, "ada", 10), acct(2, "bob", 10)]);
    diesel::insert_into(payment::table)
        .values(&Payment {
            id: 1,
            account_id: 1,
            amount: 5,
        })
        .execute(&mut app)
        .unwrap();
    log.record(Meta::actor("test"), |s| async move {
        s.execute("UPDATE account SET balance = 0 WHERE id = 2", &[])
            .await?;
        Ok::<_, liteorm_replication::Error>(())
    })
    .await
    .unwrap();
    replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap();
    assert_eq!(accounts(&mut app), [acct(1, "ada", 10), acct(2, "bob", 0)]);
    assert_eq!(payments(&mut app).len(), 1);
}

mod change_log {
    use super::*;
    use liteorm_diesel::ChangeLog;
    use liteorm_replication::{
        ChangeLog as SessionLog, ConflictPolicy, LogFilter, LogTableSource, Meta, Replica,
    };

    async fn session_on(dir: &Path, name: &str) -> SqliteSession {
        SqliteSession::open(dir.join(name).to_str().unwrap())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_diesel_unit_of_work_is_logged_with_its_data_and_read_revert_and_replicated() {
        let dir = tempfile::tempdir().unwrap();
        let mut app = open(dir.path(), "app.db");
        let log = ChangeLog::open(&mut app)
            .unwrap()
            .tables(["account", "payment"]);
        let seq = log
            .record(&mut app, Meta::actor("ada").reason("open"), |conn| {
                seed(conn);
                Ok::<_, Error>(())
            })
            .unwrap();
        assert_eq!(seq, Some(1));
        let seq = log
            .record(&mut app, Meta::actor("ada").reason("pay bob"), |conn| {
                diesel::update(account::table.find(1))
                    .set(account::balance.eq(account::balance - 30))
                    .execute(conn)?;
                diesel::insert_into(payment::table)
                    .values(&Payment {
                        id: 1,
                        account_id: 2,
                        amount: 30,
                    })
                    .execute(conn)?;
                Ok::<_, Error>(())
            })
            .unwrap();
        assert_eq!(seq, Some(2));
        // Nothing recorded changed: no entry.
        let none = log
            .record(&mut app, Meta::actor("ada"), |conn| {
                diesel::update(account::table.find(99))
                    .set(account::balance.eq(0))
                    .execute(conn)?;
                Ok::<_, Error>(())
            })
            .unwrap();
        assert_eq!(none, None);
        // A failing unit of work writes neither data nor log entry.
        let failed = log.record(&mut app, Meta::actor("ada"), |conn| {
            diesel::delete(account::table).execute(conn)?;
            Err::<(), _>(Error::Diesel(DieselError::RollbackTransaction))
        });
        assert!(failed.is_err());
        assert_eq!(accounts(&mut app), [acct(1, "ada", 70), acct(2, "bob", 50)]);

        // The same log, read through liteorm: actor, reason, tables, and the changes.
        let session = session_on(dir.path(), "app.db").await;
        let trail = SessionLog::open(&session).await.unwrap();
        let entries = trail.entries(&LogFilter::all()).await.unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].reason.as_deref(), Some("pay bob"));
        assert_eq!(entries[1].tables, ["account", "payment"]);
        assert_eq!(
            summary(&entries[1].changeset),
            [
                key("account", ChangeOp::Update, 1),
                key("payment", ChangeOp::Insert, 1)
            ]
        );

        // A replica follows the Diesel-written log.
        let replica_session = session_on(dir.path(), "replica.db").await;
        replica_session.execute_batch(SCHEMA).await.unwrap();
        let replica = Replica::open(&replica_session).await.unwrap();
        let caught_up = replica
            .catch_up(&mut LogTableSource::new(&session))
            .await
            .unwrap();
        assert_eq!(caught_up.last_seq, 2);
        let mut replica_conn =
            SqliteConnection::establish(dir.path().join("replica.db").to_str().unwrap()).unwrap();
        assert_eq!(accounts(&mut replica_conn), accounts(&mut app));
        assert_eq!(payments(&mut replica_conn), payments(&mut app));

        // Reverted through liteorm (itself logged as entry 3); Diesel sees it.
        let outcome = trail
            .revert(2, ConflictPolicy::abort(), Meta::actor("auditor"))
            .await
            .unwrap();
        assert_eq!(outcome.logged_as, Some(3));
        assert_eq!(
            accounts(&mut app),
            [acct(1, "ada", 100), acct(2, "bob", 50)]
        );
        assert!(payments(&mut app).is_empty());
        // And the Diesel side goes on appending after it.
        let seq = log
            .record(&mut app, Meta::actor("ada"), |conn| {
                diesel::delete(account::table.find(2)).execute(conn)?;
                Ok::<_, Error>(())
            })
            .unwrap();
        assert_eq!(seq, Some(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recording_on_diesel_async() {
        use diesel_async::AsyncConnection;
        use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
        use liteorm_diesel::async_conn;

        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), "app.db"));
        let path = dir.path().join("app.db");
        let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(path.to_str().unwrap())
            .await
            .unwrap();
        let log = async_conn::open_log(&mut conn).await.unwrap();
        let seq = async_conn::record(&log, &mut conn, Meta::actor("ada"), |conn| {
            seed(conn);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(seq, Some(1));
        let session = session_on(dir.path(), "app.db").await;
        let entry = SessionLog::open(&session)
            .await
            .unwrap()
            .entry(1)
            .await
            .unwrap();
        assert_eq!(entry.changeset.changes().unwrap().len(), 2);
    }

    /// Records two entries through a liteorm session's log, then drops the hash column: the log
    /// as versions before tamper evidence made it. Returns the chain head the two had.
    async fn log_from_before_the_chain(dir: &Path, name: &str) -> liteorm_replication::EntryHash {
        let primary = session_on(dir, name).await;
        primary.execute_batch(SCHEMA).await.unwrap();
        let log = SessionLog::open(&primary).await.unwrap();
        for id in [1, 2] {
            log.record(Meta::actor("old"), |s| async move {
                s.execute("INSERT INTO account VALUES (?, 'old', 1)", &[id.into()])
                    .await?;
                Ok::<_, liteorm_replication::Error>(())
            })
            .await
            .unwrap();
        }
        let head = log.verify().await.unwrap().head;
        primary
            .execute_batch("ALTER TABLE liteorm_changes DROP COLUMN hash")
            .await
            .unwrap();
        primary.close().await;
        head
    }

    /// A liteorm session on `name` and its log's verified chain.
    async fn verified(
        dir: &Path,
        name: &str,
    ) -> (SqliteSession, liteorm_replication::VerifiedChain) {
        let session = session_on(dir, name).await;
        let log = SessionLog::open(&session).await.unwrap();
        let verified = log.verify().await.unwrap();
        (session, verified)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_from_before_the_chain_is_upgraded_when_a_diesel_app_opens_it() {
        let dir = tempfile::tempdir().unwrap();
        let old_head = log_from_before_the_chain(dir.path(), "old.db").await;
        let mut app =
            SqliteConnection::establish(dir.path().join("old.db").to_str().unwrap()).unwrap();
        let log = ChangeLog::open(&mut app).unwrap();
        let seq = log
            .record(&mut app, Meta::actor("ada"), |conn| {
                diesel::insert_into(account::table)
                    .values(&acct(3, "ada", 5))
                    .execute(conn)?;
                Ok::<_, Error>(())
            })
            .unwrap();
        assert_eq!(seq, Some(3));
        // Opening again changes nothing.
        ChangeLog::open(&mut app).unwrap();

        let (session, verified) = verified(dir.path(), "old.db").await;
        assert_eq!((verified.entries, verified.upgraded_through), (3, Some(2)));
        let first_two = SessionLog::open(&session)
            .await
            .unwrap()
            .entries(&LogFilter::default())
            .await
            .unwrap();
        assert_eq!(
            first_two[1].hash, old_head,
            "the same chain as if hashed at commit"
        );
        let upgrades = session
            .query("SELECT count(*) FROM liteorm_chain_upgrade", &[])
            .await
            .unwrap();
        assert_eq!(upgrades[0].try_get::<i64>(0).unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upgrade_inside_a_diesel_transaction_is_a_savepoint_of_it() {
        let dir = tempfile::tempdir().unwrap();
        log_from_before_the_chain(dir.path(), "old.db").await;
        let mut app =
            SqliteConnection::establish(dir.path().join("old.db").to_str().unwrap()).unwrap();
        // Opened inside a transaction that then rolls back: the upgrade goes with it.
        let rolled_back = app.transaction(|conn| {
            ChangeLog::open(conn).unwrap();
            let upgraded = sql_query("SELECT hash FROM liteorm_changes").execute(conn);
            assert!(upgraded.is_ok(), "upgraded inside the transaction");
            Err::<(), _>(DieselError::RollbackTransaction)
        });
        assert!(matches!(rolled_back, Err(DieselError::RollbackTransaction)));
        assert!(
            sql_query("SELECT hash FROM liteorm_changes")
                .execute(&mut app)
                .is_err(),
            "the upgrade was rolled back with the transaction"
        );
        // Inside one that commits, it stays.
        app.transaction(|conn| {
            ChangeLog::open(conn).unwrap();
            Ok::<_, DieselError>(())
        })
        .unwrap();
        let (_, verified) = verified(dir.path(), "old.db").await;
        assert_eq!((verified.entries, verified.upgraded_through), (2, Some(2)));
    }
}
