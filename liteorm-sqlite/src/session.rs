//! `SqliteSession`: the `Session` trait on a sqlx SQLite pool or on one pinned connection.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use liteorm_core::{Dialect, Error, Result, Row, Session, Transaction, Value, ValueRef};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::convert::Param;
use crate::inline::RawLock;
use crate::parking::{DEFAULT_LINGER, Parking};
use crate::pinned::{self, Slot};
use crate::sqlx_compat::PoolId;
use crate::{DIALECT, PinnedConnection, PinnedGuard, SqliteInfo, blocking, convert, routing};

/// A liteorm [`Session`] on SQLite.
///
/// Cheap to clone. A session opened with [`SqliteSession::open`] or [`SqliteSession::from_pool`]
/// runs each statement on a pool connection (the one it keeps from its previous operation for
/// a few milliseconds, see [`SqliteSession::linger`], or any free one); [`Session::begin`] and
/// [`SqliteSession::pin`] hold one connection for as long as the transaction or pin lives.
#[derive(Clone)]
pub struct SqliteSession {
    target: Target,
    info: Arc<SqliteInfo>,
}

#[derive(Clone)]
enum Target {
    Pool(Arc<Parking>),
    /// A pinned connection, and the pool it came from if known.
    Pinned(Slot, Option<PoolId>),
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
            target: Target::Pool(Arc::new(Parking::new(pool, DEFAULT_LINGER))),
            info,
        })
    }

    /// The same pool-backed session, keeping a connection it is done with for `linger` (10 ms
    /// by default) before giving it back to the pool; zero gives it back at once.
    ///
    /// Handing a connection back to sqlx's pool and taking it out again costs two round trips
    /// to the connection's worker thread, most of the time of a one-row transaction. A pool-backed
    /// session instead keeps (*parks*) a connection that is out of any transaction with sqlx's
    /// handle lock and its prepared statements, so that its next statement, transaction or
    /// capture starts at once, as long as it comes within `linger`. A parked connection still
    /// counts as taken from sqlx's pool; it goes back when it has been unused for `linger`, at
    /// once when an operation of this session has to wait for the pool, and on
    /// [`Self::close`]. Code using the [`Self::pool`] directly may wait up to `linger` for it.
    /// Clones share the parked connections; this returns a session with its own (none yet).
    /// A pinned session is returned as it is.
    pub fn linger(&self, linger: Duration) -> Self {
        match &self.target {
            Target::Pool(parking) => SqliteSession {
                target: Target::Pool(Arc::new(Parking::new(parking.pool().clone(), linger))),
                info: Arc::clone(&self.info),
            },
            Target::Pinned(..) => self.clone(),
        }
    }

    /// Returns the parked connections (see [`Self::linger`]) to the pool and closes it: waits
    /// until every connection taken from it is back, then closes them. A pinned session only
    /// drops its handle on the connection (the transaction or pin that owns it decides).
    pub async fn close(&self) {
        if let Target::Pool(parking) = &self.target {
            let pool = parking.pool().clone();
            // Closed first, so that nothing is parked again meanwhile.
            let closed = pool.close();
            parking.drain();
            closed.await;
        }
    }

    pub(crate) fn pinned(slot: Slot, info: Arc<SqliteInfo>, pool: Option<PoolId>) -> Self {
        SqliteSession {
            target: Target::Pinned(slot, pool),
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
            Target::Pool(parking) => Some(parking.pool()),
            Target::Pinned(..) => None,
        }
    }

    /// Whether every statement of this session runs on one physical connection.
    pub fn is_pinned(&self) -> bool {
        matches!(self.target, Target::Pinned(..))
    }

    /// Holds one physical connection: a pool-backed session takes the one it keeps (see
    /// [`Self::linger`]) or acquires one from the pool; a pinned
    /// session (a transaction, or a session handed out by a capability crate) shares its own, so
    /// that work on the pin joins the transaction already open on it. So does a pool-backed
    /// session inside [`PinnedConnection::route`] (a capture's closure) on the same pool.
    pub async fn pin(&self) -> Result<PinnedConnection> {
        match &self.target {
            Target::Pool(parking) => {
                if let Some(slot) = routing::routed(parking.pool_id()) {
                    return Ok(PinnedConnection::shared(
                        slot,
                        Arc::clone(&self.info),
                        Some(parking.pool_id()),
                    ));
                }
                let slot = parking.acquire().await?;
                Ok(PinnedConnection::acquired(
                    slot,
                    Arc::clone(&self.info),
                    Arc::clone(parking),
                ))
            }
            Target::Pinned(slot, pool) => Ok(PinnedConnection::shared(
                Arc::clone(slot),
                Arc::clone(&self.info),
                *pool,
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

    /// The connection for one statement or sqlx command (`run`, and the `executor`): the pinned
    /// one, or for a pool-backed session the one [`Self::pin`] gives, with the pin that gives it
    /// back once released or dropped (after the guard).
    pub(crate) async fn command_connection(
        &self,
    ) -> Result<(PinnedGuard, Option<PinnedConnection>)> {
        match &self.target {
            Target::Pinned(slot, _) => {
                let held = match slot.try_lock_owned() {
                    Some(held) => held,
                    None => Arc::clone(slot).lock_owned().await,
                };
                Ok((PinnedGuard::new_from(held)?, None))
            }
            Target::Pool(_) => {
                let pinned = self.pin().await?;
                let guard = pinned.lock().await?;
                Ok((guard, Some(pinned)))
            }
        }
    }

    /// Runs one statement's `body` on a connection: the pinned one, or for a pool-backed session
    /// a parked or newly taken connection, which is parked again after the statement.
    async fn run<R, F: Future<Output = Result<R>>>(
        &self,
        body: impl FnOnce(PinnedGuard) -> F,
    ) -> Result<R> {
        let (guard, pinned) = self.command_connection().await?;
        let result = body(guard).await;
        if let Some(pinned) = pinned {
            pinned.release().await;
        }
        result
    }

    /// Runs a statement inline at once when the session is pinned to a connection that nothing
    /// else is using and whose handle lock is held ([`pinned::with_held_raw`]): no lock to wait
    /// for, no future to poll. `Tried::Done` with its result; `Tried::Sqlx` if the statement has
    /// to go through sqlx (nothing was run); `Tried::No` if the fast path did not apply.
    fn try_inline<R>(&self, run: impl FnOnce(&mut RawLock) -> Option<Result<R>>) -> Tried<R> {
        let Target::Pinned(slot, _) = &self.target else {
            return Tried::No;
        };
        match pinned::with_held_raw(slot, run) {
            Some(Some(done)) => Tried::Done(done),
            Some(None) => Tried::Sqlx,
            None => Tried::No,
        }
    }

    /// Runs one statement with positional (`?`) parameters and returns how many rows it
    /// changed: [`Session::execute`], with its future unboxed (a call through `dyn Session`
    /// boxes it). Like an `async fn`, nothing runs before the first poll; on a pinned
    /// connection whose handle lock is held (every statement of a transaction after its first),
    /// the first poll runs the statement and is ready.
    pub fn execute<'f>(
        &'f self,
        sql: &'f str,
        params: &'f [Value],
    ) -> impl Future<Output = Result<u64>> + Send + 'f {
        self.execute_with(sql, params)
    }

    /// Runs one query with positional (`?`) parameters and returns its rows: [`Session::query`]
    /// with its future unboxed, as [`Self::execute`].
    pub fn query<'f>(
        &'f self,
        sql: &'f str,
        params: &'f [Value],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send + 'f {
        self.query_with(sql, params)
    }

    /// [`Self::execute`] with borrowed parameters. Where the statement runs inline (see
    /// [`Self::execute`]), text and blobs are bound where they are, without a copy: a large
    /// blob written this way is never duplicated in memory. Through sqlx they are copied, as
    /// sqlx owns its arguments.
    pub fn execute_refs<'f>(
        &'f self,
        sql: &'f str,
        params: &'f [ValueRef<'f>],
    ) -> impl Future<Output = Result<u64>> + Send + 'f {
        self.execute_with(sql, params)
    }

    /// [`Self::query`] with borrowed parameters, bound as [`Self::execute_refs`] binds them.
    pub fn query_refs<'f>(
        &'f self,
        sql: &'f str,
        params: &'f [ValueRef<'f>],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send + 'f {
        self.query_with(sql, params)
    }

    /// [`Self::execute`] for owned or borrowed parameters.
    fn execute_with<'f, P: Param>(
        &'f self,
        sql: &'f str,
        params: &'f [P],
    ) -> StatementFuture<'f, P, u64> {
        StatementFuture {
            session: self,
            sql,
            params,
            inline: RawLock::execute,
            general: |s, sql, params, inline| Box::pin(s.execute_general(sql, params, inline)),
            state: State::Start,
        }
    }

    /// [`Self::query`] for owned or borrowed parameters.
    fn query_with<'f, P: Param>(
        &'f self,
        sql: &'f str,
        params: &'f [P],
    ) -> StatementFuture<'f, P, Vec<Row>> {
        StatementFuture {
            session: self,
            sql,
            params,
            inline: RawLock::query,
            general: |s, sql, params, inline| Box::pin(s.query_general(sql, params, inline)),
            state: State::Start,
        }
    }

    /// Runs one statement on a connection taken as [`Self::run`] does: inline unless `inline`
    /// is false (the statement is known to need sqlx), else through sqlx.
    async fn execute_general<P: Param>(
        &self,
        sql: &str,
        params: &[P],
        inline: bool,
    ) -> Result<u64> {
        self.run(|mut guard| async move { guard.execute_params(sql, params, inline).await })
            .await
    }

    /// [`Session::query`] as the trait's boxed future (see [`StatementFuture`]).
    /// Runs one query as [`Self::execute_general`] runs a statement.
    async fn query_general<P: Param>(
        &self,
        sql: &str,
        params: &[P],
        inline: bool,
    ) -> Result<Vec<Row>> {
        self.run(|mut guard| async move { guard.query_params(sql, params, inline).await })
            .await
    }
}

