//! Raw handle access (`PinnedGuard::with_raw*`) stays live under back-to-back use.

use std::time::Duration;

use liteorm_core::Value;
use liteorm_sqlite::SqliteSession;

/// A session on a new database file in a temporary directory (kept while the `TempDir` lives).
async fn file_db() -> (tempfile::TempDir, SqliteSession) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SqliteSession::open(&dir.path().join("raw.db").display().to_string())
        .await
        .expect("open");
    (dir, db)
}

/// sqlx's `lock_handle` may get the connection before its worker has read the "unlock" command
/// it sent; that command then stays queued. Back-to-back raw calls used to pile such commands up
/// until the worker's command channel (50) was full, and the next call waited for room in it
/// while holding the connection the worker needed to drain it: a deadlock (seen as a replica
/// that stopped applying). Each call must leave no command of its own behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_raw_calls_never_deadlock() {
    let (_dir, db) = file_db().await;
    let pinned = db.pin().await.expect("pin");
    let mut guard = pinned.lock().await.expect("lock");
    for round in 0..20_000 {
        let call = guard.with_raw(|handle| handle.as_ptr() as usize);
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(result) => assert_ne!(result.expect("raw call"), 0),
            Err(_) => panic!("raw call {round} did not complete within 10 s"),
        }
    }
    // The connection still runs ordinary statements afterwards.
    guard
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        .await
        .expect("sql");
}

/// The blocking variant, from a plain thread (a deadlocked blocking call could not be cancelled
/// and would keep a runtime from shutting down; a detached thread lets the test fail instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_blocking_raw_calls_never_deadlock() {
    let (_dir, db) = file_db().await;
    let pinned = db.pin().await.expect("pin");
    let mut guard = pinned.lock().await.expect("lock");
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..20_000 {
            guard.with_raw_blocking(|_| ()).expect("blocking raw call");
        }
        done.send(guard).ok();
    });
    let mut guard = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("20000 blocking raw calls did not complete within 120 s (deadlock)");
    guard.execute_batch("CREATE TABLE t(x)").await.expect("sql");
}

/// A pinned guard keeps sqlx's handle lock between raw calls and gives it up for each
/// statement that goes through sqlx (`execute_batch`), so every raw call after one takes the
/// lock anew: thousands of alternations must leave no "unlock" commands piling up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_sqlx_statements_and_raw_calls_never_deadlock() {
    let (_dir, db) = file_db().await;
    let pinned = db.pin().await.expect("pin");
    let mut guard = pinned.lock().await.expect("lock");
    guard
        .execute_batch("CREATE TABLE t(x)")
        .await
        .expect("create");
    let rounds = 5_000;
    for round in 0..rounds {
        let step = async {
            guard.with_raw(|handle| handle.as_ptr() as usize).await?;
            guard.execute_batch("INSERT INTO t VALUES (1)").await
        };
        match tokio::time::timeout(Duration::from_secs(10), step).await {
            Ok(result) => result.expect("raw call and statement"),
            Err(_) => panic!("round {round} did not complete within 10 s"),
        }
    }
    drop(guard);
    let rows = pinned
        .session()
        .query("SELECT count(*) FROM t", &[])
        .await
        .expect("count");
    assert_eq!(rows[0].values(), &[Value::Integer(rounds)]);
}

/// A statement through sqlx that is cancelled after it gave up the handle lock (and possibly
/// before sqlx's worker answered) must not let "unlock" commands pile up either: the next raw
/// call cannot know whether the worker has read the queue up to its own command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_calls_after_cancelled_sqlx_statements_never_deadlock() {
    let (_dir, db) = file_db().await;
    let pinned = db.pin().await.expect("pin");
    let mut guard = pinned.lock().await.expect("lock");
    for round in 0..5_000 {
        // Polled once, then dropped: the lock is given up and the statement may be sent.
        let cancelled = futures::FutureExt::now_or_never(guard.execute_batch("SELECT 1")).is_none();
        let call = guard.with_raw(|handle| handle.as_ptr() as usize);
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(result) => assert_ne!(result.expect("raw call"), 0, "round {round}"),
            Err(_) => {
                panic!("raw call {round} (cancelled: {cancelled}) did not complete within 10 s")
            }
        }
    }
    guard
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        .await
        .expect("sql");
}
