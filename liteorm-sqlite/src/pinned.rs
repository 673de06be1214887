//! One physical connection held for the duration of an operation (raw `sqlite3*` access to it is in `raw`).

use std::borrow::Cow;
use std::sync::Arc;

use liteorm_core::{Error, Result, Row, Value, ValueRef};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{LockedSqliteHandle, Sqlite, SqliteConnection};
use sqlx::{AssertSqlSafe, Executor as _};

use crate::convert::Param;
use crate::inline::RawLock;
use crate::parking::Parking;
use crate::slot::{Lock, OwnedGuard};
use crate::sqlx_compat::PoolId;
use crate::{SqliteInfo, SqliteSession, convert, routing, sqlx_compat};

/// The shared home of a pinned connection.
pub(crate) type Slot = Arc<Lock<Held>>;

/// A pinned connection (`None` once the owner released it) and, while statements run inline on
/// it, sqlx's handle lock on it.
///
/// The handle lock is taken on demand and kept across statements and across [`PinnedGuard`]s,
/// so that consecutive inline statements and raw calls cost no trip to sqlx's worker thread. It
/// is given up before anything else uses the connection through sqlx, and before the
/// connection leaves the slot.
pub(crate) struct Held {
    /// Declared before `conn`: dropped first.
    raw: Option<RawLock>,
    conn: Option<PoolConnection<Sqlite>>,
    /// Transaction levels liteorm opened on the connection (0: autocommit). liteorm runs its
    /// own transaction control (most of it inline), so sqlx's own counter stays at 0.
    depth: usize,
    /// Whether an "unlock" command from an earlier `lock_handle` may still wait, unread, in
    /// sqlx's worker queue.
    ///
    /// `lock_handle` sends the worker that command and can obtain the lock before the worker
    /// has read it (when the worker has not yet queued for the lock again after the previous
    /// one); it then stays queued. Left alone, such leftovers pile up until the worker's
    /// bounded command channel is full, and the next `lock_handle` waits for room in it while
    /// holding the lock the worker needs to drain it: a deadlock. So the lock is re-taken only
    /// after a ping when this is set, which keeps at most one leftover at any time, also when
    /// a future is cancelled midway (the flag is set before `lock_handle` runs, and cleared
    /// only once the worker has answered a later command: it reads commands in order).
    /// A connection comes out of the pool with none (sqlx_compat, assumption 3).
    unlock_queued: bool,
}

impl Held {
    pub(crate) fn new(conn: PoolConnection<Sqlite>) -> Self {
        Held {
            raw: None,
            conn: Some(conn),
            depth: 0,
            unlock_queued: sqlx_compat::FRESH_FROM_POOL_UNLOCK_QUEUED,
        }
    }

    /// The connection for use through sqlx: gives up the handle lock first.
    fn conn(&mut self) -> Option<&mut SqliteConnection> {
        self.raw = None;
        self.conn.as_deref_mut()
    }

    /// Takes the connection out (it goes back to the pool when dropped), handle lock given up.
    /// A transaction still open on it (whose owner was leaked or cancelled) is rolled back
    /// first, so the pool never hands out a connection inside a transaction.
    fn take(&mut self) -> Option<PoolConnection<Sqlite>> {
        if self.depth > 0 && self.conn.is_some() {
            if let Ok(raw) = self.raw_blocking() {
                // Fails only if SQLite already ended the transaction, which is what we want.
                let _ = raw.exec("ROLLBACK");
            }
            self.depth = 0;
        }
        self.raw = None;
        self.conn.take()
    }

    /// Whether the connection can be parked and reused as it is: out of any transaction, with
    /// the handle lock held.
    fn parkable(&self) -> bool {
        self.depth == 0 && self.conn.is_some() && self.raw.as_ref().is_some_and(RawLock::autocommit)
    }

    /// Gives up the connection: parks it in `home` (in a slot of its own) if it is
    /// [`Self::parkable`], or else returns it to the pool as [`Self::take`] does.
    fn leave(&mut self, home: Option<&Arc<Parking>>) {
        if let Some(home) = home
            && self.parkable()
        {
            // Moving the handle lock along with the connection is sound: the lock lives in the
            // connection's shared worker state on the heap, not in the `PoolConnection` value.
            let parked = Held {
                raw: self.raw.take(),
                conn: self.conn.take(),
                depth: 0,
                unlock_queued: self.unlock_queued,
            };
            home.park(Arc::new(Lock::new(parked)));
            return;
        }
        drop(self.take());
    }

