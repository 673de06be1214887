//! Capturing the changes a closure makes, on one pinned connection, inside one transaction.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::executor::block_on as futures_lite_block_on;
use liteorm_core::Session;
use liteorm_sqlite::raw::MemoKey;
use liteorm_sqlite::{PinnedConnection, PinnedGuard, SqliteSession, blocking};

use crate::driver::RawConnection;
use crate::ffi::{self, Handle, Output, RawSession, TableFilter, TableFilterFn};
use crate::{Capability, Changeset, Error, Patchset, gate};

/// Sessions whose recorded data is larger than this generate their changeset on a blocking
/// thread instead of the calling task.
const INLINE_GENERATE_MAX: i64 = 256 * 1024;

/// Records every change `f` makes to `tables` (none listed: every table with a primary key) and
/// returns them as a [`Changeset`]. Shorthand for `Capture::new(session).tables(tables).changeset(f)`.
///
/// See [`Capture`] for the guarantees.
pub async fn capture<F, Fut, E>(
    session: &dyn Session,
    tables: &[&str],
    f: F,
) -> Result<Changeset, E>
where
    F: FnOnce(SqliteSession) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send,
    E: From<Error>,
{
    Capture::new(session)
        .tables(tables.iter().copied())
        .changeset(f)
        .await
}

/// A capture being configured.
///
/// The closure receives a [`SqliteSession`] pinned to the one connection on which the recording
/// session object lives. What is recorded is what runs on that connection:
///
/// - statements, transactions and raw work through the session the closure is handed (and, with
///   sqlx, queries executed on it);
/// - statements of any pool-backed [`SqliteSession`] on the **same pool**, used on the capture's
///   task while the closure runs: they are routed to the recording connection
///   ([`PinnedConnection::route`](liteorm_sqlite::PinnedConnection::route)), so an application that keeps writing through its own
///   session handle inside the closure is recorded too.
///
/// Anything else (another pool, a task spawned from the closure, a plain sqlx pool query, an
/// ORM's own pool connection) runs on another connection and is **not** recorded; it cannot
/// commit unnoticed meanwhile either: capture takes the database's write lock when it starts
/// (`BEGIN IMMEDIATE`), so such a write waits up to its connection's busy timeout (or its pool's
/// acquire timeout, if the capture holds the pool's last connection) and then fails with a
/// "database is locked" error (or a pool timeout), and nothing of it is written.
///
/// The closure runs inside a transaction that capture opens (a savepoint when `session` is
/// already in one):
///
/// - `Ok` from the closure: the changes are committed and returned as a changeset, together, or
///   neither (if producing the changeset fails, the transaction is rolled back).
/// - `Err` from the closure: the transaction is rolled back and the error returned as is; the
///   database is as before the capture.
/// - The future is dropped (cancelled): the transaction is rolled back and the session object
///   deleted before the connection goes back to the pool.
///
/// The closure may nest transactions with `begin()` (savepoints) but must not end capture's own
/// transaction with a raw `COMMIT`/`ROLLBACK` ([`Error::TransactionEnded`]).
///
/// Options: [`Capture::indirect`] marks the changes as indirect, [`Capture::table_filter`] picks
/// tables by name when recording every table, [`Capture::implicit_primary_key`] records tables
/// without a PRIMARY KEY and [`Capture::track_size`] keeps a running changeset size. With
/// [`Capture::changeset_with`] (or [`Capture::patchset_with`]) the closure also gets a
/// [`Recorder`] to pause and resume recording, switch the indirect flag, and look at what has
/// been recorded so far.
///
/// ```
/// use liteorm_changeset::Capture;
/// use liteorm_core::Session;
/// use liteorm_sqlite::SqliteSession;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), liteorm_changeset::Error> {
/// let db = SqliteSession::open_in_memory().await?;
/// db.execute_batch(
///     "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);
///      CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);
///      CREATE TABLE cache(id INTEGER PRIMARY KEY, blob BLOB)",
/// )
/// .await?;
/// let changes = Capture::new(&db)
///     // Every table but the cache.
///     .table_filter(|table| table != "cache")
///     .changeset_with(|s, recorder| async move {
///         s.execute("INSERT INTO users VALUES (1, 'ada')", &[]).await?;
///         s.execute("INSERT INTO cache VALUES (1, x'00')", &[]).await?;
///         // Bookkeeping that replicas do themselves: not recorded.
///         recorder.set_enabled(false).await?;
///         s.execute("INSERT INTO audit VALUES (1, 'created ada')", &[]).await?;
///         recorder.set_enabled(true).await?;
///         // Recorded, but marked as a side effect.
///         recorder.set_indirect(true).await?;
///         s.execute("INSERT INTO users VALUES (2, 'bob')", &[]).await?;
///         assert!(!recorder.is_empty().await?);
///         Ok::<_, liteorm_changeset::Error>(())
///     })
///     .await?;
/// let mut recorded: Vec<_> = changes
///     .iter()
///     .map(|c| c.map(|c| (c.table.to_string(), c.indirect)))
///     .collect::<Result<_, _>>()?;
/// recorded.sort();
/// assert_eq!(recorded, [("users".into(), false), ("users".into(), true)]);
/// # Ok(())
/// # }
/// ```
#[must_use = "a Capture does nothing until `changeset` or `patchset` is awaited"]
pub struct Capture<'s> {
    session: &'s dyn Session,
    options: CaptureOptions,
}

