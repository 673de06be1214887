//! One physical connection held for the duration of an operation, and raw `sqlite3*` access to it.

use std::ptr::NonNull;
use std::sync::Arc;

use liteorm_core::{Error, Result};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqliteTransactionManager};
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};
use sqlx_core::transaction::TransactionManager as _;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{SqliteInfo, SqliteSession, convert};

/// The shared home of a pinned connection. `None` once the owner released it.
pub(crate) type Slot = Arc<Mutex<Option<PoolConnection<Sqlite>>>>;

/// One physical connection, held until this value is released or dropped.
///
/// Obtained from [`SqliteSession::pin`]. Every [`SqliteSession`] made by [`Self::session`] runs its
/// statements on this connection, so work done through it and raw work done through
/// [`Self::lock`] see the same connection state (temp tables, transactions, session objects).
pub struct PinnedConnection {
    slot: Slot,
    info: Arc<SqliteInfo>,
    owner: bool,
}

impl PinnedConnection {
    pub(crate) fn acquired(conn: PoolConnection<Sqlite>, info: Arc<SqliteInfo>) -> Self {
        PinnedConnection {
            slot: Arc::new(Mutex::new(Some(conn))),
            info,
            owner: true,
        }
    }

    pub(crate) fn shared(slot: Slot, info: Arc<SqliteInfo>) -> Self {
        PinnedConnection {
            slot,
            info,
            owner: false,
        }
    }

    /// Another handle on the same connection that does not own it (releasing or dropping it
    /// leaves the connection pinned).
    pub fn share(&self) -> Self {
        Self::shared(Arc::clone(&self.slot), Arc::clone(&self.info))
    }

    /// A session whose statements all run on this connection.
    pub fn session(&self) -> SqliteSession {
        SqliteSession::pinned(Arc::clone(&self.slot), Arc::clone(&self.info))
    }

    /// Whether this pin took the connection from the pool (and gives it back when released),
    /// rather than sharing the connection of an already pinned session.
    pub fn is_owner(&self) -> bool {
        self.owner
    }

    /// Facts about the SQLite library.
    pub fn info(&self) -> &SqliteInfo {
        &self.info
    }

    /// Exclusive access to the connection; waits for statements in flight on it to finish.
    pub async fn lock(&self) -> Result<PinnedGuard> {
        let guard = Arc::clone(&self.slot).lock_owned().await;
        PinnedGuard::new(guard)
    }

    /// Exclusive access if nobody holds it right now (for cleanup in `Drop`).
    pub fn try_lock(&self) -> Option<PinnedGuard> {
        let guard = Arc::clone(&self.slot).try_lock_owned().ok()?;
        PinnedGuard::new(guard).ok()
    }

    /// Gives an owned connection back to the pool. Sessions made by [`Self::session`] that
    /// outlive this call get [`Error::Closed`] instead of running on a connection that someone
    /// else may now use. For a shared pin this only drops the handle.
    pub async fn release(self) {
        if self.owner {
            self.slot.lock().await.take();
        }
    }
}

impl Drop for PinnedConnection {
    fn drop(&mut self) {
        if self.owner
            && let Ok(mut slot) = self.slot.try_lock()
        {
            slot.take();
        }
    }
}

/// Exclusive, owned (`'static`, `Send`) access to a pinned connection: no other statement runs on
/// it while the guard lives, and dropping the future that holds it cannot free the connection
/// under a running FFI call when the guard was moved into `spawn_blocking`.
pub struct PinnedGuard {
    guard: OwnedMutexGuard<Option<PoolConnection<Sqlite>>>,
}

impl PinnedGuard {
    pub(crate) fn new_from(guard: OwnedMutexGuard<Option<PoolConnection<Sqlite>>>) -> Result<Self> {
        Self::new(guard)
    }

    fn new(guard: OwnedMutexGuard<Option<PoolConnection<Sqlite>>>) -> Result<Self> {
        if guard.is_none() {
            return Err(Error::Closed("the pinned connection was released"));
        }
        Ok(PinnedGuard { guard })
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        // `new` checked that the slot holds a connection, and only the owner's `release` (which
        // needs this same lock) empties it.
        self.guard
            .as_deref_mut()
            .expect("PinnedGuard holds a connection by construction")
    }

