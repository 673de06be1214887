//! liteorm's side of the benchmarks: opening databases the way WORKLOADS.md asks, the mix
//! through the `Session` trait, and untimed raw access for setup and content checks.

use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;
use sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use tempfile::TempDir;

use crate::common::{BenchResult, DbMode, INSERT, MIX_DELETE, MIX_UPDATE, RowData, populate};
use crate::raw::Handle;

/// A liteorm session on a fresh database, with the temp directory of `--db file`.
pub(crate) struct LiteDb {
    /// The session the workloads use.
    pub(crate) session: SqliteSession,
    dir: Option<TempDir>,
}

impl LiteDb {
    /// Opens a fresh, empty database.
    ///
    /// `mem`: liteorm's options for the path `:memory:` (a private, not shared-cache, in-memory
    /// database; `sqlite::memory:` would give a shared-cache one) on a pool of exactly one
    /// connection that is never closed for idleness or age, since closing it would drop the
    /// database. `file`: liteorm's options (WAL, foreign keys on, 5 s busy timeout) plus
    /// `synchronous=NORMAL`, on liteorm's default pool. Both pools start from liteorm's
    /// [`SqliteSession::pool_options`], as an application opening with `SqliteSession::open` gets.
    pub(crate) async fn open(mode: DbMode) -> BenchResult<Self> {
        let (session, dir) = match mode {
            DbMode::Mem => {
                let options = SqliteSession::options(":memory:")?;
                let pool = SqliteSession::pool_options()
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
                (SqliteSession::connect_with(options, pool).await?, None)
            }
            DbMode::File => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("bench.db");
                let path = path.to_str().ok_or("temp path is not UTF-8")?;
                let options = SqliteSession::options(path)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal);
                let pool = SqliteSession::pool_options();
                (SqliteSession::connect_with(options, pool).await?, Some(dir))
            }
        };
        Ok(LiteDb { session, dir })
    }

    /// Opens a fresh database holding rows `1..=n` (populated with the baseline's own code on
    /// liteorm's connection, so both sides start from identical data).
    pub(crate) async fn populated(mode: DbMode, n: i64) -> BenchResult<Self> {
        let db = Self::open(mode).await?;
        db.with_raw(|h| populate(h, n)).await?;
        Ok(db)
    }

    /// Runs `f` on the raw handle of one of the pool's connections (untimed setup and checks).
    pub(crate) async fn with_raw<R>(
        &self,
        f: impl for<'h> FnOnce(Handle<'h>) -> BenchResult<R>,
    ) -> BenchResult<R> {
        let pinned = self.session.pin().await?;
        let mut guard = pinned.lock().await?;
        let result = guard
            .with_raw(|db| {
                // SAFETY: `with_raw` hands out a valid handle that sqlx's worker does not touch
                // until the closure returns, and the `Handle` does not escape the closure.
                f(unsafe { Handle::from_raw(db.as_non_null()) })
            })
            .await?;
        drop(guard);
        pinned.release().await;
        result
    }

    /// Closes the pool, then removes the temp directory.
    pub(crate) async fn close(self) {
        self.session.close().await;
        drop(self.dir);
    }
}

/// A row as the five positional parameters of [`INSERT`].
pub(crate) fn values(row: &RowData) -> [Value; 5] {
    [
        Value::Integer(row.id),
        Value::Text(row.a.clone()),
        Value::Integer(row.b),
        Value::Real(row.c),
        Value::Blob(row.d.to_vec()),
    ]
}

/// The capture mix's statements, through the `Session` trait (the caller provides the
/// transaction: `begin()` for the plain mix, capture's own for the recorded one).
pub(crate) async fn mix(s: &dyn Session, inserts: &[[Value; 5]]) -> liteorm_core::Result<()> {
    s.execute(MIX_UPDATE, &[]).await?;
    s.execute(MIX_DELETE, &[]).await?;
    for row in inserts {
        s.execute(INSERT, row).await?;
    }
    Ok(())
}