/// What a capture records and how: its tables and the options of [`Capture`]'s builder, for a
/// capture on a connection lent by another driver ([`CaptureOptions::start`]).
///
/// Each method does what [`Capture`]'s method of the same name does.
#[derive(Default)]
#[must_use]
pub struct CaptureOptions {
    tables: Option<Vec<String>>,
    options: Options,
}

/// How the session object is set up.
#[derive(Default)]
struct Options {
    indirect: bool,
    implicit_pk: bool,
    track_size: bool,
    filter: Option<TableFilterFn>,
    /// [`Capture::within_transaction`].
    within_transaction: bool,
}

impl fmt::Debug for CaptureOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureOptions")
            .field("tables", &self.tables)
            .field("indirect", &self.options.indirect)
            .field("implicit_pk", &self.options.implicit_pk)
            .field("track_size", &self.options.track_size)
            .field("table_filter", &self.options.filter.is_some())
            .field("within_transaction", &self.options.within_transaction)
            .finish()
    }
}

impl CaptureOptions {
    /// Every table that has a primary key, no option set.
    pub fn new() -> Self {
        CaptureOptions::default()
    }

    /// See [`Capture::tables`].
    pub fn tables<I, T>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tables: Vec<String> = tables.into_iter().map(Into::into).collect();
        if !tables.is_empty() {
            self.tables.get_or_insert_with(Vec::new).extend(tables);
        }
        self
    }

    /// See [`Capture::indirect`].
    pub fn indirect(mut self, indirect: bool) -> Self {
        self.options.indirect = indirect;
        self
    }

    /// See [`Capture::table_filter`].
    pub fn table_filter(mut self, filter: impl FnMut(&str) -> bool + Send + 'static) -> Self {
        self.options.filter = Some(Box::new(filter));
        self
    }

    /// See [`Capture::implicit_primary_key`].
    pub fn implicit_primary_key(mut self, enabled: bool) -> Self {
        self.options.implicit_pk = enabled;
        self
    }

    /// See [`Capture::track_size`].
    pub fn track_size(mut self, enabled: bool) -> Self {
        self.options.track_size = enabled;
        self
    }

    /// Fails early for an option this SQLite lacks.
    fn require(&self) -> Result<(), Error> {
        if self.options.track_size {
            Capability::ChangesetSize.require()?;
        }
        if self.options.implicit_pk {
            Capability::ImplicitPrimaryKey.require()?;
        }
        Ok(())
    }

    /// Starts recording on the connection `conn` lends: checks the listed tables, then creates,
    /// configures and attaches the session object, as [`Capture`] does. The driver runs the
    /// recorded work inside its own transaction (`BEGIN IMMEDIATE`, or a savepoint), then ends
    /// the recording with [`LentRecording::changeset`] (or `patchset`, or `discard`) before it
    /// commits or rolls back.
    pub fn start(self, conn: &mut impl RawConnection) -> Result<LentRecording, Error> {
        self.require()?;
        let CaptureOptions { tables, options } = self;
        conn.with_handle(|db| {
            for table in tables.as_deref().unwrap_or_default() {
                check_table(table, ffi::table_pk(db, table)?, options.implicit_pk)?;
            }
            let session = open_session(db, tables.as_deref(), options)?;
            Ok(LentRecording { session })
        })
    }
}

/// A session object recording on a connection lent by a driver (see [`CaptureOptions::start`]).
///
/// It must be ended on the same connection, with [`LentRecording::changeset`],
/// [`LentRecording::patchset`] or [`LentRecording::discard`], before the connection is closed:
/// dropped otherwise, the session object goes on recording (and is never freed).
#[must_use = "a LentRecording must be ended with changeset, patchset or discard"]
pub struct LentRecording {
    session: RawSession,
}

impl fmt::Debug for LentRecording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentRecording").finish_non_exhaustive()
    }
}

