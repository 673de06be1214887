//! Helpers shared by the integration tests: temp databases, table dumps, and readers and
//! writers for stream tests.

use std::io::{self, Read, Write};

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

/// A reader over a copy of `bytes` that returns at most 7 bytes per read, so that changes
/// straddle the chunks SQLite asks for.
pub(crate) fn trickle(bytes: &[u8]) -> impl Read + Send + 'static {
    struct Trickle(io::Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            self.0.read(&mut buf[..n])
        }
    }
    Trickle(io::Cursor::new(bytes.to_vec()))
}

pub(crate) fn cursor(bytes: &[u8]) -> io::Cursor<Vec<u8>> {
    io::Cursor::new(bytes.to_vec())
}

/// A reader that fails after `ok` bytes.
pub(crate) struct FailsAfter(pub(crate) Vec<u8>, pub(crate) usize);

impl Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.1 == 0 {
            return Err(io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.1).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
        self.1 -= n;
        Ok(n)
    }
}

/// A writer that refuses everything.
#[derive(Debug)]
pub(crate) struct Full;

impl Write for Full {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::StorageFull, "no space"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
