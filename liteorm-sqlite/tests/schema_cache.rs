//! `PinnedGuard::schema_cached` keeps what it read while the schema does not change, also
//! across raw calls that expire the connection's statements without changing the schema.

use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use libsqlite3_sys as ffi;
use liteorm_core::Session as _;
use liteorm_sqlite::raw::{Handle, MemoKey};
use liteorm_sqlite::{PinnedGuard, SqliteSession};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_values_outlive_an_expiry_that_changes_no_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SqliteSession::open(&dir.path().join("cache.db").display().to_string())
        .await
        .expect("open");
    db.execute_batch("CREATE TABLE t(x)").await.expect("schema");
    let pinned = db.pin().await.expect("pin");
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