    /// Runs `f` with the raw `sqlite3*` handle inside sqlx's `lock_handle()` guard, so that
    /// sqlx's worker thread makes no FFI call on the connection meanwhile. The pointer is only
    /// valid inside `f`.
    ///
    /// First it waits until the worker has processed every command queued on the connection
    /// (a ping). `lock_handle` sends the worker an "unlock" command and may obtain the lock
    /// before the worker reads it; that command then stays queued. Back-to-back raw calls
    /// piled such leftovers up until the worker's bounded command channel was full, and the
    /// next `lock_handle` then waited for room in it while already holding the lock the worker
    /// needed to drain it: a deadlock (a replica applying one small changeset per entry hung).
    /// Draining first leaves at most one leftover at any time, even if a call is cancelled.
    pub async fn with_raw<R>(&mut self, f: impl FnOnce(NonNull<ffi::sqlite3>) -> R) -> Result<R> {
        let conn = self.conn();
        // Drain leftovers first (see the doc comment).
        conn.ping().await.map_err(convert::error)?;
        let mut handle = conn.lock_handle().await.map_err(convert::error)?;
        Ok(f(handle.as_raw_handle()))
    }

    /// Like [`Self::with_raw`], for a thread that may block (`spawn_blocking`, or `Drop` cleanup):
    /// waits synchronously for the worker to hand over the handle, which it does between commands.
    pub fn with_raw_blocking<R>(
        &mut self,
        f: impl FnOnce(NonNull<ffi::sqlite3>) -> R,
    ) -> Result<R> {
        let conn = self.conn();
        // See `with_raw`.
        futures::executor::block_on(conn.ping()).map_err(convert::error)?;
        let mut handle = futures::executor::block_on(conn.lock_handle()).map_err(convert::error)?;
        Ok(f(handle.as_raw_handle()))
    }

    /// Runs one or more statements (no parameters) on the connection.
    pub async fn execute_batch(&mut self, sql: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
            .await
            .map(drop)
            .map_err(convert::error)
    }

    /// Begins a transaction, or a savepoint inside the current one. Returns the new depth.
    pub async fn begin(&mut self) -> Result<usize> {
        self.begin_with(None).await
    }

    /// Begins a transaction with `BEGIN IMMEDIATE` (takes the write lock at once, so a
    /// read-then-write transaction cannot fail with `SQLITE_BUSY_SNAPSHOT` in WAL mode), or a
    /// savepoint when a transaction is already open. Returns the new depth.
    pub async fn begin_immediate(&mut self) -> Result<usize> {
        let depth = self.transaction_depth();
        self.begin_with((depth == 0).then_some("BEGIN IMMEDIATE"))
            .await
    }

    async fn begin_with(&mut self, statement: Option<&'static str>) -> Result<usize> {
        let conn = self.conn();
        SqliteTransactionManager::begin(conn, statement.map(sqlx::SqlStr::from_static))
            .await
            .map_err(convert::error)?;
        Ok(SqliteTransactionManager::get_transaction_depth(conn))
    }

    /// Commits the transaction (or releases the innermost savepoint).
    pub async fn commit(&mut self) -> Result<()> {
        SqliteTransactionManager::commit(self.conn())
            .await
            .map_err(convert::error)
    }

    /// Rolls back the transaction (or the innermost savepoint).
    pub async fn rollback(&mut self) -> Result<()> {
        SqliteTransactionManager::rollback(self.conn())
            .await
            .map_err(convert::error)
    }

    /// Rolls back every transaction level at or above `level` (1: the whole transaction) and
    /// waits until sqlx's worker has done it, without an executor (for `Drop`). Levels below
    /// `level` stay open.
    ///
    /// Waiting matters: sqlx counts transaction depth when its worker *processes* a rollback,
    /// so a rollback that was only queued would make the next reader of the depth (an outer
    /// transaction's `Drop`, say) see a level that no longer exists.
    pub fn rollback_levels_blocking(&mut self, level: usize) -> Result<()> {
        while level > 0 && self.transaction_depth() >= level {
            let before = self.transaction_depth();
            SqliteTransactionManager::start_rollback(self.conn());
            // The worker hands over the handle only after every command queued before it.
            self.with_raw_blocking(|_| ())?;
            if self.transaction_depth() >= before {
                return Err(Error::Transaction(format!(
                    "rollback of transaction level {before} failed"
                )));
            }
        }
        Ok(())
    }

    /// How many transaction levels are open on the connection (0: autocommit).
    pub fn transaction_depth(&mut self) -> usize {
        SqliteTransactionManager::get_transaction_depth(self.conn())
    }

    pub(crate) fn connection(&mut self) -> &mut SqliteConnection {
        self.conn()
    }
}

use libsqlite3_sys as ffi;
