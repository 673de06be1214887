//! `SqliteSession`: the `Session` trait on a sqlx SQLite pool or on one pinned connection.

use std::any::Any;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use liteorm_core::{Dialect, Error, Result, Row, Session, Transaction, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{AssertSqlSafe, Executor as _};

use crate::pinned::Slot;
use crate::{DIALECT, PinnedConnection, PinnedGuard, SqliteInfo, convert};

/// A liteorm [`Session`] on SQLite.
///
/// Cheap to clone. A session opened with [`SqliteSession::open`] or [`SqliteSession::from_pool`]
/// runs each statement on any free pool connection; [`Session::begin`] and [`SqliteSession::pin`]
/// hold one connection for as long as the transaction or pin lives.
#[derive(Clone)]
pub struct SqliteSession {
    target: Target,
    info: Arc<SqliteInfo>,
}

#[derive(Clone)]
enum Target {
    Pool(SqlitePool),
    Pinned(Slot),
}

impl SqliteSession {
    /// Opens a database from a URL (`sqlite://app.db`, `sqlite::memory:`) or a file path, creating
    /// the file if it is missing, with liteorm's defaults: WAL for files, a 5 s busy timeout and
    /// foreign keys on.
    pub async fn open(url_or_path: &str) -> Result<Self> {
        Self::connect_with(Self::options(url_or_path)?, Self::pool_options()).await
    }

    /// liteorm's default pool options: sqlx's, without the ping before every acquire
    /// (`test_before_acquire(false)`). A SQLite connection is in-process, so it cannot be
    /// dropped by a server while idle, and sqlx already pings it when it comes back to the pool
    /// (which also flushes a rollback queued by a dropped transaction); the ping on acquire is
    /// one more round trip to the connection's worker thread for every pool-backed statement,
    /// transaction and capture.
    pub fn pool_options() -> SqlitePoolOptions {
        SqlitePoolOptions::new().test_before_acquire(false)
    }

    /// Opens a private in-memory database shared by the connections of this session's pool.
    pub async fn open_in_memory() -> Result<Self> {
        Self::open("sqlite::memory:").await
    }

    /// liteorm's default connect options for `url_or_path` (see [`Self::open`]).
    pub fn options(url_or_path: &str) -> Result<SqliteConnectOptions> {
        let options = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path).map_err(convert::error)?
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let in_memory = url_or_path.contains(":memory:") || url_or_path.contains("mode=memory");
        let journal = if in_memory {
            SqliteJournalMode::Memory
        } else {
            SqliteJournalMode::Wal
        };
        Ok(options
            .create_if_missing(true)
            .journal_mode(journal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true))
    }

    /// Opens a pool with explicit sqlx options.
    pub async fn connect_with(
        options: SqliteConnectOptions,
        pool: SqlitePoolOptions,
    ) -> Result<Self> {
        let pool = pool.connect_with(options).await.map_err(convert::error)?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing sqlx pool.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        let row: (String, bool, bool) = sqlx::query_as(SqliteInfo::QUERY)
            .fetch_one(&pool)
            .await
            .map_err(convert::error)?;
        let info = Arc::new(SqliteInfo::new(row.0, row.1, row.2));
        Ok(SqliteSession {
            target: Target::Pool(pool),
            info,
        })
    }

    pub(crate) fn pinned(slot: Slot, info: Arc<SqliteInfo>) -> Self {
        SqliteSession {
            target: Target::Pinned(slot),
            info,
        }
    }

    /// Facts about the linked SQLite (version, session extension), read at open time.
    pub fn info(&self) -> &SqliteInfo {
        &self.info
    }

    /// The pool behind this session, unless it is pinned to one connection.
    pub fn pool(&self) -> Option<&SqlitePool> {
        match &self.target {
            Target::Pool(pool) => Some(pool),
            Target::Pinned(_) => None,
        }
    }

    /// Whether every statement of this session runs on one physical connection.
    pub fn is_pinned(&self) -> bool {
        matches!(self.target, Target::Pinned(_))
    }

    /// Holds one physical connection: a pool-backed session acquires one from the pool; a pinned
    /// session (a transaction, or a session handed out by a capability crate) shares its own, so
    /// that work on the pin joins the transaction already open on it.
    pub async fn pin(&self) -> Result<PinnedConnection> {
        match &self.target {
            Target::Pool(pool) => {
                let conn = pool.acquire().await.map_err(convert::error)?;
                Ok(PinnedConnection::acquired(conn, Arc::clone(&self.info)))
            }
            Target::Pinned(slot) => Ok(PinnedConnection::shared(
                Arc::clone(slot),
                Arc::clone(&self.info),
            )),
        }
    }

    /// Starts a transaction with `BEGIN IMMEDIATE`: it holds the write lock from the start, so
    /// it waits (up to the busy timeout) for other writers instead of failing when it first
    /// writes after reading. Nested in a transaction, it is a savepoint like [`Session::begin`].
    pub async fn begin_immediate(&self) -> Result<SqliteTransaction> {
        let pinned = self.pin().await?;
        let depth = pinned.lock().await?.begin_immediate().await?;
        Ok(SqliteTransaction {
            session: pinned.session(),
            pinned,
            depth,
            finished: false,
        })
    }

    /// Runs `op` on a connection: any pool connection, or the pinned one.
    async fn run<R>(
        &self,
        op: impl for<'c> FnOnce(
            &'c mut SqliteConnection,
        ) -> liteorm_core::BoxFuture<'c, Result<R, sqlx::Error>>,
    ) -> Result<R> {
        match &self.target {
            Target::Pool(pool) => {
                let mut conn = pool.acquire().await.map_err(convert::error)?;
                op(&mut conn).await.map_err(convert::error)
            }
            Target::Pinned(slot) => {
                let mut guard = PinnedGuard::new_from(Arc::clone(slot).lock_owned().await)?;
                let result = op(guard.connection()).await;
                guard.sqlx_result(result)
            }
        }
    }
}

