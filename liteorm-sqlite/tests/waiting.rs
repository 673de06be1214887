//! Statements of a pool-backed session on a file database run inline, but never wait inline for
//! another connection's lock: one that meets it waits on sqlx's worker thread instead.

use std::time::{Duration, Instant};

use liteorm_core::{Session as _, Value};
use liteorm_sqlite::SqliteSession;

async fn count(db: &SqliteSession) -> i64 {
    let rows = db
        .query("SELECT count(*) FROM t", &[])
        .await
        .expect("count");
    rows[0].try_get(0).expect("integer")
}

/// On a single-threaded runtime, a write that waited inline for the lock would block the one
/// thread, so the transaction holding the lock could never commit (the write would fail with
/// "database is locked" after the 5 s busy timeout).
#[tokio::test(flavor = "current_thread")]
async fn a_write_that_meets_a_lock_waits_off_the_executor_and_then_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SqliteSession::open(&dir.path().join("wait.db").display().to_string())
        .await
        .expect("open");
    db.execute_batch("CREATE TABLE t(x)").await.expect("schema");
    db.execute("INSERT INTO t VALUES (0)", &[])
        .await
        .expect("insert");

    let holder = db.begin_immediate().await.expect("write lock");
    holder
        .execute("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("insert under the lock");
    let writer = db.clone();
    let start = Instant::now();
    let write = tokio::spawn(async move {
        writer
            .execute("INSERT INTO t VALUES (?)", &[Value::Integer(2)])
            .await
    });
    // Readers are not blocked by the writer (WAL), and run meanwhile.
    assert_eq!(count(&db).await, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the executor was blocked for {:?}",
        start.elapsed()
    );
    assert!(!write.is_finished(), "the write must wait for the lock");

    holder.commit().await.expect("commit");
    let written = tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the write runs once the lock is free")
        .expect("task")
        .expect("write");
    assert_eq!(written, 1);
    assert_eq!(count(&db).await, 3);
}

/// The busy timeout of the connection, read with its pragma.
async fn busy_timeout(session: &SqliteSession) -> i64 {
    let rows = session
        .query("PRAGMA busy_timeout", &[])
        .await
        .expect("busy timeout");
    rows[0].try_get(0).expect("integer")
}

/// One transaction on `session` (a pinned connection's) that runs `inside`: its
/// `BEGIN IMMEDIATE` and `COMMIT` run inline with the busy timeout set to zero, then put back.
async fn transaction(session: &SqliteSession, inside: &str) {
    let tx = session.begin_immediate().await.expect("begin");
    tx.execute("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("insert");
    tx.execute(inside, &[]).await.expect("inside");
    tx.commit().await.expect("commit");
}

/// Statements that must not wait run with the busy timeout set to zero, then put it back. The
/// value put back is the connection's current one, whatever changed it since the last such
/// statement (liteorm keeps a copy, as reading it is costly): a pragma run inline inside a
/// transaction, or a raw call. Outside a transaction a pragma goes through sqlx, and reads or
/// sets the real timeout, not the zero of a statement that must not wait.
#[tokio::test]
async fn the_busy_timeout_put_back_is_the_one_the_connection_has_now() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SqliteSession::open(&dir.path().join("busy.db").display().to_string())
        .await
        .expect("open");
    db.execute_batch("CREATE TABLE t(x)").await.expect("schema");
    let pinned = db.pin().await.expect("pin");
    let session = pinned.session();
    transaction(&session, "SELECT 1").await;
    assert_eq!(busy_timeout(&session).await, 5000, "sqlx's default");

    // Set inside a transaction, where the pragma runs inline, after `BEGIN IMMEDIATE` read the
    // old value.
    transaction(&session, "PRAGMA busy_timeout = 1234").await;
    assert_eq!(
        busy_timeout(&session).await,
        1234,
        "set inside a transaction"
    );
    transaction(&session, "SELECT 1").await;
    assert_eq!(busy_timeout(&session).await, 1234, "kept");

    // Set outside a transaction.
    session
        .execute("PRAGMA busy_timeout = 2345", &[])
        .await
        .expect("pragma");
    assert_eq!(
        busy_timeout(&session).await,
        2345,
        "set outside a transaction"
    );
    transaction(&session, "SELECT 1").await;
    assert_eq!(busy_timeout(&session).await, 2345, "kept");

    // Set by a raw call, after a transaction that read the old value. (Reading the pragma
    // outside a transaction goes through sqlx, which drops the copy with sqlx's handle lock.)
    transaction(&session, "SELECT 1").await;
    let mut guard = pinned.lock().await.expect("lock");
    guard
        .with_raw(|db| {
            // SAFETY: the handle is valid and ours for the closure.
            unsafe { libsqlite3_sys::sqlite3_busy_timeout(db.as_ptr(), 3456) }
        })
        .await
        .expect("raw");
    drop(guard);
    transaction(&session, "SELECT 1").await;
    assert_eq!(busy_timeout(&session).await, 3456, "set by a raw call");

    // A raw call that changes no setting keeps the copy; the value is still right.
    transaction(&session, "SELECT 1").await;
    let mut guard = pinned.lock().await.expect("lock");
    guard
        .with_raw_same_settings(|db| {
            // SAFETY: as above.
            unsafe { libsqlite3_sys::sqlite3_get_autocommit(db.as_ptr()) }
        })
        .await
        .expect("raw");
    drop(guard);
    transaction(&session, "SELECT 1").await;
    assert_eq!(busy_timeout(&session).await, 3456, "unchanged");
    drop(session);
    pinned.release().await;
}
