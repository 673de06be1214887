//! Every assumption liteorm-sqlite makes about sqlx beyond its documented API, in one place.
//!
//! The workspace pins sqlx (and `sqlx-sqlite`) to the exact version these were read against,
//! [`AUDITED_SQLX`], so that a sqlx release cannot change them under a caret requirement. Each
//! assumption below names the canary test that fails when an upgrade breaks it; upgrading sqlx
//! means re-reading the cited code, running those canaries, and then moving the pin.
//!
//! 1. **The handle lock lives in the worker's shared state, on the heap.**
//!    `SqliteConnection::lock_handle` returns a guard on a mutex inside an `Arc` shared with the
//!    connection's worker thread, not on the `SqliteConnection` value. So the guard stays valid
//!    when the `PoolConnection` that owns the connection is moved, and liteorm keeps it across
//!    operations with its lifetime erased ([`erase_lifetime`]), beside that connection.
//!    Canaries: `sqlx_compat::a_handle_lock_survives_moving_its_connection`, and every parking
//!    test (a parked connection moves with its lock).
//! 2. **`lock_handle` may leave its "unlock" command queued.** It sends the worker an
//!    `UnlockDb` command and then waits for the mutex, which it can get before the worker read
//!    the command; the command then stays in the worker's bounded queue (50 commands), which is
//!    read in order. Leftovers must never pile up, or the next `lock_handle` waits for room in
//!    the queue while holding the lock the worker needs to drain it. [`lock_handle`] therefore
//!    pings (and so drains the queue up to the ping) before taking the lock again whenever a
//!    leftover may exist. Canaries: `raw_handle::*_never_deadlock` (tens of thousands of
//!    lock cycles, alone, alternated with sqlx statements and after cancelled ones).
//! 3. **sqlx pings every connection returned to its pool** (`PoolConnection::return_to_pool`),
//!    which drains its queue: a connection fresh from the pool has no leftover unlock command
//!    ([`FRESH_FROM_POOL_UNLOCK_QUEUED`]) and no rollback of a dropped sqlx transaction still
//!    queued. Canary: `sqlx_compat::connections_come_back_from_the_pool_drained`.
//! 4. **The handle-lock guard may be released from any thread**, and sqlx opens connections in
//!    SQLite's multi-thread mode (one user at a time, any thread). liteorm moves a locked
//!    connection onto a blocking thread (`blocking::spawn`) and back. Canary: the compile-time check that
//!    `LockedSqliteHandle<'static>` is `Send` below, and
//!    `sqlx_compat::a_handle_lock_is_released_from_another_thread`.
//! 5. **A pool and its clones share one `Arc` of connect options** ([`pool_id`]), which
//!    identifies the pool for routing a pool-backed session to the connection a capture pinned
//!    on the same task (unless `Pool::set_connect_options` replaces it, after which the pool
//!    counts as a new one). Canary: `sqlx_compat::a_pool_and_its_clones_share_one_identity`.
//! 6. **liteorm runs its own transaction control** (`BEGIN`, `SAVEPOINT liteorm_savepoint_N`,
//!    inline), so sqlx's per-connection transaction counter stays 0; an `sqlx::Transaction`
//!    begun on a pinned connection inside liteorm's transaction issues a plain `BEGIN`, which
//!    SQLite refuses (no silent nesting). Canary:
//!    `sqlx_compat::an_sqlx_transaction_inside_a_liteorm_one_is_refused`.
//! 7. **Values decode the same way inline and through sqlx.** Pinned sessions step statements
//!    inline (`inline.rs`) and fall back to sqlx (`convert.rs`) for SQL that cannot run inline;
//!    both must produce the same `Value`s. Canary:
//!    `sqlx_compat::inline_and_sqlx_rows_decode_alike`.

use std::sync::Arc;

use liteorm_core::Result;
use sqlx::Connection as _;
use sqlx::sqlite::{LockedSqliteHandle, SqliteConnection, SqlitePool};

use crate::convert;

/// The sqlx version these assumptions were checked against (the workspace pins it exactly).
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "documents the audit; a canary checks the pin")
)]
pub(crate) const AUDITED_SQLX: &str = "0.9.0";

/// Whether a connection that sqlx's pool just handed out may still have an unlock command of an
/// earlier `lock_handle` queued (assumption 3: it may not).
pub(crate) const FRESH_FROM_POOL_UNLOCK_QUEUED: bool = false;

// Assumption 4, checked by the compiler.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<LockedSqliteHandle<'static>>();
};