impl std::fmt::Debug for SqliteSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSession")
            .field("pinned", &self.is_pinned())
            .field("sqlite", &self.info.version)
            .finish()
    }
}

#[async_trait]
impl Session for SqliteSession {
    fn dialect(&self) -> Dialect {
        DIALECT
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        if let Target::Pinned(slot) = &self.target {
            let mut guard = PinnedGuard::new_from(Arc::clone(slot).lock_owned().await)?;
            if let Some(changes) = guard.execute_inline(sql, params).await? {
                return Ok(changes);
            }
        }
        let query = sqlx::query_with(AssertSqlSafe(sql.to_owned()), convert::arguments(params)?);
        self.run(move |conn| Box::pin(async move { conn.execute(query).await }))
            .await
            .map(|done| done.rows_affected())
    }

    async fn execute_batch(&self, sql: &str) -> Result<()> {
        let sql = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()));
        self.run(move |conn| Box::pin(async move { conn.execute(sql).await.map(drop) }))
            .await
    }

    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        if let Target::Pinned(slot) = &self.target {
            let mut guard = PinnedGuard::new_from(Arc::clone(slot).lock_owned().await)?;
            if let Some(rows) = guard.query_inline(sql, params).await? {
                return Ok(rows);
            }
        }
        let query = sqlx::query_with(AssertSqlSafe(sql.to_owned()), convert::arguments(params)?);
        let rows = self
            .run(move |conn| Box::pin(async move { conn.fetch_all(query).await }))
            .await?;
        convert::rows(rows)
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let pinned = self.pin().await?;
        let depth = pinned.lock().await?.begin().await?;
        Ok(Box::new(SqliteTransaction {
            session: pinned.session(),
            pinned,
            depth,
            finished: false,
        }))
    }
}

/// A transaction (or savepoint, when nested) on one pinned SQLite connection.
///
/// Dropping it without [`Transaction::commit`] rolls it back.
pub struct SqliteTransaction {
    session: SqliteSession,
    pinned: PinnedConnection,
    depth: usize,
    finished: bool,
}

impl SqliteTransaction {
    /// The pinned session this transaction runs on (a clone shares the transaction).
    pub fn session(&self) -> &SqliteSession {
        &self.session
    }

    async fn finish(mut self: Box<Self>, commit: bool) -> Result<()> {
        let mut guard = self.pinned.lock().await?;
        let depth = guard.transaction_depth();
        if depth != self.depth {
            return Err(Error::Transaction(format!(
                "transaction level {} cannot end while the connection is at level {depth}",
                self.depth
            )));
        }
        self.finished = true;
        if commit {
            guard.commit().await
        } else {
            guard.rollback().await
        }
    }
}

#[async_trait]
impl Session for SqliteTransaction {
    fn dialect(&self) -> Dialect {
        DIALECT
    }
    fn as_any(&self) -> &dyn Any {
        &self.session
    }
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.session.execute(sql, params).await
    }
    async fn execute_batch(&self, sql: &str) -> Result<()> {
        self.session.execute_batch(sql).await
    }
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.session.query(sql, params).await
    }
    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        self.session.begin().await
    }
}

#[async_trait]
impl Transaction for SqliteTransaction {
    async fn commit(self: Box<Self>) -> Result<()> {
        self.finish(true).await
    }
    async fn rollback(self: Box<Self>) -> Result<()> {
        self.finish(false).await
    }
    fn as_session(&self) -> &dyn Session {
        self
    }
}

impl Drop for SqliteTransaction {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let depth = self.depth;
        if let Some(mut guard) = self.pinned.try_lock() {
            // Usually nothing else runs on the connection: roll back now, so the connection goes
            // back to the pool (or to an outer transaction) at the right level.
            if let Err(err) = guard.rollback_levels_blocking(depth) {
                tracing::warn!(%err, "rolling back a dropped transaction failed");
            }
            return;
        }
        // A statement is still running on the connection (a clone of the session outlived the
        // transaction): roll back once it is done.
        let pinned = self.pinned.share();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(mut guard) = pinned.lock().await {
                    let undone =
                        tokio::task::spawn_blocking(move || guard.rollback_levels_blocking(depth));
                    if let Ok(Err(err)) = undone.await {
                        tracing::warn!(%err, "rolling back a dropped transaction failed");
                    }
                }
            });
        }
    }
}