    /// Rolls back the innermost level on the locked connection and counts it closed. A level
    /// that SQLite already ended (a raw `COMMIT`, or an error that rolled the transaction back)
    /// counts as closed too, but still reports the error.
    fn rollback_top(&mut self, raw_blocking: bool) -> Result<()> {
        let depth = self.depth;
        if depth == 0 {
            return Ok(());
        }
        let raw = if raw_blocking {
            self.raw_blocking()?
        } else {
            self.raw.as_mut().map_or_else(released, Ok)?
        };
        let result = raw.exec(&rollback_sql(depth));
        if result.is_ok() {
            self.depth -= 1;
        } else if raw.autocommit() {
            self.depth = 0;
        }
        result
    }

    /// Records that sqlx's worker answered a command sent after the last `lock_handle`, so
    /// that no "unlock" command of liteorm's is left in its queue (see `unlock_queued`).
    fn worker_answered(&mut self) {
        self.unlock_queued = false;
    }

    /// The handle lock, taken now (a trip to the worker, two if an earlier "unlock" command may
    /// still be queued) unless already held.
    async fn raw(&mut self) -> Result<&mut RawLock> {
        if self.raw.is_none() {
            // Boxed: the trip is rare once the lock is kept, and its future is large; the future
            // of every statement and raw call would otherwise make room for it and move it.
            Box::pin(self.take_raw()).await?;
        }
        self.raw.as_mut().map_or_else(released, Ok)
    }

    /// Takes the handle lock (see [`Self::raw`]).
    async fn take_raw(&mut self) -> Result<()> {
        let conn = self.conn.as_deref_mut().map_or_else(released, Ok)?;
        let handle = sqlx_compat::lock_handle(conn, &mut self.unlock_queued).await?;
        // SAFETY: see `Held::keep`.
        self.raw = Some(unsafe { Self::keep(handle) });
        Ok(())
    }

    /// Like [`Self::raw`], waiting synchronously for the worker (on a thread that may block).
    fn raw_blocking(&mut self) -> Result<&mut RawLock> {
        if self.raw.is_none() {
            let conn = self.conn.as_deref_mut().map_or_else(released, Ok)?;
            let handle = sqlx_compat::lock_handle_blocking(conn, &mut self.unlock_queued)?;
            // SAFETY: see `Held::keep`.
            self.raw = Some(unsafe { Self::keep(handle) });
        }
        self.raw.as_mut().map_or_else(released, Ok)
    }

    /// Keeps a handle lock on `self.conn` in `self.raw`, its lifetime erased.
    ///
    /// # Safety
    /// `handle` locks `self.conn`'s connection. This upholds what
    /// [`sqlx_compat::erase_lifetime`] asks: nothing touches the connection while `raw` is set,
    /// and `raw` is cleared before the connection is used through sqlx (`conn`), taken out
    /// (`take`) or dropped (field order, and `Drop` takes it out first). `raw` and `conn` only
    /// ever move together (`leave`), which the lock survives (sqlx_compat, assumption 1).
    unsafe fn keep(handle: LockedSqliteHandle<'_>) -> RawLock {
        // SAFETY: the caller's promise (see above).
        unsafe { RawLock::new(sqlx_compat::erase_lifetime(handle)) }
    }
}

/// Runs `f` on the handle lock of the connection in `slot` right away, without an await: the
/// path of a statement on a pinned connection that nothing else is using and whose handle lock is
/// already held (every statement of a transaction or capture after its first). `None`, without
/// calling `f`, if the slot is taken, the connection was released, or the handle lock is not held
/// (taking it is a trip to sqlx's worker): the caller then takes the general, awaiting path.
pub(crate) fn with_held_raw<R>(slot: &Slot, f: impl FnOnce(&mut RawLock) -> R) -> Option<R> {
    let mut held = slot.try_lock()?;
    // `raw` is only ever set while `conn` is (see `Held::keep`).
    held.raw.as_mut().map(f)
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.take());
    }
}