impl LentRecording {
    /// Ends the recording: checks the table filter did not panic and that the transaction is
    /// still open, returns what was recorded as a changeset, and deletes the session object (on
    /// failure too).
    pub fn changeset(self, conn: &mut impl RawConnection) -> Result<Changeset, Error> {
        self.finish(conn, false).map(Changeset::trusted)
    }

    /// Like [`LentRecording::changeset`], as a patchset.
    pub fn patchset(self, conn: &mut impl RawConnection) -> Result<Patchset, Error> {
        self.finish(conn, true).map(Patchset::trusted)
    }

    /// Deletes the session object without producing anything (the work failed).
    pub fn discard(self, conn: &mut impl RawConnection) {
        conn.with_handle(|db| self.session.delete(db));
    }

    fn finish(self, conn: &mut impl RawConnection, patchset: bool) -> Result<Arc<[u8]>, Error> {
        conn.with_handle(|db| match check_filter(&self.session) {
            Ok(()) => generate_and_delete(db, self.session, patchset),
            Err(err) => {
                self.session.delete(db);
                Err(err)
            }
        })
    }
}

impl<'s> Capture<'s> {
    /// A capture on `session` of every table that has a primary key.
    pub fn new(session: &'s dyn Session) -> Self {
        Capture {
            session,
            options: CaptureOptions::default(),
        }
    }

    /// Records the changes as indirect (`sqlite3session_indirect`) from the start; a
    /// [`Recorder`] can switch it during the capture. Changes made by triggers and foreign key
    /// actions are always indirect. Conflict handlers see the flag in
    /// [`Change::indirect`](crate::Change::indirect).
    pub fn indirect(mut self, indirect: bool) -> Self {
        self.options = self.options.indirect(indirect);
        self
    }

    /// When recording every table (no [`Capture::tables`]), records only the tables for which
    /// `filter` returns `true` (`sqlite3session_table_filter`). SQLite asks when a statement
    /// changes a table it does not record yet (once for a table the filter accepts; for each
    /// change to one it refuses), on the thread running that statement: keep it quick. A panic
    /// in it fails the capture with [`Error::CallbackPanicked`] (and rolls it back). Listed
    /// tables are always recorded and never passed to the filter.
    pub fn table_filter(mut self, filter: impl FnMut(&str) -> bool + Send + 'static) -> Self {
        self.options = self.options.table_filter(filter);
        self
    }

    /// Also records tables that have no PRIMARY KEY, as if each had a leading
    /// `_rowid_ INTEGER PRIMARY KEY` column (`SQLITE_SESSION_OBJCONFIG_ROWID`); their changes
    /// then carry one column more than the table, and apply to a table without a PRIMARY KEY
    /// by rowid. Needs SQLite 3.42
    /// ([`Capability::ImplicitPrimaryKey`]); older ones fail the capture with
    /// [`Error::Unsupported`] before the closure runs.
    pub fn implicit_primary_key(mut self, enabled: bool) -> Self {
        self.options = self.options.implicit_primary_key(enabled);
        self
    }

    /// Keeps a running estimate of the changeset size, for [`Recorder::changeset_size`]
    /// (`SQLITE_SESSION_OBJCONFIG_SIZE`, which costs a little per recorded change). Needs SQLite
    /// 3.36 ([`Capability::ChangesetSize`]).
    pub fn track_size(mut self, enabled: bool) -> Self {
        self.options = self.options.track_size(enabled);
        self
    }

    /// On a session already inside a transaction that its owner rolls back whenever the
    /// capture fails, records in that transaction instead of a savepoint of its own: two
    /// statements fewer per capture. The closure's writes then stay in the owner's transaction
    /// when the capture fails (the session object is deleted all the same), for the owner to
    /// roll back. Outside a transaction it changes nothing: capture opens its own.
    pub fn within_transaction(mut self) -> Self {
        self.options.options.within_transaction = true;
        self
    }

