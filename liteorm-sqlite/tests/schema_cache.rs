//! `PinnedGuard::schema_cached` keeps what it read while the schema does not change, also
//! across raw calls that expire the connection's statements without changing the schema.

use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use libsqlite3_sys as ffi;
use liteorm_core::Session as _;
use liteorm_sqlite::raw::{Handle, MemoKey};
use liteorm_sqlite::{PinnedConnection, PinnedGuard, SqliteSession};

/// Runs `sql` on a raw handle.
fn exec(db: Handle<'_>, sql: &CStr) {
    // SAFETY: `db` comes from a `with_raw*` call: valid and locked for its closure.
    let rc = unsafe {
        ffi::sqlite3_exec(
            db.as_ptr(),
            sql.as_ptr(),
            None,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(rc, ffi::SQLITE_OK, "{sql:?}");
}

/// The values this test keeps.
const TEST_KEY: MemoKey<()> = MemoKey::new("schema_cache_test");

/// Asks the cache for one value and returns how many times it has been read from the schema.
async fn reads_after_lookup(guard: &mut PinnedGuard, reads: &AtomicUsize) -> usize {
    guard
        .schema_cached(TEST_KEY, "t", |_| {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(())
        })
        .await
        .expect("connection")
        .expect("read");
    reads.load(Ordering::SeqCst)
}

/// A session on a new file database in `dir` with a table `t`, and one of its connections
/// pinned.
async fn pinned_with_t(dir: &tempfile::TempDir) -> (SqliteSession, PinnedConnection) {
    let db = SqliteSession::open(&dir.path().join("cache.db").display().to_string())
        .await
        .expect("open");
    db.execute_batch("CREATE TABLE t(x)").await.expect("schema");
    let pinned = db.pin().await.expect("pin");
    (db, pinned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_values_outlive_an_expiry_that_changes_no_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_db, pinned) = pinned_with_t(&dir).await;
    let mut guard = pinned.lock().await.expect("lock");
    let reads = AtomicUsize::new(0);

    assert_eq!(reads_after_lookup(&mut guard, &reads).await, 1);
    assert_eq!(reads_after_lookup(&mut guard, &reads).await, 1, "kept");

    // Setting this pragma expires every statement of the connection (`sqlite3changeset_apply`
    // sets it); an ordinary raw call cannot tell that from a schema change, so it forgets.
    guard
        .with_raw(|db| exec(db, c"PRAGMA defer_foreign_keys = 1"))
        .await
        .expect("raw");
    assert_eq!(reads_after_lookup(&mut guard, &reads).await, 2, "forgotten");

    // The same expiry in a call declared schema-neutral keeps the values, on either path.
    guard
        .with_raw_same_schema(|db| exec(db, c"PRAGMA defer_foreign_keys = 0"))
        .await
        .expect("raw");
    assert_eq!(reads_after_lookup(&mut guard, &reads).await, 2, "kept");
    let mut guard = tokio::task::spawn_blocking(move || {
        guard
            .with_raw_same_schema_blocking(|db| exec(db, c"PRAGMA defer_foreign_keys = 1"))
            .expect("raw");
        guard
    })
    .await
    .expect("blocking task");
    assert_eq!(reads_after_lookup(&mut guard, &reads).await, 2, "kept");

    // A schema change inside such a call is still noticed.
    guard
        .with_raw_same_schema(|db| exec(db, c"CREATE TABLE u(y)"))
        .await
        .expect("raw");
    assert_eq!(reads_after_lookup(&mut guard, &reads).await, 3, "forgotten");
    assert_eq!(reads_after_lookup(&mut guard, &reads).await, 3, "kept");
}

/// A batch of one statement runs inline while the handle lock is held, and the lock is kept
/// with what it holds (the values read from the schema among them); a batch of several goes
/// through sqlx's worker, which takes the lock back. (Checked inside a transaction with a
/// statement that reads no table: SQLite also prepares the watch statement again after a
/// statement that reads or writes a table there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_one_statement_keeps_the_handle_lock_and_a_longer_one_gives_it_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_db, pinned) = pinned_with_t(&dir).await;
    let mut guard = pinned.lock().await.expect("lock");
    let reads = AtomicUsize::new(0);
    guard.begin_immediate().await.expect("begin");
    assert_eq!(reads_after_lookup(&mut guard, &reads).await, 1);
    guard
        .execute_batch("SELECT 1")
        .await
        .expect("one statement");
    assert_eq!(reads_after_lookup(&mut guard, &reads).await, 1, "kept");
    guard
        .execute_batch("SELECT 1; SELECT 2")
        .await
        .expect("two statements");
    assert_eq!(
        reads_after_lookup(&mut guard, &reads).await,
        2,
        "read again"
    );

    // Writes, in the transaction and outside one (on a file, where it could wait for a lock),
    // and an error.
    guard
        .execute_batch("INSERT INTO t VALUES (1)")
        .await
        .expect("one insert");
    guard
        .execute_batch("INSERT INTO t VALUES (2); INSERT INTO t VALUES (3)")
        .await
        .expect("two inserts");
    guard.commit().await.expect("commit");
    guard
        .execute_batch("INSERT INTO t VALUES (4)")
        .await
        .expect("autocommit");
    let err = guard
        .execute_batch("INSERT INTO nosuch VALUES (1)")
        .await
        .expect_err("no such table");
    assert!(err.to_string().contains("no such table"), "{err}");
    drop(guard);
    let rows = pinned
        .session()
        .query("SELECT count(*) FROM t", &[])
        .await
        .expect("count");
    assert_eq!(rows[0].try_get::<i64>(0).expect("integer"), 4);
    pinned.release().await;
}
