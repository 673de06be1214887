//! `raw::memory_used` and `raw::page_cache_used` follow SQLite's page caches: they grow as pages
//! are cached, up to each connection's `cache_size`, and shrink when the connection closes. The
//! counters are process-wide, so this binary has this one test.

use liteorm_core::Session as _;
use liteorm_sqlite::{SqliteSession, raw};

/// A pool of one connection on `path` whose page cache holds at most `cache_kib` KiB.
async fn open(path: &str, cache_kib: u64) -> SqliteSession {
    let options = SqliteSession::options(path)
        .expect("options")
        .pragma("cache_size", format!("-{cache_kib}"));
    SqliteSession::connect_with(options, SqliteSession::pool_options().max_connections(1))
        .await
        .expect("open")
}

const MIB: i64 = 1024 * 1024;

#[tokio::test]
async fn page_cache_use_grows_to_the_cache_size_and_is_freed_on_close() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("memory.db").display().to_string();
    let before = raw::page_cache_used();

    // About 4 MiB of rows, written through a cache big enough to keep every page.
    let big = open(&path, 16 * 1024).await;
    big.execute_batch(
        "CREATE TABLE t(x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO t SELECT randomblob(4000) FROM n;",
    )
    .await
    .expect("fill");
    let filled = raw::page_cache_used();
    assert!(
        filled - before > 3 * MIB,
        "4 MiB of pages in a 16 MiB cache: page cache use went from {before} to {filled}"
    );
    assert!(
        raw::memory_used() >= filled,
        "the page caches are part of SQLite's heap"
    );
    big.close().await;
    let closed = raw::page_cache_used();
    assert!(
        closed - before < MIB / 2,
        "closing the connection frees its cache: {before} before, {closed} after"
    );

    // Reading every page through a 256 KiB cache keeps at most that much.
    let small = open(&path, 256).await;
    let rows = small
        .query("SELECT sum(length(x)) FROM t", &[])
        .await
        .expect("read");
    assert_eq!(rows.len(), 1);
    let read = raw::page_cache_used();
    assert!(
        read - closed < MIB / 2,
        "a 256 KiB cache over a 4 MiB table: page cache use went from {closed} to {read}"
    );
    small.close().await;
}
