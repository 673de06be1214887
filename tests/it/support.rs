//! Helpers shared by the integration tests: temp databases and table dumps.

use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;
use tempfile::TempDir;

/// A fresh database file in its own temp dir (kept alive by the returned guard).
pub(crate) async fn file_db() -> (SqliteSession, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("test.db");
    let db = SqliteSession::open(path.to_str().expect("utf-8 path"))
        .await
        .expect("open db");
    (db, dir)
}

/// Every row of `table`, ordered by its first column, as plain values.
pub(crate) async fn dump(db: &dyn Session, table: &str) -> Vec<Vec<Value>> {
    db.query(&format!("SELECT * FROM {table} ORDER BY 1"), &[])
        .await
        .expect("dump table")
        .into_iter()
        .map(|row| row.into_values())
        .collect()
}