const RELEASED: Error = Error::Closed("the pinned connection was released");

/// [`RELEASED`], built only when needed: `ok_or(RELEASED)` builds and drops an `Error` on every
/// call, a cost on the path of every statement.
fn released<T>() -> Result<T> {
    Err(RELEASED)
}

/// The savepoint of transaction level `depth + 1` (level 1 is `BEGIN`).
fn savepoint(depth: usize) -> String {
    format!("liteorm_savepoint_{depth}")
}

/// Savepoint levels whose statements are spelled out below, so that the transaction control of
/// a capture or a transaction inside a transaction formats no string.
const SPELLED: usize = 3;

/// The statement that opens transaction level `depth + 1` with a savepoint (`depth` >= 1).
fn savepoint_sql(depth: usize) -> Cow<'static, str> {
    const SQL: [&str; SPELLED] = [
        "SAVEPOINT liteorm_savepoint_1",
        "SAVEPOINT liteorm_savepoint_2",
        "SAVEPOINT liteorm_savepoint_3",
    ];
    match depth.checked_sub(1).and_then(|i| SQL.get(i)) {
        Some(sql) => Cow::Borrowed(sql),
        None => Cow::Owned(format!("SAVEPOINT {}", savepoint(depth))),
    }
}

/// Ends transaction level `depth` (at least 1) by committing it: `COMMIT`, or the release of its
/// savepoint.
fn commit_sql(depth: usize) -> Cow<'static, str> {
    const SQL: [&str; SPELLED] = [
        "COMMIT",
        "RELEASE SAVEPOINT liteorm_savepoint_1",
        "RELEASE SAVEPOINT liteorm_savepoint_2",
    ];
    match SQL.get(depth.saturating_sub(1)) {
        Some(sql) => Cow::Borrowed(sql),
        None => Cow::Owned(format!("RELEASE SAVEPOINT {}", savepoint(depth - 1))),
    }
}

/// Ends transaction level `depth` (at least 1) by rolling it back.
fn rollback_sql(depth: usize) -> Cow<'static, str> {
    const SQL: [&str; SPELLED] = [
        "ROLLBACK",
        "ROLLBACK TO SAVEPOINT liteorm_savepoint_1; RELEASE SAVEPOINT liteorm_savepoint_1",
        "ROLLBACK TO SAVEPOINT liteorm_savepoint_2; RELEASE SAVEPOINT liteorm_savepoint_2",
    ];
    match SQL.get(depth.saturating_sub(1)) {
        Some(sql) => Cow::Borrowed(sql),
        None => {
            let name = savepoint(depth - 1);
            Cow::Owned(format!(
                "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
            ))
        }
    }
}

/// One physical connection, held until this value is released or dropped.
///
/// Obtained from [`SqliteSession::pin`]. Every [`SqliteSession`] made by [`Self::session`] runs its
/// statements on this connection, so work done through it and raw work done through
/// [`Self::lock`] see the same connection state (temp tables, transactions, session objects).
pub struct PinnedConnection {
    slot: Slot,
    info: Arc<SqliteInfo>,
    /// The pool the connection came from, if known (for [`Self::route`]).
    pool: Option<PoolId>,
    owner: bool,
    /// Where an owned connection goes when released: parked for the next operation of the
    /// session it came from, or (`None`) straight back to the pool.
    home: Option<Arc<Parking>>,
}

impl PinnedConnection {
    /// The pin of a connection taken from `home` (parked in `slot`, or new from the pool).
    pub(crate) fn acquired(slot: Slot, info: Arc<SqliteInfo>, home: Arc<Parking>) -> Self {
        PinnedConnection {
            slot,
            info,
            pool: Some(home.pool_id()),
            owner: true,
            home: Some(home),
        }
    }

    pub(crate) fn shared(slot: Slot, info: Arc<SqliteInfo>, pool: Option<PoolId>) -> Self {
        PinnedConnection {
            slot,
            info,
            pool,
            owner: false,
            home: None,
        }
    }