/// The future of one statement of [`Session::execute`] or [`Session::query`]. Its first poll
/// runs the statement inline if it can ([`SqliteSession::try_inline`]) and is ready with the
/// result, with no state machine to step and no connection future to build; otherwise it
/// starts the general path (a second, boxed future) and polls that. Nothing runs before the
/// first poll, as with an `async fn`.
struct StatementFuture<'f, P, R> {
    session: &'f SqliteSession,
    sql: &'f str,
    params: &'f [P],
    /// The inline run ([`RawLock::execute`] or [`RawLock::query`]).
    inline: fn(&mut RawLock, &str, &[P]) -> Option<Result<R>>,
    /// The general path, told whether to try inline first.
    general: General<'f, P, R>,
    state: State<'f, R>,
}

/// The general path of a [`StatementFuture`]: session, SQL, parameters, and whether to try
/// inline first.
type General<'f, P, R> = fn(&'f SqliteSession, &'f str, &'f [P], bool) -> BoxFuture<'f, Result<R>>;

/// Where a [`StatementFuture`] is.
enum State<'f, R> {
    /// Not polled yet.
    Start,
    /// On the general path.
    General(BoxFuture<'f, Result<R>>),
    /// Ready was returned.
    Finished,
}

impl<P, R> Future for StatementFuture<'_, P, R> {
    type Output = Result<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = &mut *self;
        if let State::Start = this.state {
            let (sql, params, inline) = (this.sql, this.params, this.inline);
            let try_inline = match this.session.try_inline(|raw| inline(raw, sql, params)) {
                Tried::Done(done) => {
                    this.state = State::Finished;
                    return Poll::Ready(done);
                }
                Tried::Sqlx => false,
                Tried::No => true,
            };
            this.state = State::General((this.general)(this.session, sql, params, try_inline));
        }
        let State::General(general) = &mut this.state else {
            return Poll::Ready(Err(Error::Closed(
                "a statement future was polled after it completed",
            )));
        };
        let done = std::task::ready!(general.as_mut().poll(cx));
        this.state = State::Finished;
        Poll::Ready(done)
    }
}

