//! The SQLite dialect through the `Session` trait: values, transactions, pinning, build checks.

use liteorm_core::{Error, Session, Transaction, Value, transaction};
use liteorm_sqlite::SqliteSession;

use crate::support::{dump, file_db};

#[tokio::test]
async fn open_execute_with_params_and_query_back() {
    let (db, _dir) = file_db().await;
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .await
        .unwrap();
    let changed = db
        .execute(
            "INSERT INTO t(id, name) VALUES (?, ?), (?, ?)",
            &[1.into(), "a".into(), 2.into(), "b".into()],
        )
        .await
        .unwrap();
    assert_eq!(changed, 2);
    let rows = db
        .query(
            "SELECT id, name FROM t WHERE id > ? ORDER BY id",
            &[0.into()],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].columns(), ["id", "name"]);
    assert_eq!(rows[1].try_get::<i64>("id").unwrap(), 2);
    assert_eq!(rows[1].try_get::<String>(1).unwrap(), "b");
}

#[tokio::test]
async fn file_databases_use_wal_and_foreign_keys() {
    let (db, _dir) = file_db().await;
    let mode = db.query("PRAGMA journal_mode", &[]).await.unwrap();
    assert_eq!(mode[0].try_get::<String>(0).unwrap(), "wal");
    let fk = db.query("PRAGMA foreign_keys", &[]).await.unwrap();
    assert_eq!(fk[0].try_get::<i64>(0).unwrap(), 1);
}

#[tokio::test]
async fn all_five_types_round_trip_with_null_distinct_from_empty() {
    let db = SqliteSession::open_in_memory().await.unwrap();
    db.execute_batch("CREATE TABLE v(id INTEGER PRIMARY KEY, x)")
        .await
        .unwrap();
    let values = [
        Value::Null,
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Integer(0),
        Value::Real(-0.5),
        Value::Real(f64::MAX),
        Value::Text(String::new()),
        Value::Text("ünïcode 'quoted'".into()),
        Value::Blob(Vec::new()),
        Value::Blob(vec![0, 255, 1]),
    ];
    for (id, value) in values.iter().enumerate() {
        db.execute(
            "INSERT INTO v(id, x) VALUES (?, ?)",
            &[Value::from(id as i64), value.clone()],
        )
        .await
        .unwrap();
    }
    let read: Vec<Value> = dump(&db, "v")
        .await
        .into_iter()
        .map(|row| row[1].clone())
        .collect();
    assert_eq!(read, values);
    let types = db
        .query("SELECT typeof(x) FROM v ORDER BY id", &[])
        .await
        .unwrap();
    let types: Vec<String> = types.iter().map(|r| r.try_get(0).unwrap()).collect();
    assert_eq!(
        types,
        [
            "null", "integer", "integer", "integer", "real", "real", "text", "text", "blob", "blob"
        ]
    );
}

#[tokio::test]
async fn transaction_commit_and_rollback() {
    let (db, _dir) = file_db().await;
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .await
        .unwrap();

    let tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    tx.commit().await.unwrap();

    let tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    assert_eq!(
        dump(tx.as_session(), "t").await.len(),
        2,
        "the transaction sees its own write"
    );
    tx.rollback().await.unwrap();

    assert_eq!(dump(&db, "t").await, [[Value::Integer(1)]]);
}

#[tokio::test]
async fn dropped_transaction_rolls_back_and_connection_is_reusable() {
    let (db, _dir) = file_db().await;
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    {
        let tx = db.begin().await.unwrap();
        tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    }
    assert!(dump(&db, "t").await.is_empty());
    // Every pool connection can start a new transaction: none was left inside the dropped one.
    let txs = futures_all(&db, 3).await;
    drop(txs);
    db.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    assert_eq!(dump(&db, "t").await.len(), 1);
}

async fn futures_all(db: &SqliteSession, n: usize) -> Vec<Box<dyn liteorm_core::Transaction>> {
    let mut txs = Vec::new();
    for _ in 0..n {
        txs.push(db.begin().await.expect("begin"));
    }
    txs
}

#[tokio::test]
async fn nested_transactions_are_savepoints() {
    let (db, _dir) = file_db().await;
    let (outer, inner) = outer_with_savepoint(&db).await;
    inner.rollback().await.unwrap();
    outer.commit().await.unwrap();
    assert_eq!(dump(&db, "t").await, [[Value::Integer(1)]]);
}

