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

/// Creates `t(id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)` with rows `1..=n`.
pub(crate) async fn seed(db: &dyn Session, n: i64) {
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)")
        .await
        .expect("create t");
    for id in 1..=n {
        db.execute(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            &[
                id.into(),
                format!("row-{id}").into(),
                (id as f64 / 2.0).into(),
                id.to_le_bytes().to_vec().into(),
            ],
        )
        .await
        .expect("seed row");
    }
}

/// The file behind `db`, as SQLite names it.
pub(crate) async fn db_path(db: &dyn Session) -> String {
    let rows = db
        .query(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            &[],
        )
        .await
        .expect("database_list");
    rows[0].try_get(0).expect("file name")
}

/// The changeset of running `sql` (one batch) through a capture of `tables` on `db`.
pub(crate) async fn captured(
    db: &dyn Session,
    tables: &[&str],
    sql: &'static str,
) -> liteorm_changeset::Changeset {
    liteorm_changeset::capture(db, tables, move |s| async move {
        s.execute_batch(sql).await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await
    .expect("capture")
}