/// What [`SqliteSession::try_inline`] did.
enum Tried<R> {
    /// Ran the statement inline: its result.
    Done(Result<R>),
    /// Found that the statement has to go through sqlx; nothing was run.
    Sqlx,
    /// Did not apply (not pinned, connection in use, or no handle lock held yet).
    No,
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

    // `execute` and `query` are written out (not `async fn`): their futures are built by
    // the inherent `execute` and `query` (boxed here), which run a statement at once when they
    // can.
    fn execute<'s, 'q, 'p, 'f>(
        &'s self,
        sql: &'q str,
        params: &'p [Value],
    ) -> BoxFuture<'f, Result<u64>>
    where
        's: 'f,
        'q: 'f,
        'p: 'f,
        Self: 'f,
    {
        Box::pin(SqliteSession::execute(self, sql, params))
    }

    async fn execute_batch(&self, sql: &str) -> Result<()> {
        self.run(|mut guard| async move { guard.execute_batch(sql).await })
            .await
    }

    fn query<'s, 'q, 'p, 'f>(
        &'s self,
        sql: &'q str,
        params: &'p [Value],
    ) -> BoxFuture<'f, Result<Vec<Row>>>
    where
        's: 'f,
        'q: 'f,
        'p: 'f,
        Self: 'f,
    {
        Box::pin(SqliteSession::query(self, sql, params))
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
/// Dropping it without [`SqliteTransaction::commit`] rolls it back.
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

    /// [`SqliteSession::execute`] in this transaction (the future unboxed).
    pub fn execute<'f>(
        &'f self,
        sql: &'f str,
        params: &'f [Value],
    ) -> impl Future<Output = Result<u64>> + Send + 'f {
        self.session.execute(sql, params)
    }

    /// [`SqliteSession::query`] in this transaction (the future unboxed).
    pub fn query<'f>(
        &'f self,
        sql: &'f str,
        params: &'f [Value],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send + 'f {
        self.session.query(sql, params)
    }

    /// [`SqliteSession::execute_refs`] in this transaction: borrowed parameters.
    pub fn execute_refs<'f>(
        &'f self,
        sql: &'f str,
        params: &'f [ValueRef<'f>],
    ) -> impl Future<Output = Result<u64>> + Send + 'f {
        self.session.execute_refs(sql, params)
    }

    /// [`SqliteSession::query_refs`] in this transaction: borrowed parameters.
    pub fn query_refs<'f>(
        &'f self,
        sql: &'f str,
        params: &'f [ValueRef<'f>],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send + 'f {
        self.session.query_refs(sql, params)
    }

    /// Makes the transaction's changes durable: [`Transaction::commit`] by value, for a
    /// transaction that is not boxed.
    pub async fn commit(mut self) -> Result<()> {
        self.finish(true).await
    }

    /// Discards the transaction's changes: [`Transaction::rollback`] by value.
    pub async fn rollback(mut self) -> Result<()> {
        self.finish(false).await
    }

    async fn finish(&mut self, commit: bool) -> Result<()> {
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
    fn execute<'s, 'q, 'p, 'f>(
        &'s self,
        sql: &'q str,
        params: &'p [Value],
    ) -> BoxFuture<'f, Result<u64>>
    where
        's: 'f,
        'q: 'f,
        'p: 'f,
        Self: 'f,
    {
        Box::pin(self.session.execute(sql, params))
    }
    async fn execute_batch(&self, sql: &str) -> Result<()> {
        self.session.execute_batch(sql).await
    }
    fn query<'s, 'q, 'p, 'f>(
        &'s self,
        sql: &'q str,
        params: &'p [Value],
    ) -> BoxFuture<'f, Result<Vec<Row>>>
    where
        's: 'f,
        'q: 'f,
        'p: 'f,
        Self: 'f,
    {
        Box::pin(self.session.query(sql, params))
    }
    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        self.session.begin().await
    }
}

#[async_trait]
impl Transaction for SqliteTransaction {
    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.finish(true).await
    }
    async fn rollback(mut self: Box<Self>) -> Result<()> {
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
                    let undone = blocking::spawn(move || guard.rollback_levels_blocking(depth));
                    if let Ok(Err(err)) = undone.await {
                        tracing::warn!(%err, "rolling back a dropped transaction failed");
                    }
                }
            });
        }
    }
}