    /// Records only the given tables (adds to earlier calls). An empty list keeps "every table".
    pub fn tables<I, T>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.options = self.options.tables(tables);
        self
    }

    /// Runs `f` and returns its changes as a changeset.
    pub async fn changeset<F, Fut, E>(self, f: F) -> Result<Changeset, E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error>,
    {
        let ((), blob) = self.run(false, |r| f(r.session())).await?;
        Ok(Changeset::trusted(blob))
    }

    /// Like [`Capture::changeset`], for a closure that also returns a value: returns the value
    /// and the changeset.
    ///
    /// ```
    /// use liteorm_changeset::Capture;
    /// use liteorm_core::Session;
    /// use liteorm_sqlite::SqliteSession;
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), liteorm_changeset::Error> {
    /// let db = SqliteSession::open_in_memory().await?;
    /// db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await?;
    /// let (inserted, changes) = Capture::new(&db)
    ///     .changeset_returning(|s| async move {
    ///         let n = s.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')", &[]).await?;
    ///         Ok::<_, liteorm_changeset::Error>(n)
    ///     })
    ///     .await?;
    /// assert_eq!(inserted, 2);
    /// assert_eq!(changes.changes()?.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn changeset_returning<F, Fut, T, E>(self, f: F) -> Result<(T, Changeset), E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send,
        E: From<Error>,
    {
        let (value, blob) = self.run(false, |r| f(r.session())).await?;
        Ok((value, Changeset::trusted(blob)))
    }

    /// Like [`Capture::patchset`], for a closure that also returns a value: returns the value
    /// and the patchset.
    pub async fn patchset_returning<F, Fut, T, E>(self, f: F) -> Result<(T, Patchset), E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send,
        E: From<Error>,
    {
        let (value, blob) = self.run(true, |r| f(r.session())).await?;
        Ok((value, Patchset::trusted(blob)))
    }

    /// Runs `f` and returns its changes as a patchset.
    pub async fn patchset<F, Fut, E>(self, f: F) -> Result<Patchset, E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error>,
    {
        let ((), blob) = self.run(true, |r| f(r.session())).await?;
        Ok(Patchset::trusted(blob))
    }

    /// Runs `f`, which also gets a [`Recorder`] for the session object, and returns its changes
    /// as a changeset.
    pub async fn changeset_with<F, Fut, E>(self, f: F) -> Result<Changeset, E>
    where
        F: FnOnce(SqliteSession, Recorder) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error>,
    {
        let ((), blob) = self.run(false, |r| f(r.session(), r.recorder())).await?;
        Ok(Changeset::trusted(blob))
    }

    /// Runs `f`, which also gets a [`Recorder`] for the session object, and returns its changes
    /// as a patchset.
    pub async fn patchset_with<F, Fut, E>(self, f: F) -> Result<Patchset, E>
    where
        F: FnOnce(SqliteSession, Recorder) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error>,
    {
        let ((), blob) = self.run(true, |r| f(r.session(), r.recorder())).await?;
        Ok(Patchset::trusted(blob))
    }

    /// Runs `f` and writes its changes as a changeset to `output`, in chunks, as SQLite
    /// generates them: the changeset is never whole in memory (the session object's record of
    /// the changed rows is, as for every capture). Returns `output`, flushed.
    ///
    /// The bytes are written while capture's transaction is still open (SQLite reads the rows'
    /// current values to generate them), and the transaction commits after the last one. If
    /// this returns an error, `output` may hold a partial or whole changeset of writes that
    /// were rolled back: discard it. `output` is written on a blocking thread, so it may block
    /// (a file, a socket); for an async writer, wrap it in `tokio_util::io::SyncIoBridge`.
    ///
    /// ```
    /// use liteorm_changeset::{Capture, Changeset};
    /// use liteorm_core::Session;
    /// use liteorm_sqlite::SqliteSession;
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), liteorm_changeset::Error> {
    /// let db = SqliteSession::open_in_memory().await?;
    /// db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await?;
    /// let dir = tempfile::tempdir()?;
    /// let file = std::fs::File::create(dir.path().join("changes.bin"))?;
    /// Capture::new(&db)
    ///     .changeset_to(file, |s| async move {
    ///         s.execute("INSERT INTO t VALUES (1, 'one')", &[]).await?;
    ///         Ok::<_, liteorm_changeset::Error>(())
    ///     })
    ///     .await?;
    /// let written = Changeset::from_bytes(std::fs::read(dir.path().join("changes.bin"))?)?;
    /// assert_eq!(written.changes()?.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn changeset_to<W, F, Fut, E>(self, output: W, f: F) -> Result<W, E>
    where
        W: Write + Send + 'static,
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error>,
    {
        let ((), recording) = self.record(|r| f(r.session())).await?;
        Ok(recording.finish_to(false, output).await?)
    }

    /// Like [`Capture::changeset_to`], writing a patchset.
    pub async fn patchset_to<W, F, Fut, E>(self, output: W, f: F) -> Result<W, E>
    where
        W: Write + Send + 'static,
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error>,
    {
        let ((), recording) = self.record(|r| f(r.session())).await?;
        Ok(recording.finish_to(true, output).await?)
    }

    /// Runs `f` and, once it returns, `then` with its changeset and capture's connection, still
    /// inside capture's transaction: what `then` writes there commits together with the
    /// captured changes, or not at all. For keeping the changes in the same database as they
    /// are made (an outbox, an audit table), without a second transaction. Returns `f`'s value
    /// and `then`'s.
    ///
    /// `then` gets the connection locked ([`PinnedGuard`]: run its statements with
    /// [`PinnedGuard::execute_refs`] and [`PinnedGuard::query_refs`]) and hands it back for the
    /// commit (the guard of another connection fails the capture with [`Error::Misuse`]). Its
    /// writes are not recorded: the session object is already deleted. If `then` fails, the
    /// transaction is rolled back as when `f` fails, and its error returned.
    ///
    /// ```
    /// use liteorm_changeset::Capture;
    /// use liteorm_core::{Session, ValueRef};
    /// use liteorm_sqlite::SqliteSession;
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), liteorm_changeset::Error> {
    /// let db = SqliteSession::open_in_memory().await?;
    /// db.execute_batch(
    ///     "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE outbox(blob BLOB)",
    /// )
    /// .await?;
    /// let ((), stored) = Capture::new(&db)
    ///     .tables(["t"])
    ///     .changeset_then(
    ///         |s| async move {
    ///             s.execute("INSERT INTO t VALUES (1, 'one')", &[]).await?;
    ///             Ok::<_, liteorm_changeset::Error>(())
    ///         },
    ///         |mut guard, changes| async move {
    ///             let blob = [ValueRef::Blob(changes.as_bytes())];
    ///             let stored = guard.execute_refs("INSERT INTO outbox VALUES (?)", &blob).await?;
    ///             Ok((guard, stored))
    ///         },
    ///     )
    ///     .await?;
    /// assert_eq!(stored, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn changeset_then<F, Fut, T, G, GFut, U, E>(self, f: F, then: G) -> Result<(T, U), E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send,
        G: FnOnce(PinnedGuard, Changeset) -> GFut,
        GFut: Future<Output = Result<(PinnedGuard, U), E>>,
        E: From<Error>,
    {
        let (value, recording) = self.record(|r| f(r.session())).await?;
        let then = |guard, blob| then(guard, Changeset::trusted(blob));
        Ok((value, recording.finish_then(false, then).await?))
    }

    async fn run<F, Fut, T, E>(self, patchset: bool, f: F) -> Result<(T, Arc<[u8]>), E>
    where
        F: FnOnce(&Recording) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send,
        E: From<Error>,
    {
        let (value, recording) = self.record(f).await?;
        Ok((value, recording.finish(patchset).await?))
    }

    /// Starts the recording and runs `f` on it; the recording is then ready to be finished.
    async fn record<F, Fut, T, E>(self, f: F) -> Result<(T, Recording), E>
    where
        F: FnOnce(&Recording) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send,
        E: From<Error>,
    {
        let sqlite = gate::gate(self.session, "capturing a changeset")?;
        self.options.require()?;
        let pinned = sqlite.pin().await.map_err(Error::from)?;
        // Declared before the closure's future so that, on cancellation, it is dropped after it
        // (and so after any statement future that still holds the connection).
        let recording = Recording::start(pinned, self.options).await?;
        // Writes the closure makes through a pool-backed session on the same pool are routed to
        // the recording connection (and so recorded), on this task.
        let work = f(&recording);
        let value = recording.pinned.route(work).await?;
        Ok((value, recording))
    }
}

