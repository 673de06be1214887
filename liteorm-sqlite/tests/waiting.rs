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
