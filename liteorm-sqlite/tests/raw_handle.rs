//! Raw handle access (`PinnedGuard::with_raw*`) stays live under back-to-back use.

use std::time::Duration;

use liteorm_sqlite::SqliteSession;

/// sqlx's `lock_handle` may get the connection before its worker has read the "unlock" command
/// it sent; that command then stays queued. Back-to-back raw calls used to pile such commands up
/// until the worker's command channel (50) was full, and the next call waited for room in it
/// while holding the connection the worker needed to drain it: a deadlock (seen as a replica
/// that stopped applying). Each call must leave no command of its own behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_raw_calls_never_deadlock() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SqliteSession::open(&dir.path().join("raw.db").display().to_string())
        .await
        .expect("open");
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
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SqliteSession::open(&dir.path().join("raw.db").display().to_string())
        .await
        .expect("open");
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