/// The session object of a capture, shared with its [`Recorder`]s; `None` once it is deleted.
type SharedSession = Arc<Mutex<Option<RawSession>>>;

fn lock(session: &SharedSession) -> MutexGuard<'_, Option<RawSession>> {
    // Nothing panics while holding the lock (SQLite calls do not unwind), so poison is harmless.
    session.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A live recording: the session object and capture's transaction on the pinned connection.
/// Dropping it before [`Recording::finish`] undoes both.
struct Recording {
    pinned: PinnedConnection,
    session: SharedSession,
    /// The transaction level capture opened, to commit or roll back (`None`: none, or ended).
    depth: Option<usize>,
    /// The transaction level the closure runs at, which it must leave open.
    level: usize,
    track_size: bool,
}

impl Recording {
    async fn start(pinned: PinnedConnection, options: CaptureOptions) -> Result<Self, Error> {
        let CaptureOptions { tables, options } = options;
        let within_transaction = options.within_transaction;
        let tables = tables.as_deref();
        let mut recording = Recording {
            pinned,
            session: Arc::new(Mutex::new(None)),
            depth: None,
            level: 0,
            track_size: options.track_size,
        };
        let mut guard = recording.pinned.lock().await?;
        for table in tables.unwrap_or_default() {
            check_table(
                table,
                table_pk(&mut guard, table).await?,
                options.implicit_pk,
            )?;
        }
        let session = guard
            .with_raw_same_settings(|db| open_session(db, tables, options))
            .await??;
        *lock(&recording.session) = Some(session);
        // The write lock from the start: a write through another connection meanwhile waits
        // (up to its busy timeout) and fails, instead of committing unrecorded before the
        // closure's first write; and concurrent captures queue instead of failing with
        // `SQLITE_BUSY_SNAPSHOT` when the one that read first writes second.
        let open = guard.transaction_depth();
        recording.level = if within_transaction && open > 0 {
            open
        } else {
            let depth = guard.begin_immediate().await?;
            recording.depth = Some(depth);
            depth
        };
        Ok(recording)
    }

