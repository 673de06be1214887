//! `PinnedGuard::data_version`: what SQLite's data version counts, as `DataVersion::moves_since`
//! reports it. liteorm-replication skips its head check on the strength of these rules (a
//! commit of one's own moves it by exactly one, anyone else's commit by at least one more), so
//! this test pins them against the linked SQLite.

use liteorm_core::Session as _;
use liteorm_sqlite::raw::DataVersion;
use liteorm_sqlite::{PinnedConnection, SqliteSession};

async fn file_session(dir: &tempfile::TempDir) -> SqliteSession {
    let path = dir.path().join("version.db");
    SqliteSession::open(path.to_str().expect("a UTF-8 path"))
        .await
        .expect("open")
}

async fn version(pinned: &PinnedConnection) -> DataVersion {
    let mut guard = pinned.lock().await.expect("lock");
    guard.data_version().await.expect("data version")
}

/// Runs `sql` as one transaction on the pinned connection.
async fn commit(pinned: &PinnedConnection, sql: &str) {
    let mut guard = pinned.lock().await.expect("lock");
    guard.begin_immediate().await.expect("begin");
    guard.execute_batch(sql).await.expect("write");
    guard.commit().await.expect("commit");
}

#[tokio::test]
async fn own_commits_move_it_by_one_each_and_reads_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = file_session(&dir).await;
    let pinned = db.pin().await.expect("pin");
    // On this connection: a commit through another connection of the pool would move the
    // version too, when this one next reads.
    pinned
        .session()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .await
        .expect("create");
    let start = version(&pinned).await;
    assert_eq!(start.moves_since(&start), Some(0));

    pinned
        .session()
        .query("SELECT count(*) FROM t", &[])
        .await
        .expect("read");
    assert_eq!(version(&pinned).await.moves_since(&start), Some(0));

    commit(&pinned, "INSERT INTO t VALUES (1, 'a')").await;
    let one = version(&pinned).await;
    assert_eq!(one.moves_since(&start), Some(1));

    // Uncommitted writes do not move it; their commit does, once.
    let mut guard = pinned.lock().await.expect("lock");
    guard.begin_immediate().await.expect("begin");
    guard
        .execute_batch("INSERT INTO t VALUES (2, 'b')")
        .await
        .expect("write");
    let inside = guard.data_version().await.expect("data version");
    assert_eq!(inside.moves_since(&one), Some(0));
    guard.commit().await.expect("commit");
    drop(guard);
    assert_eq!(version(&pinned).await.moves_since(&one), Some(1));

    // An autocommit statement is a transaction of its own.
    pinned
        .session()
        .execute("UPDATE t SET v = 'c' WHERE id = 1", &[])
        .await
        .expect("update");
    assert_eq!(version(&pinned).await.moves_since(&one), Some(2));
    assert_eq!(version(&pinned).await.moves_since(&start), Some(3));
}

#[tokio::test]
async fn commits_through_other_connections_move_it_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = file_session(&dir).await;
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .await
        .expect("create");
    let other = file_session(&dir).await;
    let pinned = db.pin().await.expect("pin");
    commit(&pinned, "INSERT INTO t VALUES (1, 'a')").await;
    let before = version(&pinned).await;

    // Two commits elsewhere, then one of our own: more than the one move of our own commit.
    other
        .execute("INSERT INTO t VALUES (2, 'b')", &[])
        .await
        .expect("insert elsewhere");
    other
        .execute("INSERT INTO t VALUES (3, 'c')", &[])
        .await
        .expect("insert elsewhere");
    commit(&pinned, "INSERT INTO t VALUES (4, 'd')").await;
    let moves = version(&pinned).await.moves_since(&before);
    assert!(
        moves.is_some_and(|m| m >= 2),
        "our commit and two others' show as {moves:?} moves"
    );
}

#[tokio::test]
async fn readings_compare_only_on_one_connection_without_raw_access_between() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = file_session(&dir).await;
    let other = file_session(&dir).await;
    let (mine, theirs) = (
        db.pin().await.expect("pin"),
        other.pin().await.expect("pin"),
    );
    let (a, b) = (version(&mine).await, version(&theirs).await);
    assert_eq!(a.moves_since(&b), None);
    assert_eq!(b.moves_since(&a), None);

    // Raw access could have replaced the database (`sqlite3_deserialize`): not comparable.
    let mut guard = mine.lock().await.expect("lock");
    guard.with_raw(|_| ()).await.expect("raw");
    let after_raw = guard.data_version().await.expect("data version");
    assert_eq!(after_raw.moves_since(&a), None);
    // Calls that promise to change no setting keep readings comparable.
    guard.with_raw_same_settings(|_| ()).await.expect("raw");
    let same = guard.data_version().await.expect("data version");
    assert_eq!(same.moves_since(&after_raw), Some(0));
}