#[tokio::test]
async fn transaction_helper_commits_on_ok_and_rolls_back_on_err() {
    let (db, _dir) = file_db().await;
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let n: i64 = transaction(&db, |tx| {
        Box::pin(async move {
            tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
            Ok::<_, Error>(1)
        })
    })
    .await
    .unwrap();
    assert_eq!(n, 1);
    let err = transaction(&db, |tx| {
        Box::pin(async move {
            tx.execute("INSERT INTO t VALUES (2)", &[]).await?;
            tx.execute("INSERT INTO t VALUES (1)", &[]).await?; // duplicate key
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err}");
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    assert_eq!(dump(&db, "t").await, [[Value::Integer(1)]]);
}

#[tokio::test]
async fn pinned_session_runs_every_statement_on_one_connection() {
    let (db, _dir) = file_db().await;
    let pinned = db.pin().await.unwrap();
    let s = pinned.session();
    assert!(s.is_pinned());
    // A temp table exists only on the connection that created it.
    s.execute_batch("CREATE TEMP TABLE scratch(x)")
        .await
        .unwrap();
    s.execute("INSERT INTO scratch VALUES (?)", &[42.into()])
        .await
        .unwrap();
    let rows = s.query("SELECT x FROM scratch", &[]).await.unwrap();
    assert_eq!(rows[0].try_get::<i64>(0).unwrap(), 42);
    // The raw handle is the same connection: it sees the temp table too.
    let mut guard = pinned.lock().await.unwrap();
    let addr = guard.with_raw(|db| db.as_ptr() as usize).await.unwrap();
    assert_ne!(addr, 0);
    drop(guard);
    // The pool (while the pin holds its connection) cannot see it.
    let other = db
        .query(
            "SELECT count(*) FROM sqlite_temp_master WHERE name = 'scratch'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(other[0].try_get::<i64>(0).unwrap(), 0);
}

#[tokio::test]
async fn released_pin_closes_sessions_that_outlive_it() {
    let (db, _dir) = file_db().await;
    let pinned = db.pin().await.unwrap();
    let leaked = pinned.session();
    pinned.release().await;
    let err = leaked.execute("SELECT 1", &[]).await.unwrap_err();
    assert!(matches!(err, Error::Closed(_)), "{err}");
}

#[tokio::test]
async fn linked_sqlite_has_the_session_extension() {
    let db = SqliteSession::open_in_memory().await.unwrap();
    let info = db.info();
    assert!(info.session_extension, "{info:?}");
    assert!(info.preupdate_hook, "{info:?}");
    db.info().require_session_extension().unwrap();
    let version = db.query("SELECT sqlite_version()", &[]).await.unwrap();
    assert_eq!(version[0].try_get::<String>(0).unwrap(), info.version);
    println!("SQLITE_VERSION={}", info.version);
}

#[tokio::test]
async fn database_errors_carry_sqlite_code_and_message() {
    let db = SqliteSession::open_in_memory().await.unwrap();
    let err = db
        .execute("INSERT INTO missing VALUES (1)", &[])
        .await
        .unwrap_err();
    match err {
        Error::Database { message, .. } => assert!(message.contains("no such table"), "{message}"),
        other => panic!("expected a database error, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_a_savepoint_then_its_transaction_releases_the_write_lock() {
    // Regression: the outer transaction's drop used to read sqlx's depth before the inner
    // rollback was processed, skip its own rollback, and leave the connection holding the lock.
    let (db, _dir) = file_db().await;
    let (outer, inner) = outer_with_savepoint(&db).await;
    drop(inner);
    drop(outer);
    let writer = db.begin_immediate().await.unwrap();
    writer
        .session()
        .execute("INSERT INTO t VALUES (3)", &[])
        .await
        .unwrap();
    writer.commit().await.unwrap();
    assert_eq!(dump(&db, "t").await, [[Value::Integer(3)]]);
}

/// Table `t`, a transaction that inserted row 1, and a savepoint inside it that inserted row 2.
async fn outer_with_savepoint(db: &SqliteSession) -> (Box<dyn Transaction>, Box<dyn Transaction>) {
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let outer = db.begin().await.unwrap();
    outer
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
    let inner = outer.begin().await.unwrap();
    inner
        .execute("INSERT INTO t VALUES (2)", &[])
        .await
        .unwrap();
    (outer, inner)
}

/// `BEGIN IMMEDIATE` is first tried inline without waiting; when another connection holds the
/// write lock it must wait on sqlx's worker thread, not on the executor: on this one-thread
/// runtime, the holder could otherwise not run (nor commit) until the busy timeout ran out.
#[tokio::test]
async fn begin_immediate_waits_for_another_writer_off_the_executor() {
    let (db, _dir) = file_db().await;
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let holder = db.begin_immediate().await.unwrap();
    holder
        .session()
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let db = db.clone();
        async move {
            let tx = db.begin_immediate().await?;
            tx.session()
                .execute("INSERT INTO t VALUES (2)", &[])
                .await?;
            tx.commit().await
        }
    });
    // Let the waiter reach its `BEGIN IMMEDIATE` and find the lock taken. Had it waited on the
    // executor thread, this sleep would end only after the busy timeout (5 s).
    let slept = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        slept.elapsed() < std::time::Duration::from_secs(3),
        "the executor was blocked for {:?}",
        slept.elapsed()
    );
    assert!(!waiter.is_finished(), "the second writer did not wait");
    holder.commit().await.unwrap();
    waiter.await.unwrap().unwrap();
    assert_eq!(
        dump(&db, "t").await,
        [[Value::Integer(1)], [Value::Integer(2)]]
    );
}
