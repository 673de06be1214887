//! A pool-backed session keeps (parks) a connection between operations, and gives it back to
//! the pool when it lingers unused, when an operation of the session waits, and on `close`.

use std::time::{Duration, Instant};

use liteorm_core::{Session as _, Value};
use liteorm_sqlite::SqliteSession;

/// A private in-memory database on a pool of one connection, kept `linger` after each use.
async fn one_connection(linger: Duration) -> SqliteSession {
    let options = SqliteSession::options(":memory:").expect("options");
    let pool = SqliteSession::pool_options()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None);
    let db = SqliteSession::connect_with(options, pool)
        .await
        .expect("open")
        .linger(linger);
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .expect("schema");
    db
}

/// sqlx's count of idle connections, read when it is consistent. sqlx 0.9 counts a released
/// connection as idle only after another task may already have taken it (and uncounted it), so
/// for a moment the count wraps below zero (`usize::MAX`, seen under load).
fn num_idle(pool: &sqlx::SqlitePool) -> usize {
    loop {
        let idle = pool.num_idle();
        if idle <= usize::try_from(pool.size()).unwrap_or(usize::MAX) {
            return idle;
        }
        std::thread::yield_now();
    }
}

/// Waits (up to 10 s) until the pool holds `idle` idle connections.
async fn idle_becomes(db: &SqliteSession, idle: usize) {
    let pool = db.pool().expect("pool-backed");
    let start = Instant::now();
    while num_idle(pool) != idle {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the pool kept {} idle connections, expected {idle}",
            num_idle(pool)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn insert(db: &SqliteSession, id: i64) {
    db.execute(
        "INSERT INTO t VALUES (?, ?)",
        &[Value::Integer(id), "x".into()],
    )
    .await
    .expect("insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_parked_after_use_and_returned_once_it_lingers() {
    // A linger long enough that a loaded machine does not pass it between two statements.
    let db = one_connection(Duration::from_secs(1)).await;
    insert(&db, 1).await;
    let pool = db.pool().expect("pool-backed");
    // Parked: still taken from sqlx's pool, and the next statement needs no pool.
    assert_eq!((pool.size(), num_idle(pool)), (1, 0));
    let start = Instant::now();
    insert(&db, 2).await;
    assert_eq!(num_idle(pool), 0);
    idle_becomes(&db, 1).await;
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "returned after {:?}, before its linger",
        start.elapsed()
    );
    let rows = db.query("SELECT count(*) AS n FROM t", &[]).await.unwrap();
    assert_eq!(rows[0].try_get::<i64>("n").unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_linger_returns_the_connection_at_once() {
    let db = one_connection(Duration::ZERO).await;
    insert(&db, 1).await;
    idle_becomes(&db, 1).await;
}

/// An operation waiting for the pool gets the connection as soon as the one holding it is done,
/// not after the linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_operation_gets_the_connection_without_waiting_for_the_linger() {
    let db = one_connection(Duration::from_secs(60)).await;
    let pinned = db.pin().await.expect("pin");
    let waiter = {
        let db = db.clone();
        tokio::spawn(async move {
            insert(&db, 1).await;
            Instant::now()
        })
    };
    // The insert is waiting for the pool.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    let released = Instant::now();
    pinned
        .session()
        .execute("INSERT INTO t VALUES (2, 'y')", &[])
        .await
        .unwrap();
    pinned.release().await;
    let done = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiting insert never got the connection")
        .unwrap();
    assert!(done.duration_since(released) < Duration::from_secs(5));
}

/// Code using the sqlx pool directly waits at most about one linger for a parked connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlx_pool_gets_a_parked_connection_back_after_the_linger() {
    let db = one_connection(Duration::from_millis(100)).await;
    insert(&db, 1).await;
    let start = Instant::now();
    let mut conn = tokio::time::timeout(Duration::from_secs(5), db.pool().unwrap().acquire())
        .await
        .expect("the parked connection never went back to the pool")
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_parked_connections_and_closes_the_pool() {
    let db = one_connection(Duration::from_secs(60)).await;
    insert(&db, 1).await;
    tokio::time::timeout(Duration::from_secs(5), db.close())
        .await
        .expect("close waited for the linger");
    assert!(db.pool().unwrap().is_closed());
    assert!(db.execute("SELECT 1", &[]).await.is_err());
}

/// A connection left inside a transaction (here by a raw `BEGIN`) is not kept for the next
/// operation: it goes back to the pool, as sqlx's pool would have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_inside_a_transaction_is_never_parked() {
    let db = one_connection(Duration::from_secs(60)).await;
    let pinned = db.pin().await.unwrap();
    pinned.session().execute("BEGIN", &[]).await.unwrap();
    pinned.release().await;
    idle_becomes(&db, 1).await;
}

/// A pin that nothing else refers to parks its connection in the same slot, for the next pin to
/// reuse; a session made by a pin that outlives it must not follow the connection there. Both
/// ways of giving a pin up are checked: dropping it and `release`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outliving_its_pin_is_closed_while_the_connection_is_reused() {
    let db = one_connection(Duration::from_secs(60)).await;
    for release in [false, true] {
        let pinned = db.pin().await.unwrap();
        pinned
            .session()
            .execute("CREATE TEMP TABLE IF NOT EXISTS mark(x)", &[])
            .await
            .unwrap();
        let leaked = pinned.session();
        if release {
            pinned.release().await;
        } else {
            drop(pinned);
        }
        // The one connection, parked (a temp table lives with its connection) and pinned again.
        let again = db.pin().await.unwrap();
        let marks = again
            .session()
            .query("SELECT count(*) FROM temp.mark", &[])
            .await
            .unwrap();
        assert_eq!(marks[0].try_get::<i64>(0).unwrap(), 0);
        let err = leaked.execute("SELECT 1", &[]).await.unwrap_err();
        assert!(
            matches!(err, liteorm_core::Error::Closed(_)),
            "release {release}: {err}"
        );
        drop(leaked);
        // Unshared now: given up whole, and reused whole by the next pin.
        drop(again);
        let third = db.pin().await.unwrap();
        third
            .session()
            .query("SELECT count(*) FROM temp.mark", &[])
            .await
            .unwrap();
    }
}
