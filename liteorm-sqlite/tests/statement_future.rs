//! A statement's future runs nothing until it is polled, even on a pinned connection whose
//! statements run inline at once, and runs its statement once.

use std::task::{Context, Poll};

use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;

async fn count(s: &dyn Session) -> i64 {
    let rows = s
        .query("SELECT count(*) FROM t", &[])
        .await
        .expect("count the rows");
    rows[0].try_get(0).expect("an integer count")
}

#[tokio::test]
async fn a_statement_future_dropped_unpolled_runs_nothing() {
    let db = SqliteSession::open_in_memory().await.unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let tx = db.begin().await.unwrap();
    let s = tx.as_session();
    // The connection's handle lock is held after a first statement: later ones could run at
    // once, when the future is made.
    assert_eq!(count(s).await, 0);
    let unpolled = s.execute("INSERT INTO t VALUES (1)", &[]);
    drop(unpolled);
    assert_eq!(
        count(s).await,
        0,
        "a future dropped before its first poll ran"
    );
    let pending = s.execute("INSERT INTO t VALUES (?)", &[Value::Integer(2)]);
    assert_eq!(count(s).await, 0, "a future that was not awaited yet ran");
    assert_eq!(pending.await.unwrap(), 1);
    assert_eq!(count(s).await, 1);
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_statement_future_polled_after_it_completed_does_not_run_again() {
    let db = SqliteSession::open_in_memory().await.unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT)")
        .await
        .unwrap();
    let tx = db.begin().await.unwrap();
    let s = tx.as_session();
    assert_eq!(count(s).await, 0);
    let mut insert = s.execute("INSERT INTO t DEFAULT VALUES", &[]);
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(matches!(insert.as_mut().poll(&mut cx), Poll::Ready(Ok(1))));
    let again = insert.as_mut().poll(&mut cx);
    assert!(
        matches!(again, Poll::Ready(Err(liteorm_core::Error::Closed(_)))),
        "{again:?}"
    );
    drop(insert);
    assert_eq!(count(s).await, 1, "the statement ran again");
    tx.commit().await.unwrap();
}