    /// Another handle on the same connection that does not own it (releasing or dropping it
    /// leaves the connection pinned).
    pub fn share(&self) -> Self {
        Self::shared(Arc::clone(&self.slot), Arc::clone(&self.info), self.pool)
    }

    /// A session whose statements all run on this connection.
    pub fn session(&self) -> SqliteSession {
        SqliteSession::pinned(Arc::clone(&self.slot), Arc::clone(&self.info), self.pool)
    }

    /// Runs `fut` with every pool-backed [`SqliteSession`] on this connection's pool routed to
    /// this connection, on the task that polls `fut`: their statements, transactions (then
    /// savepoints) and pins run here, inside whatever transaction is open on it. Capture uses
    /// it so that writes the closure makes through the application's own pool-backed session
    /// (or anything built on the same sqlx pool that goes through liteorm) are recorded. Tasks
    /// spawned from `fut` are not routed. Without a known pool (a connection pinned some other
    /// way) this just runs `fut`.
    pub async fn route<F: Future>(&self, fut: F) -> F::Output {
        match self.pool {
            Some(pool) => routing::scope(pool, Arc::clone(&self.slot), fut).await,
            None => fut.await,
        }
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

    /// Whether `guard` locks this connection (taken through this pin or any share of it).
    pub fn is_locked_by(&self, guard: &PinnedGuard) -> bool {
        guard.guard.is_of(&self.slot)
    }

    /// Exclusive access if nobody holds it right now (for cleanup in `Drop`).
    pub fn try_lock(&self) -> Option<PinnedGuard> {
        let guard = self.slot.try_lock_owned()?;
        PinnedGuard::new(guard).ok()
    }

    /// Gives an owned connection back to the session it came from (which keeps it a few
    /// milliseconds for its next operation, see [`SqliteSession::linger`]) or to the pool.
    /// Sessions made by [`Self::session`] that outlive this call get [`Error::Closed`] instead of
    /// running on a connection that someone else may now use. For a shared pin this only drops
    /// the handle.
    pub async fn release(mut self) {
        if self.owner {
            let held = self.slot.lock().await;
            if self.give_back(held) {
                self.owner = false;
            }
        }
    }

    /// Gives the owned connection, locked as `held`, back: when nothing but this pin refers to
    /// its slot (no session or share of the pin outlived it), the slot is parked whole, for the
    /// next pin to reuse as it is; otherwise the connection leaves the slot (see
    /// [`Held::leave`]), so that what still refers to it finds it released. Returns whether the
    /// slot was parked (this pin must then leave it alone).
    fn give_back<H: std::ops::DerefMut<Target = Held>>(&self, mut held: H) -> bool {
        if let Some(home) = &self.home
            && Arc::strong_count(&self.slot) == 1
            && Arc::weak_count(&self.slot) == 0
            && held.parkable()
        {
            // Unlocked first: whoever takes the slot from the parking lot finds it free.
            drop(held);
            home.park(Arc::clone(&self.slot));
            return true;
        }
        held.leave(self.home.as_ref());
        false
    }
}

impl Drop for PinnedConnection {
    fn drop(&mut self) {
        if self.owner
            && let Some(held) = self.slot.try_lock()
        {
            self.give_back(held);
        }
    }
}

/// Exclusive, owned (`'static`, `Send`) access to a pinned connection: no other statement runs on
/// it while the guard lives, and dropping the future that holds it cannot free the connection
/// under a running FFI call when the guard was moved to a blocking thread ([`crate::blocking`]).
pub struct PinnedGuard {
    guard: OwnedGuard<Held>,
}

impl PinnedGuard {
    pub(crate) fn new_from(guard: OwnedGuard<Held>) -> Result<Self> {
        Self::new(guard)
    }

    fn new(guard: OwnedGuard<Held>) -> Result<Self> {
        if guard.conn.is_none() {
            return Err(RELEASED);
        }
        Ok(PinnedGuard { guard })
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        // `new` checked that the slot holds a connection, and only the owner's `release` (which
        // needs this same lock) empties it.
        self.guard
            .conn()
            .expect("PinnedGuard holds a connection by construction")
    }