/// Takes sqlx's handle lock on `conn` (assumption 2): first pings the worker if an unlock
/// command of an earlier `lock_handle` may still be queued (`*unlock_queued`), then records
/// that this one's may be. The flag is set before the lock is asked for, so that a future
/// cancelled midway leaves it set; clear it once the worker answered any later command.
pub(crate) async fn lock_handle<'c>(
    conn: &'c mut SqliteConnection,
    unlock_queued: &mut bool,
) -> Result<LockedSqliteHandle<'c>> {
    if *unlock_queued {
        conn.ping().await.map_err(convert::error)?;
        *unlock_queued = false;
    }
    *unlock_queued = true;
    conn.lock_handle().await.map_err(convert::error)
}

/// [`lock_handle`], waiting synchronously (on a thread that may block).
pub(crate) fn lock_handle_blocking<'c>(
    conn: &'c mut SqliteConnection,
    unlock_queued: &mut bool,
) -> Result<LockedSqliteHandle<'c>> {
    futures::executor::block_on(lock_handle(conn, unlock_queued))
}

/// Erases the lifetime of a handle lock, so that it can be kept beside its connection.
///
/// # Safety
/// The caller keeps the connection that `handle` locks alive, makes no call on it through sqlx,
/// and neither closes it nor returns it to the pool, until the returned guard is dropped. Moving
/// the connection is allowed (assumption 1: the lock is not inside the connection value).
pub(crate) unsafe fn erase_lifetime(handle: LockedSqliteHandle<'_>) -> LockedSqliteHandle<'static> {
    // SAFETY: only the lifetime changes; the caller's promise (above) stands in for the borrow.
    unsafe { std::mem::transmute::<LockedSqliteHandle<'_>, LockedSqliteHandle<'static>>(handle) }
}

/// Identifies a sqlx pool and its clones (assumption 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolId(usize);

/// The identity of `pool`: equal for a pool and all its clones, different for another pool.
pub(crate) fn pool_id(pool: &SqlitePool) -> PoolId {
    PoolId(Arc::as_ptr(&pool.connect_options()) as usize)
}

#[cfg(test)]
mod canaries {
    //! One test per assumption above: each fails when a sqlx upgrade breaks it.

    use std::time::Duration;

    use liteorm_core::{Session as _, Value};
    use sqlx::Connection as _;
    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;
    use crate::SqliteSession;

    async fn pool(dir: &tempfile::TempDir, max: u32) -> SqlitePool {
        let options = SqliteSession::options(&dir.path().join("compat.db").display().to_string())
            .expect("options");
        SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await
            .expect("pool")
    }

    /// The workspace pins sqlx and sqlx-sqlite to exactly the audited version.
    #[test]
    fn sqlx_is_pinned_to_the_audited_version() {
        let manifest =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
                .expect("workspace Cargo.toml");
        let pinned = format!("version = \"={AUDITED_SQLX}\"");
        for dependency in ["sqlx", "sqlx-sqlite"] {
            let line = manifest
                .lines()
                .find(|line| line.starts_with(&format!("{dependency} = ")))
                .unwrap_or_else(|| panic!("no `{dependency}` in [workspace.dependencies]"));
            assert!(
                line.contains(&pinned),
                "{dependency} must be pinned to the audited {AUDITED_SQLX}: {line}"
            );
        }
    }

    /// Assumption 1: moving the connection that a kept lock locks leaves the lock valid.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handle_lock_survives_moving_its_connection() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = pool(&dir, 1).await;
        let mut conn = pool.acquire().await.expect("acquire");
        let mut queued = false;
        let handle = lock_handle(&mut conn, &mut queued).await.expect("lock");
        // SAFETY: the guard is dropped below, before the connection is used or dropped.
        let mut handle = unsafe { erase_lifetime(handle) };
        let moved = vec![conn];
        let raw = handle.as_raw_handle();
        // SAFETY: `raw` is the connection's handle, locked for us by `handle`.
        let autocommit = unsafe { libsqlite3_sys::sqlite3_get_autocommit(raw.as_ptr()) };
        assert_eq!(autocommit, 1);
        drop(handle);
        let mut conn = moved.into_iter().next().expect("the connection");
        tokio::time::timeout(Duration::from_secs(10), conn.ping())
            .await
            .expect("the worker took the connection back")
            .expect("ping");
    }

    /// Assumption 2 (with `raw_handle::*_never_deadlock`): taking the lock over and over,
    /// without any other command between, completes: leftover unlock commands never fill
    /// the worker's queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn back_to_back_handle_locks_complete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = pool(&dir, 1).await;
        let mut conn = pool.acquire().await.expect("acquire");
        let mut queued = FRESH_FROM_POOL_UNLOCK_QUEUED;
        for round in 0..5_000 {
            let lock = lock_handle(&mut conn, &mut queued);
            match tokio::time::timeout(Duration::from_secs(10), lock).await {
                Ok(handle) => drop(handle.expect("lock")),
                Err(_) => panic!("lock {round} did not complete within 10 s"),
            }
        }
    }

    /// Assumption 3: a connection just handed out by the pool has nothing of liteorm's queued,
    /// however the previous user left it (a lock just taken, an sqlx transaction dropped).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_come_back_from_the_pool_drained() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = pool(&dir, 1).await;
        sqlx::query("CREATE TABLE t(x)")
            .execute(&pool)
            .await
            .expect("create");
        for round in 0..500 {
            let step = async {
                let mut conn = pool.acquire().await.expect("acquire");
                let mut queued = FRESH_FROM_POOL_UNLOCK_QUEUED;
                drop(lock_handle(&mut conn, &mut queued).await.expect("lock"));
                let mut tx = conn.begin().await.expect("begin");
                sqlx::query("INSERT INTO t VALUES (1)")
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                // Dropped: sqlx queues the rollback without waiting for it.
            };
            if tokio::time::timeout(Duration::from_secs(10), step)
                .await
                .is_err()
            {
                panic!("round {round} did not complete within 10 s");
            }
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(count, 0, "every dropped transaction was rolled back");
    }

    /// Assumption 4: a lock taken on one thread is released on another, and the worker then
    /// carries on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handle_lock_is_released_from_another_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = pool(&dir, 1).await;
        let mut conn = pool.acquire().await.expect("acquire");
        let mut queued = false;
        let handle = lock_handle(&mut conn, &mut queued).await.expect("lock");
        // SAFETY: the guard is dropped (on the other thread, joined below) before the
        // connection is used again.
        let handle = unsafe { erase_lifetime(handle) };
        std::thread::spawn(move || drop(handle))
            .join()
            .expect("thread");
        tokio::time::timeout(Duration::from_secs(10), conn.ping())
            .await
            .expect("the worker took the connection back")
            .expect("ping");
    }

    /// Assumption 5: a pool and its clones are one pool; another pool is another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_and_its_clones_share_one_identity() {
        let dir = tempfile::tempdir().expect("temp dir");
        let one = pool(&dir, 2).await;
        let other = pool(&dir, 2).await;
        assert_eq!(pool_id(&one), pool_id(&one.clone()));
        assert_ne!(pool_id(&one), pool_id(&other));
    }

    /// Assumption 6: sqlx's own transaction on a connection inside liteorm's transaction is
    /// refused rather than nested silently; liteorm's transaction is intact afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_sqlx_transaction_inside_a_liteorm_one_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = SqliteSession::from_pool(pool(&dir, 1).await)
            .await
            .expect("session");
        db.execute_batch("CREATE TABLE t(x)").await.expect("create");
        let pinned = db.pin().await.expect("pin");
        let mut guard = pinned.lock().await.expect("lock");
        guard.begin().await.expect("begin");
        let nested = guard.connection().begin().await;
        assert!(nested.is_err(), "sqlx began a transaction inside liteorm's");
        drop(nested);
        assert_eq!(guard.transaction_depth(), 1);
        guard.rollback().await.expect("rollback");
    }

    /// Assumption 7: every storage class reads back the same inline and through sqlx.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inline_and_sqlx_rows_decode_alike() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = pool(&dir, 1).await;
        let db = SqliteSession::from_pool(pool.clone())
            .await
            .expect("session");
        db.execute_batch(
            "CREATE TABLE v(i INTEGER, r REAL, t TEXT, b BLOB, n NUMERIC, any);
             INSERT INTO v VALUES (9223372036854775807, 1e-300, 'é', x'00ff', '12', NULL);
             INSERT INTO v VALUES (-1, -0.0, '', x'', 1.5, 'text');
             INSERT INTO v VALUES (NULL, NULL, NULL, NULL, NULL, x'01');
             INSERT INTO v VALUES ('9', 'x', 9, 'y', 'z', 3.25);",
        )
        .await
        .expect("values");
        let sql = "SELECT i, r, t, b, n, any, i + 1 AS e FROM v ORDER BY rowid";
        let pinned = db.pin().await.expect("pin");
        let inline = pinned.session().query(sql, &[]).await.expect("inline");
        drop(pinned);
        let through_sqlx = crate::convert::rows(
            sqlx::query(sql)
                .fetch_all(&pool)
                .await
                .expect("through sqlx"),
        )
        .expect("convert");
        assert_eq!(inline.len(), 4);
        for (a, b) in inline.iter().zip(&through_sqlx) {
            assert_eq!(a.columns(), b.columns());
            assert_eq!(a.values(), b.values());
        }
        assert_eq!(inline[1].values()[1], Value::Real(-0.0));
    }
}