    /// A session on the recording connection, for the closure.
    fn session(&self) -> SqliteSession {
        self.pinned.session()
    }

    fn recorder(&self) -> Recorder {
        Recorder {
            pinned: self.pinned.share(),
            session: Arc::clone(&self.session),
            track_size: self.track_size,
        }
    }

    /// Produces the blob, commits capture's transaction and deletes the session object. On any
    /// error, `Drop` rolls back and deletes what is left.
    async fn finish(self, patchset: bool) -> Result<Arc<[u8]>, Error> {
        self.finish_then(patchset, |guard, blob| async move { Ok((guard, blob)) })
            .await
    }

    /// Produces the blob and deletes the session object, runs `then` with the connection and
    /// the blob inside capture's transaction, and commits. On any error (`then`'s included),
    /// `Drop` rolls back and deletes what is left.
    ///
    /// The session object stays in `self.session` until a synchronous step deletes it or hands
    /// it to the blocking task that will: if this future is dropped at an await in between,
    /// `Drop` still finds it.
    async fn finish_then<G, GFut, U, E>(mut self, patchset: bool, then: G) -> Result<U, E>
    where
        G: FnOnce(PinnedGuard, Arc<[u8]>) -> GFut,
        GFut: Future<Output = Result<(PinnedGuard, U), E>>,
        E: From<Error>,
    {
        let mut guard = self.locked_in_transaction().await?;
        // One raw call checks the session and, when it is small, generates and deletes it.
        let inline = guard
            .with_raw_same_settings(|db| {
                let mut session = lock(&self.session);
                let used = check_session(db, session.as_ref())?;
                if used > INLINE_GENERATE_MAX {
                    return Ok(None);
                }
                let session = session.take().ok_or(Error::TransactionEnded)?;
                generate_and_delete(db, session, patchset).map(Some)
            })
            .await
            .map_err(Error::from)??;
        let (blob, guard) = match inline {
            Some(blob) => (blob, guard),
            None => {
                let session = lock(&self.session).take().ok_or(Error::TransactionEnded)?;
                let task = blocking::spawn(move || {
                    let blob = guard.with_raw_same_settings_blocking(|db| {
                        generate_and_delete(db, session, patchset)
                    });
                    (blob, guard)
                });
                let (blob, guard) = task
                    .await
                    .map_err(|panic| Error::task_failed("changeset generating task", panic))?;
                (blob.map_err(Error::from)??, guard)
            }
        };
        let (mut guard, value) = then(guard, blob).await?;
        if !self.pinned.is_locked_by(&guard) {
            // Committing on it would commit someone else's transaction; `Drop` rolls back ours.
            return Err(Error::Misuse(
                "the continuation of changeset_then returned the guard of another connection",
            )
            .into());
        }
        if self.depth.is_some() {
            guard.commit().await.map_err(Error::from)?;
        }
        self.depth = None;
        Ok(value)
    }

    /// As [`Recording::finish`], writing the blob to `output` on a blocking thread.
    async fn finish_to<W: Write + Send + 'static>(
        mut self,
        patchset: bool,
        output: W,
    ) -> Result<W, Error> {
        let mut guard = self.ready().await?;
        let session = lock(&self.session).take().ok_or(Error::TransactionEnded)?;
        let task = blocking::spawn(move || {
            let mut output = Output::new(output);
            let written = guard.with_raw_same_settings_blocking(|db| {
                let result = if ffi::in_transaction(db) {
                    session
                        .generate_strm(db, patchset, &mut output)
                        .map_err(Error::from)
                } else {
                    Err(Error::TransactionEnded)
                };
                session.delete(db);
                result
            });
            let written = written
                .map_err(Error::from)
                .and_then(|r| r)
                .and_then(|()| output.writer.flush().map_err(Error::from));
            (written.map(|()| output.writer), guard)
        });
        let (written, mut guard) = task
            .await
            .map_err(|panic| Error::task_failed("changeset writing task", panic))?;
        let writer = written?;
        if self.depth.is_some() {
            guard.commit().await?;
        }
        self.depth = None;
        Ok(writer)
    }

    /// The locked connection, once capture's transaction is known to be still open at the
    /// closure's level.
    async fn locked_in_transaction(&self) -> Result<PinnedGuard, Error> {
        let mut guard = self.pinned.lock().await?;
        if guard.transaction_depth() != self.level {
            return Err(Error::TransactionEnded);
        }
        Ok(guard)
    }

    /// The locked connection, once capture's transaction is known to be open and the table
    /// filter not to have panicked. On failure, `Drop` deletes the session and rolls back.
    async fn ready(&self) -> Result<PinnedGuard, Error> {
        let mut guard = self.locked_in_transaction().await?;
        guard
            .with_raw_same_settings(|db| check_session(db, lock(&self.session).as_ref()))
            .await??;
        Ok(guard)
    }
}