    /// sqlx's handle lock on the connection, for the raw interface (see [`crate::raw`]).
    pub(crate) async fn raw_lock(&mut self) -> Result<&mut RawLock> {
        self.guard.raw().await
    }

    /// [`Self::raw_lock`] on a thread that may block.
    pub(crate) fn raw_lock_blocking(&mut self) -> Result<&mut RawLock> {
        self.guard.raw_blocking()
    }

    /// Runs one statement inline on the connection (see [`crate::inline`]); `None` if it has to
    /// go through sqlx instead (nothing was run).
    pub(crate) async fn execute_inline<P: Param>(
        &mut self,
        sql: &str,
        params: &[P],
    ) -> Result<Option<u64>> {
        self.guard.raw().await?.execute(sql, params).transpose()
    }

    /// Runs one query inline on the connection; `None` if it has to go through sqlx.
    pub(crate) async fn query_inline<P: Param>(
        &mut self,
        sql: &str,
        params: &[P],
    ) -> Result<Option<Vec<Row>>> {
        self.guard.raw().await?.query(sql, params).transpose()
    }

    /// Runs one statement with borrowed positional (`?`) parameters on the locked connection and
    /// returns how many rows it changed: [`SqliteSession::execute_refs`] for code that already
    /// holds the guard (a statement through a session on this connection would wait for it).
    pub async fn execute_refs(&mut self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64> {
        self.execute_params(sql, params, true).await
    }

    /// Runs one query with borrowed positional parameters on the locked connection and returns
    /// its rows: [`SqliteSession::query_refs`] for code that holds the guard.
    pub async fn query_refs(&mut self, sql: &str, params: &[ValueRef<'_>]) -> Result<Vec<Row>> {
        self.query_params(sql, params, true).await
    }

    /// Runs one statement inline unless `inline` is false (it is known to need sqlx) or it turns
    /// out to need sqlx, else through sqlx.
    pub(crate) async fn execute_params<P: Param>(
        &mut self,
        sql: &str,
        params: &[P],
        inline: bool,
    ) -> Result<u64> {
        if inline && let Some(changes) = self.execute_inline(sql, params).await? {
            return Ok(changes);
        }
        let query = sqlx::query_with(AssertSqlSafe(sql.to_owned()), convert::arguments(params)?);
        // sqlx's futures are boxed here and below: they are large, and only the rare statement
        // that cannot run inline awaits one, but every caller's future would make room for it.
        let done = Box::pin(self.conn().execute(query)).await;
        self.sqlx_result(done).map(|done| done.rows_affected())
    }

    /// Runs one query as [`Self::execute_params`] runs a statement.
    pub(crate) async fn query_params<P: Param>(
        &mut self,
        sql: &str,
        params: &[P],
        inline: bool,
    ) -> Result<Vec<Row>> {
        if inline && let Some(rows) = self.query_inline(sql, params).await? {
            return Ok(rows);
        }
        let query = sqlx::query_with(AssertSqlSafe(sql.to_owned()), convert::arguments(params)?);
        let rows = Box::pin(self.conn().fetch_all(query)).await;
        convert::rows(self.sqlx_result(rows)?)
    }

    /// Runs one or more statements (no parameters) on the connection. While the handle lock is
    /// held, a single statement runs inline as [`SqliteSession::execute`] runs it; anything else
    /// goes through sqlx's worker (which takes the handle lock back: the next inline statement
    /// takes it again, a round trip to the worker).
    pub async fn execute_batch(&mut self, sql: &str) -> Result<()> {
        if self.guard.raw.is_some() && self.execute_inline::<Value>(sql, &[]).await?.is_some() {
            return Ok(());
        }
        self.through_sqlx(sql).await
    }

    /// Runs `sql` (no parameters) through sqlx's worker thread.
    async fn through_sqlx(&mut self, sql: &str) -> Result<()> {
        let conn = self.conn();
        let result = Box::pin(conn.execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))).await;
        self.sqlx_result(result).map(drop)
    }