/// The memory `session` uses, once it is known to be there and its table filter not to have
/// panicked.
fn check_session(db: Handle<'_>, session: Option<&RawSession>) -> Result<i64, Error> {
    let session = session.ok_or(Error::TransactionEnded)?;
    check_filter(session)?;
    Ok(session.memory_used(db))
}

/// Key layouts by table name, kept on the connection (see [`table_pk`]).
const TABLE_PK: MemoKey<Option<Vec<u8>>> = MemoKey::new("liteorm_changeset::table_pk");

/// The primary-key layout of `table` (see [`ffi::table_pk`]), kept on the connection while its
/// schema does not change: reading it costs a tenth of a one-row capture (SQLite prepares a
/// pragma anew on every run).
pub(crate) async fn table_pk(
    guard: &mut PinnedGuard,
    table: &str,
) -> Result<Option<Vec<u8>>, Error> {
    guard
        .schema_cached(TABLE_PK, table, |db| ffi::table_pk(db, table))
        .await?
        .map_err(Error::from)
}

/// Fails for a listed table that cannot be recorded: missing (`pk` is `None`) or without a
/// primary key (unless recorded by rowid).
fn check_table(table: &str, pk: Option<Vec<u8>>, implicit_pk: bool) -> Result<(), Error> {
    match pk {
        None => Err(Error::NoSuchTable(table.to_owned())),
        Some(pk) if pk.iter().all(|&p| p == 0) && !implicit_pk => {
            Err(Error::NoPrimaryKey(table.to_owned()))
        }
        Some(_) => Ok(()),
    }
}

/// A new session object on `db`, configured as `options` say and attached to `tables` (none:
/// every table); nothing is left behind on failure.
fn open_session(
    db: Handle<'_>,
    tables: Option<&[String]>,
    options: Options,
) -> Result<RawSession, Error> {
    let mut session = RawSession::create(db)?;
    let attached = configure(db, &mut session, options).and_then(|()| match tables {
        None => Ok(session.attach(db, None)?),
        Some(tables) => Ok(tables
            .iter()
            .try_for_each(|t| session.attach(db, Some(t)))?),
    });
    if let Err(err) = attached {
        session.delete(db);
        return Err(err);
    }
    Ok(session)
}

/// Fails the capture if its table filter panicked (the panic was caught in the callback).
fn check_filter(session: &RawSession) -> Result<(), Error> {
    match session.filter_panic() {
        Some(message) => Err(Error::CallbackPanicked {
            callback: "table filter",
            message,
        }),
        None => Ok(()),
    }
}

/// Checks that capture's transaction is still open, then generates the blob and deletes the
/// session (also when generating fails).
fn generate_and_delete(
    db: Handle<'_>,
    session: RawSession,
    patchset: bool,
) -> Result<Arc<[u8]>, Error> {
    let result = if ffi::in_transaction(db) {
        session.generate(db, patchset).map_err(Error::from)
    } else {
        Err(Error::TransactionEnded)
    };
    session.delete(db);
    result
}

/// Sets up a new session object on `db` as `options` say, before any table is attached.
fn configure(db: Handle<'_>, session: &mut RawSession, options: Options) -> Result<(), Error> {
    if options.track_size {
        Capability::ChangesetSize.require()?;
        #[cfg(sqlite_has_changeset_size)]
        session.track_size(db)?;
    }
    if options.implicit_pk {
        Capability::ImplicitPrimaryKey.require()?;
        #[cfg(sqlite_has_implicit_pk)]
        session.implicit_pk(db)?;
    }
    if options.indirect {
        session.indirect(db, true);
    }
    if let Some(filter) = options.filter {
        session.set_table_filter(
            db,
            TableFilter {
                filter,
                panicked: None,
            },
        );
    }
    Ok(())
}

/// A handle on the session object of a running capture, handed to the closure of
/// [`Capture::changeset_with`] and [`Capture::patchset_with`]: pause and resume recording,
/// switch the indirect flag, and look at what has been recorded so far.
///
/// Each call waits for the statement running on the capture's connection (if any) to finish,
/// so it takes effect between statements. Once the capture is over, calls fail with
/// [`Error::Misuse`]. Clones share the capture.
pub struct Recorder {
    pinned: PinnedConnection,
    session: SharedSession,
    track_size: bool,
}

impl Recorder {
    /// Runs `f` on the session object while the connection is locked.
    async fn with_session<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RawSession, Handle<'_>) -> T + Send + 'static,
    ) -> Result<T, Error> {
        const OVER: Error = Error::Misuse("the capture this Recorder belongs to is over");
        if lock(&self.session).is_none() {
            return Err(OVER);
        }
        let mut guard = self.pinned.lock().await?;
        let session = Arc::clone(&self.session);
        guard
            .with_raw_same_settings(move |db| lock(&session).as_ref().map(|s| f(s, db)))
            .await?
            .ok_or(OVER)
    }

    /// Stops (`false`) or resumes (`true`) recording (`sqlite3session_enable`). While stopped,
    /// statements change the database without being recorded; but a row that was recorded
    /// earlier still appears with its final values, because a changeset pairs the recorded old
    /// values with the row as it is when the capture ends.
    pub async fn set_enabled(&self, enabled: bool) -> Result<(), Error> {
        self.with_session(move |s, db| s.enable(db, enabled)).await
    }

    /// Marks the changes recorded from now on as indirect (`true`) or direct
    /// (`sqlite3session_indirect`).
    pub async fn set_indirect(&self, indirect: bool) -> Result<(), Error> {
        self.with_session(move |s, db| s.indirect(db, indirect))
            .await
    }

    /// Whether nothing has been recorded yet (`sqlite3session_isempty`).
    pub async fn is_empty(&self) -> Result<bool, Error> {
        self.with_session(|s, db| s.is_empty(db)).await
    }

    /// Bytes of heap the session object uses (`sqlite3session_memory_used`).
    pub async fn memory_used(&self) -> Result<u64, Error> {
        let used = self.with_session(|s, db| s.memory_used(db)).await?;
        Ok(u64::try_from(used).unwrap_or(0))
    }

    /// The size in bytes of the changeset the capture would produce now
    /// (`sqlite3session_changeset_size`). Needs [`Capture::track_size`] ([`Error::Misuse`]
    /// otherwise) and SQLite 3.36 ([`Capability::ChangesetSize`]).
    pub async fn changeset_size(&self) -> Result<u64, Error> {
        Capability::ChangesetSize.require()?;
        if !self.track_size {
            return Err(Error::Misuse(
                "Recorder::changeset_size needs Capture::track_size(true)",
            ));
        }
        #[cfg(sqlite_has_changeset_size)]
        {
            let size = self.with_session(|s, db| s.changeset_size(db)).await?;
            Ok(u64::try_from(size).unwrap_or(0))
        }
        #[cfg(not(sqlite_has_changeset_size))]
        Err(Error::Misuse(
            "the changeset size estimate is not compiled in",
        ))
    }
}

impl Clone for Recorder {
    fn clone(&self) -> Self {
        Recorder {
            pinned: self.pinned.share(),
            session: Arc::clone(&self.session),
            track_size: self.track_size,
        }
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("live", &lock(&self.session).is_some())
            .field("track_size", &self.track_size)
            .finish()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let session = lock(&self.session).take();
        let depth = self.depth.take();
        if session.is_none() && depth.is_none() {
            return;
        }
        if let Some(mut guard) = self.pinned.try_lock() {
            // The usual case: nothing else is running on the connection. Waiting for sqlx's
            // worker to hand over the handle takes at most the end of its current command.
            undo(&mut guard, session, depth);
            return;
        }
        // A statement is still in flight on the connection (a clone of the capture's session
        // outlived it): clean up once it is done, before the connection can go back to the pool.
        let pinned = self.pinned.share();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Ok(mut guard) = pinned.lock().await {
                        let _ = blocking::spawn(move || undo(&mut guard, session, depth)).await;
                    }
                });
            }
            Err(_) => {
                std::thread::spawn(move || {
                    if let Ok(mut guard) = futures_lite_block_on(pinned.lock()) {
                        undo(&mut guard, session, depth);
                    }
                });
            }
        }
    }
}

/// Rolls back capture's transaction level (and anything the closure left open above it), then
/// deletes the session object.
fn undo(guard: &mut PinnedGuard, session: Option<RawSession>, depth: Option<usize>) {
    if let Some(depth) = depth {
        // Failing here means the connection is broken; sqlx will not hand it out again.
        let _ = guard.rollback_levels_blocking(depth);
    }
    if let Some(session) = session {
        let _ = guard.with_raw_same_settings_blocking(|db| session.delete(db));
    }
}