    /// Converts the result of a command run through sqlx on this connection (see
    /// [`Self::connection`]). Success means the worker answered the command.
    pub(crate) fn sqlx_result<R>(&mut self, result: sqlx::Result<R>) -> Result<R> {
        if result.is_ok() {
            self.guard.worker_answered();
        }
        result.map_err(convert::error)
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
        let depth = self.guard.depth;
        let custom = depth == 0 && statement.is_some();
        let sql = match statement {
            Some(statement) if depth == 0 => Cow::Borrowed(statement),
            _ if depth == 0 => Cow::Borrowed("BEGIN"),
            _ => savepoint_sql(depth),
        };
        // `BEGIN IMMEDIATE` takes the write lock, so on a file it may have to wait (on sqlx's
        // worker, see `control`).
        let raw = self.guard.raw().await?;
        if custom && raw.is_file() {
            // Counted before it runs: if the future is dropped while sqlx's worker runs it, the
            // level is rolled back when the connection leaves the pin (a `BEGIN` that never ran
            // rolls back as a no-op). Only level 1 goes this way, so no savepoint is miscounted.
            self.guard.depth = depth + 1;
            if let Err(err) = self.control(&sql, true).await {
                self.guard.depth = depth;
                return Err(err);
            }
        } else {
            raw.exec(&sql)?;
            self.guard.depth = depth + 1;
        }
        if custom && self.guard.raw().await?.autocommit() {
            self.guard.depth = depth;
            return Err(convert::error(sqlx::Error::BeginFailed));
        }
        Ok(depth + 1)
    }

    /// Runs a transaction-control statement inline. One that may wait for another connection's
    /// lock (`may_wait` on a file database) is tried inline without waiting, and runs on sqlx's
    /// worker thread (which may wait up to the busy timeout) only if that lock is taken.
    async fn control(&mut self, sql: &str, may_wait: bool) -> Result<()> {
        let raw = self.guard.raw().await?;
        if !(may_wait && raw.is_file()) {
            return raw.exec(sql);
        }
        if let Some(result) = raw.exec_without_waiting(sql) {
            return result;
        }
        self.through_sqlx(sql).await
    }

    /// Commits the transaction (or releases the innermost savepoint).
    pub async fn commit(&mut self) -> Result<()> {
        let depth = self.guard.depth;
        if depth == 0 {
            return Ok(());
        }
        let sql = commit_sql(depth);
        // Outside WAL mode, a COMMIT may wait for readers to finish.
        self.control(&sql, depth == 1).await?;
        self.guard.depth = depth - 1;
        Ok(())
    }

    /// Rolls back the transaction (or the innermost savepoint).
    pub async fn rollback(&mut self) -> Result<()> {
        self.guard.raw().await?;
        self.guard.rollback_top(false)
    }

    /// Rolls back every transaction level at or above `level` (1: the whole transaction),
    /// without an executor (for `Drop`). Levels below `level` stay open.
    pub fn rollback_levels_blocking(&mut self, level: usize) -> Result<()> {
        while level > 0 && self.guard.depth >= level {
            let before = self.guard.depth;
            let rolled_back = self.guard.rollback_top(true);
            if self.guard.depth >= before {
                return Err(rolled_back.err().unwrap_or_else(|| {
                    Error::Transaction(format!("rollback of transaction level {before} failed"))
                }));
            }
        }
        Ok(())
    }

    /// How many transaction levels are open on the connection (0: autocommit).
    pub fn transaction_depth(&mut self) -> usize {
        self.guard.depth
    }

    /// The connection, for a command through sqlx; pass its result to [`Self::sqlx_result`].
    pub(crate) fn connection(&mut self) -> &mut SqliteConnection {
        self.conn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelled_transaction_control_is_what_the_savepoint_names_give() {
        for depth in 1..=SPELLED + 2 {
            assert_eq!(
                savepoint_sql(depth),
                format!("SAVEPOINT {}", savepoint(depth)),
                "open level {}",
                depth + 1
            );
        }
        assert_eq!(commit_sql(1), "COMMIT");
        assert_eq!(rollback_sql(1), "ROLLBACK");
        for depth in 2..=SPELLED + 2 {
            let name = savepoint(depth - 1);
            assert_eq!(commit_sql(depth), format!("RELEASE SAVEPOINT {name}"));
            assert_eq!(
                rollback_sql(depth),
                format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
            );
        }
    }
}
