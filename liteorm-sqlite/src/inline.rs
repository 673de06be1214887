//! Statements stepped directly on a pinned connection's `sqlite3*`, on the calling thread, while
//! sqlx's `lock_handle()` guard keeps sqlx's worker thread off the connection.
//!
//! A statement run through sqlx is a round trip to the connection's worker thread (a command
//! out, the result back). A pinned connection may instead keep sqlx's handle lock across
//! statements ([`RawLock`]) and step its own cache of prepared statements inline, with the same
//! value and row conversions and the same error codes as the sqlx path. Statements that could
//! wait for another connection's lock (any statement on a file database outside a write
//! transaction) and transaction control that may wait (`BEGIN IMMEDIATE`, `COMMIT` on a file)
//! are tried inline with a zero busy timeout, and go to sqlx only if another connection holds
//! the lock, so that waits happen on sqlx's thread, never on an async task. SQL that carries
//! several statements or named parameters, or whose parameter count does not match, goes
//! through sqlx as before.

use std::any::Any;
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_uint};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libsqlite3_sys as ffi;
use liteorm_core::{Error, Row, Value, ValueRef};
use rustc_hash::FxHashMap;
use sqlx::sqlite::LockedSqliteHandle;

use crate::DIALECT;
use crate::convert::Param;
use crate::raw::DataVersion;

/// `SQLITE_UTF8` as `sqlite3_bind_text64` takes it.
const UTF8: u8 = 1;

/// Prepared statements kept per lock; more and the cache starts over.
const CACHE_MAX: usize = 64;

/// sqlx's handle lock on a pinned connection, held across statements, and the statements
/// prepared under it. Dropping it finalizes them, then gives the connection back to sqlx's
/// worker.
pub(crate) struct RawLock {
    /// Declared before `_handle`, so dropped (finalized) while the handle is still locked.
    /// Each SQL text with its statement, `None` for SQL that cannot run inline.
    statements: Vec<(Box<str>, Option<Statement>)>,
    /// Where the statement of each SQL text is in `statements` (with a fast hash: the keys are
    /// the application's own SQL).
    by_sql: FxHashMap<Box<str>, usize>,
    /// The positions in `statements` of the texts looked up last, compared before hashing: a
    /// transaction or a replay cycles through a few texts, and comparing one text (its length
    /// first) costs less than hashing it.
    recent: [usize; RECENT],
    /// The slot of `recent` that the next miss replaces.
    next_recent: usize,
    /// Values read from the schema, kept while it does not change (see `schema_memo`).
    schema: SchemaMemo,
    db: NonNull<ffi::sqlite3>,
    /// Whether the main database is a file (read once: only `sqlite3_deserialize` could change
    /// it, into an in-memory database).
    file: bool,
    /// The connection's busy timeout as `PRAGMA busy_timeout` last read it, while nothing that
    /// could have changed it has run since (see [`Self::busy_timeout`]).
    busy: Option<c_int>,
    /// This lock's number in the process (never reused), and how many times the handle was
    /// handed to code that could do anything with it: what a [`DataVersion`] is comparable by.
    serial: u64,
    handouts: u64,
    _handle: LockedSqliteHandle<'static>,
}

/// The serial of the next [`RawLock`].
static SERIALS: AtomicU64 = AtomicU64::new(0);

/// How many recently used texts [`RawLock::cached`] compares before it hashes.
const RECENT: usize = 8;

/// Values read from the schema of `main` by namespace and key, and a statement that tells
/// whether that schema may have changed since (see `RawLock::schema_unchanged`).
#[derive(Default)]
struct SchemaMemo {
    /// Declared first, so finalized while the handle is still locked.
    watch: Option<Statement>,
    /// The schema cookie and the watch's re-prepare count when `values` was last known current.
    seen: Option<(i64, c_int)>,
    values: HashMap<&'static str, HashMap<Box<str>, Box<dyn Any + Send>>>,
}

/// Values kept per namespace; more and that namespace starts over.
const SCHEMA_MEMO_MAX: usize = 256;

// SAFETY: the connection is opened by sqlx in SQLite's multi-thread mode, in which a connection
// may be used from any thread as long as no two threads use it at once. `RawLock` is only
// reachable through the pinned connection's lock (`slot::Lock`, one user at a time), and sqlx's
// worker makes no call on the connection while the handle lock is held. The handle lock itself
// is a `futures_intrusive` mutex guard, which may be released from any thread.
unsafe impl Send for RawLock {}

impl RawLock {
    /// Wraps a handle lock whose lifetime the caller erased.
    ///
    /// # Safety
    /// The connection that `handle` locks outlives the returned value, and no statement is run
    /// on it through sqlx (nor is it closed or returned to the pool) until the value is dropped.
    pub(crate) unsafe fn new(mut handle: LockedSqliteHandle<'static>) -> Self {
        let db = handle.as_raw_handle();
        RawLock {
            statements: Vec::new(),
            by_sql: FxHashMap::default(),
            recent: [usize::MAX; RECENT],
            next_recent: 0,
            schema: SchemaMemo::default(),
            db,
            // SAFETY: the handle is locked for us (the caller's promise).
            file: unsafe { is_file(db) },
            busy: None,
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            handouts: 0,
            _handle: handle,
        }
    }

    /// The locked connection's handle: valid, and used by nobody else, while `self` lives.
    /// Whoever gets it may change the connection's busy timeout, so the copy kept of it is
    /// dropped (see [`Self::db_same_settings`]), or replace the database (`sqlite3_deserialize`),
    /// so earlier [`DataVersion`]s stop being comparable.
    pub(crate) fn db(&mut self) -> NonNull<ffi::sqlite3> {
        self.busy = None;
        self.handouts += 1;
        self.db
    }

    /// The data version of the main database now (`SQLITE_FCNTL_DATA_VERSION`); `None` if
    /// SQLite does not answer it.
    pub(crate) fn data_version(&self) -> Option<DataVersion> {
        let mut version: c_uint = 0;
        // SAFETY: `self.db` is valid and locked for us; "main" is NUL-terminated; this file
        // control writes one unsigned int through the pointer, which is valid for the call.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                self.db.as_ptr(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_DATA_VERSION,
                (&raw mut version).cast(),
            )
        };
        (rc == ffi::SQLITE_OK).then(|| DataVersion::new(self.serial, self.handouts, version))
    }

    /// [`Self::db`] for a caller that changes none of the connection's settings (its busy
    /// timeout and busy handler in particular): the copy of the busy timeout stays.
    pub(crate) fn db_same_settings(&self) -> NonNull<ffi::sqlite3> {
        self.db
    }

    /// Whether the main database is a file (so taking its locks may wait for other
    /// connections), rather than in-memory or temporary.
    pub(crate) fn is_file(&self) -> bool {
        self.file
    }

    /// Whether the connection is in autocommit mode (no transaction open).
    pub(crate) fn autocommit(&self) -> bool {
        // SAFETY: as above.
        unsafe { ffi::sqlite3_get_autocommit(self.db.as_ptr()) != 0 }
    }

    /// Runs `sql` (one or more statements without parameters or results, such as transaction
    /// control), reporting errors as the sqlx path does: a single statement from the cache of
    /// prepared statements (`BEGIN`, `COMMIT` and the like run on every transaction), anything
    /// else with `sqlite3_exec`.
    pub(crate) fn exec(&mut self, sql: &str) -> Result<(), Error> {
        // `None` (not one statement, or a shared-cache lock met before anything ran) falls
        // through to `sqlite3_exec`, which runs or reports it.
        if let Some(result) = self.run_cached::<Value>(sql, &[], None, false) {
            return result.map(drop);
        }
        // Any of the statements may be a pragma.
        self.busy = None;
        // SAFETY: `self.db` is locked for us.
        unsafe { exec_once(self.db, sql) }
    }

    /// Runs `sql` like [`Self::exec`], but only if that needs no wait for another connection's
    /// lock: the busy timeout is 0 for the call (then restored), and `None` means SQLite
    /// answered `SQLITE_BUSY`, so the caller runs `sql` where waiting is fine. Nothing took
    /// effect then: a `BEGIN IMMEDIATE` that found the database locked opened no transaction,
    /// and a `COMMIT` that found readers left the transaction open, to be retried. Also `None`,
    /// without running anything, when the connection has no busy timeout: it may have a custom
    /// busy handler, which could wait.
    pub(crate) fn exec_without_waiting(&mut self, sql: &str) -> Option<Result<(), Error>> {
        let timeout = self.busy_timeout()?;
        let (result, busy) = self.without_waiting(timeout, |lock| {
            let result = lock.exec(sql);
            // SAFETY: `lock.db` is valid and locked for us; read before anything else can set
            // another error code.
            let code = unsafe { ffi::sqlite3_errcode(lock.db.as_ptr()) };
            (result, code & 0xff == ffi::SQLITE_BUSY)
        });
        match result {
            Err(_) if busy => None,
            result => Some(result),
        }
    }

    /// Runs `f` with the busy timeout set to zero, then puts back `timeout`, the timeout handler
    /// the connection had.
    fn without_waiting<R>(&mut self, timeout: c_int, f: impl FnOnce(&mut Self) -> R) -> R {
        // SAFETY: `self.db` is valid and locked for us.
        unsafe { ffi::sqlite3_busy_timeout(self.db.as_ptr(), 0) };
        let result = f(self);
        // SAFETY: as above.
        unsafe { ffi::sqlite3_busy_timeout(self.db.as_ptr(), timeout) };
        result
    }

    /// Runs `sql` for its effect and returns the rows it changed (`sqlite3_changes`, as sqlx
    /// reports it); `None` if the statement has to go through sqlx (nothing was run).
    pub(crate) fn execute<P: Param>(
        &mut self,
        sql: &str,
        params: &[P],
    ) -> Option<Result<u64, Error>> {
        self.run_inline(sql, params, None)
    }

    /// Runs `sql` and returns its rows; `None` if it has to go through sqlx (nothing was run).
    pub(crate) fn query<P: Param>(
        &mut self,
        sql: &str,
        params: &[P],
    ) -> Option<Result<Vec<Row>, Error>> {
        let mut rows = Vec::new();
        self.run_inline(sql, params, Some(&mut rows))
            .map(|run| run.map(|_| rows))
    }

    /// Runs the cached statement for `sql` inline, collecting its rows into `rows` if given;
    /// returns the changes, or `None` if it has to go through sqlx (nothing was run). A statement that could wait for another connection's lock ([`may_wait`]) must
    /// not wait here, on an async task: it runs with the busy timeout set to zero, and if the
    /// lock is taken (it then has done nothing, see [`Statement::run`]) it goes to sqlx, whose
    /// worker thread waits up to the timeout. Without a busy timeout (a custom busy handler,
    /// which could wait too) such a statement goes to sqlx at once.
    fn run_inline<P: Param>(
        &mut self,
        sql: &str,
        params: &[P],
        rows: Option<&mut Vec<Row>>,
    ) -> Option<Result<u64, Error>> {
        let run = |lock: &mut Self, busy_to_sqlx| lock.run_cached(sql, params, rows, busy_to_sqlx);
        // SAFETY: `self.db` is valid and locked for us.
        if self.file && unsafe { may_wait(self.db) } {
            // A pragma would read or set the busy timeout while it is zero: sqlx runs it.
            if self.cached(sql)?.pragma {
                return None;
            }
            let timeout = self.busy_timeout()?;
            self.without_waiting(timeout, |lock| run(lock, true))
        } else {
            run(self, false)
        }
    }

    /// Runs the cached statement for `sql` ([`Statement::run`]); `None` if there is none with
    /// `params.len()` parameters, or it did not run. After a pragma, the copy of the busy timeout
    /// is forgotten: the pragma may have set it.
    fn run_cached<P: Param>(
        &mut self,
        sql: &str,
        params: &[P],
        rows: Option<&mut Vec<Row>>,
        busy_to_sqlx: bool,
    ) -> Option<Result<u64, Error>> {
        let db = self.db;
        let statement = self.cached(sql).filter(|s| s.n_params == params.len())?;
        let pragma = statement.pragma;
        // SAFETY: `db` is locked for us and `statement` is one of its statements.
        let result = unsafe { statement.run(db, params, rows, busy_to_sqlx) };
        if pragma {
            self.busy = None;
        }
        result
    }

    /// The connection's busy timeout in milliseconds; `None` if it could not be read or is
    /// zero: no busy handler, or one set by `sqlite3_busy_handler` (which may wait).
    ///
    /// SQLite has no call that returns it, and `PRAGMA busy_timeout` is prepared anew on every
    /// run (SQLite expires every pragma statement once it has run), which costs more than a
    /// one-row transaction's own statements. So the value read is kept until something could
    /// have changed it: a pragma run through this lock ([`Statement::pragma`]), SQL run with
    /// `sqlite3_exec`, or the handle handed out ([`Self::db`]). Nothing else reaches the
    /// connection while the lock lives (sqlx's worker is locked out, and dropping the lock
    /// drops the copy).
    fn busy_timeout(&mut self) -> Option<c_int> {
        let timeout = match self.busy {
            Some(timeout) => timeout,
            None => {
                let stmt = self.cached("PRAGMA busy_timeout")?.stmt.as_ptr();
                // SAFETY: `stmt` is a live statement of `self.db`, which is locked for us. The
                // pragma touches no file.
                let timeout = c_int::try_from(unsafe { pragma_value(stmt) }?).ok()?;
                self.busy = Some(timeout);
                timeout
            }
        };
        Some(timeout).filter(|&t| t > 0)
    }

    /// What `read` returns for `key` in `namespace`: kept from an earlier call if the schema
    /// of `main` has not changed since, else read now (and kept if it is `Ok`).
    pub(crate) fn schema_memo<T, E>(
        &mut self,
        namespace: &'static str,
        key: &str,
        read: impl FnOnce(NonNull<ffi::sqlite3>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        T: Clone + Send + 'static,
    {
        let current = self.schema_unchanged();
        if current
            && let Some(value) = self
                .schema
                .values
                .get(namespace)
                .and_then(|values| values.get(key))
                .and_then(|value| value.downcast_ref::<T>())
        {
            return Ok(value.clone());
        }
        let value = read(self.db())?;
        if current {
            let values = self.schema.values.entry(namespace).or_default();
            if values.len() >= SCHEMA_MEMO_MAX {
                values.clear();
            }
            values.insert(key.into(), Box::new(value.clone()));
        }
        Ok(value)
    }

    /// Runs `f`, which does not change the schema but may expire the connection's statements
    /// (as `sqlite3changeset_apply` does, through a pragma), keeping the values of
    /// [`Self::schema_memo`] across it: they are kept if they were current before `f` and the
    /// schema cookie is the same after it. (What `f` must not do is what the cookie cannot
    /// tell: end a transaction in which the schema changed, and change it again.)
    pub(crate) fn keeping_schema<R>(&mut self, f: impl FnOnce(NonNull<ffi::sqlite3>) -> R) -> R {
        let before = if self.schema_unchanged() {
            self.schema.seen
        } else {
            None
        };
        // `f` is the caller's code with the handle.
        let result = f(self.db());
        if let Some((cookie, _)) = before {
            let after = self.watch_step();
            if after.is_some_and(|(now, _)| now == cookie) {
                // Only the re-prepare count moved: `f`'s expiry, which changed nothing.
                self.schema.seen = after;
            }
        }
        result
    }

    /// Whether the values kept in `self.schema` are still current; forgets them if not. Steps
    /// the watch statement, `PRAGMA main.schema_version`: the schema cookie it reads changes
    /// with every schema change committed by any connection, and SQLite re-prepares the
    /// statement (and counts it) after anything that expires this connection's statements,
    /// which includes its own schema changes and a rollback of them. (Also some harmless
    /// things: `sqlite3changeset_apply` sets a pragma that expires every statement, which
    /// [`Self::keeping_schema`] forgives.) `false` if that cannot be told.
    fn schema_unchanged(&mut self) -> bool {
        const WATCH: &str = "PRAGMA main.schema_version";
        let db = self.db;
        let memo = &mut self.schema;
        if memo.watch.is_none() {
            memo.values.clear();
            // SAFETY: `db` is valid and locked for us.
            memo.watch = unsafe { Statement::prepare(db, WATCH) };
            memo.seen = None;
        }
        let seen = self.watch_step();
        let memo = &mut self.schema;
        if seen.is_none() || seen != memo.seen {
            memo.values.clear();
        }
        memo.seen = seen;
        seen.is_some()
    }

    /// Steps the watch statement: the schema cookie and the statement's re-prepare count, or
    /// `None` if it cannot run.
    fn watch_step(&mut self) -> Option<(i64, c_int)> {
        let stmt = self.schema.watch.as_ref()?.stmt.as_ptr();
        // SAFETY: `stmt` is a live statement of `self.db`, which is locked for us.
        unsafe {
            let cookie = pragma_value(stmt)?;
            let reprepared = ffi::sqlite3_stmt_status(stmt, ffi::SQLITE_STMTSTATUS_REPREPARE, 0);
            Some((cookie, reprepared))
        }
    }

    /// The cached statement for `sql`, prepared on first use; `None` if `sql` is not exactly
    /// one statement with positional parameters only, or does not prepare.
    fn cached(&mut self, sql: &str) -> Option<&mut Statement> {
        let statements = &self.statements;
        let recent = self
            .recent
            .iter()
            .copied()
            .find(|&i| statements.get(i).is_some_and(|(text, _)| **text == *sql));
        let index = match recent {
            Some(index) => index,
            None => {
                let index = match self.by_sql.get(sql) {
                    Some(&index) => index,
                    None => self.prepare(sql),
                };
                self.recent[self.next_recent] = index;
                self.next_recent = (self.next_recent + 1) % RECENT;
                index
            }
        };
        self.statements.get_mut(index)?.1.as_mut()
    }

    /// Prepares `sql` into the cache (starting it over when full); returns its position.
    fn prepare(&mut self, sql: &str) -> usize {
        if self.statements.len() >= CACHE_MAX {
            self.by_sql.clear();
            self.statements.clear();
            self.recent = [usize::MAX; RECENT];
        }
        // SAFETY: `self.db` is valid and locked for us.
        let statement = unsafe { Statement::prepare(self.db, sql) };
        self.statements.push((sql.into(), statement));
        self.by_sql.insert(sql.into(), self.statements.len() - 1);
        self.statements.len() - 1
    }
}

/// Runs one statement with positional parameters on `db`, on the calling thread (which may wait
/// for locks), and returns its rows, with the conversions of the cached path; the statement is
/// prepared for this call and finalized after it.
///
/// # Safety
/// `db` is valid and used by nobody else for the call.
pub(crate) unsafe fn query_once<P: Param>(
    db: NonNull<ffi::sqlite3>,
    sql: &str,
    params: &[P],
) -> Result<Vec<Row>, Error> {
    // SAFETY: the caller's promise.
    let statement = unsafe { Statement::prepare(db, sql) };
    let Some(mut statement) = statement.filter(|s| s.n_params == params.len()) else {
        // SAFETY: the caller's promise; the message is that of the failed prepare, if any.
        let error = unsafe { db_error(db) };
        return Err(match error {
            Error::Database { code: Some(_), .. } => error,
            _ => Error::Database {
                dialect: DIALECT,
                code: None,
                message: format!(
                    "expected one statement with {} positional parameters: {sql}",
                    params.len()
                ),
            },
        });
    };
    // SAFETY: the caller's promise; `statement` is one of `db`'s statements. Not `None`: no
    // busy hand-off was asked for, and `db` is not another connection's shared cache.
    let mut rows = Vec::new();
    // SAFETY: the caller's promise; `statement` is one of `db`'s statements. Not `None`: no
    // busy hand-off was asked for, and `db` is not another connection's shared cache.
    unsafe { statement.run(db, params, Some(&mut rows), false) }
        .unwrap_or_else(|| {
            // SAFETY: as above.
            Err(unsafe { db_error(db) })
        })
        .map(|_| rows)
}

/// Runs `sql` (statements without parameters) on `db` with `sqlite3_exec`.
///
/// # Safety
/// `db` is valid and used by nobody else for the call.
pub(crate) unsafe fn exec_once(db: NonNull<ffi::sqlite3>, sql: &str) -> Result<(), Error> {
    let sql = std::ffi::CString::new(sql).map_err(|_| Error::Database {
        dialect: DIALECT,
        code: None,
        message: "SQL contains a NUL byte".to_owned(),
    })?;
    // SAFETY: the caller's promise; no callback, no error-message out-pointer.
    let rc = unsafe {
        ffi::sqlite3_exec(
            db.as_ptr(),
            sql.as_ptr(),
            None,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        // SAFETY: as above.
        Err(unsafe { db_error(db) })
    }
}

/// Whether a statement on `db`, whose main database is a file, could have to wait for another
/// connection's lock (and so must not run on an async task): unless a write transaction is
/// open, any statement may, since taking a lock may wait up to the busy timeout. (In-memory
/// databases have no file locks; a shared-cache one reports `SQLITE_LOCKED`, handled in
/// `Statement::run`.)
///
/// # Safety
/// `db` is valid and locked.
unsafe fn may_wait(db: NonNull<ffi::sqlite3>) -> bool {
    // SAFETY: the caller's promise; a NULL schema asks for the highest state of all schemas.
    unsafe { ffi::sqlite3_txn_state(db.as_ptr(), ptr::null()) != ffi::SQLITE_TXN_WRITE }
}

/// Steps `stmt`, a pragma that returns one integer, and resets it; `None` if it returned no row.
///
/// # Safety
/// `stmt` is a live statement whose connection is locked for us.
unsafe fn pragma_value(stmt: *mut ffi::sqlite3_stmt) -> Option<i64> {
    // SAFETY: the caller's promise; the statement is reset before anything else runs.
    unsafe {
        let row = ffi::sqlite3_step(stmt) == ffi::SQLITE_ROW;
        let value = ffi::sqlite3_column_int64(stmt, 0);
        ffi::sqlite3_reset(stmt);
        row.then_some(value)
    }
}

/// Whether `sql` starts with the keyword `PRAGMA`, after any whitespace and comments.
fn is_pragma(sql: &str) -> bool {
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    rest.get(..6)
        .is_some_and(|word| word.eq_ignore_ascii_case("pragma"))
        && !rest[6..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Whether `main` of `db` is a file database.
///
/// # Safety
/// `db` is valid and locked.
unsafe fn is_file(db: NonNull<ffi::sqlite3>) -> bool {
    // SAFETY: the caller's promise; `main` always exists. An in-memory or temp database has an
    // empty name.
    let file = unsafe { ffi::sqlite3_db_filename(db.as_ptr(), c"main".as_ptr()) };
    // SAFETY: a non-NULL file name is a NUL-terminated string owned by the connection.
    !(file.is_null() || unsafe { *file } == 0)
}

/// One prepared statement of the cache.
struct Statement {
    stmt: NonNull<ffi::sqlite3_stmt>,
    n_params: usize,
    /// Whether it is a `PRAGMA`, which may change the busy timeout (see
    /// [`RawLock::busy_timeout`]).
    pragma: bool,
    /// The result column names, shared by the rows of every run, with the statement's
    /// re-prepare count when they were read: SQLite sets a statement's column names when it
    /// prepares it, so they stay valid until it is prepared again (after a schema change).
    columns: Option<(c_int, Arc<[String]>)>,
}

impl Statement {
    /// Prepares `sql`; `None` if it cannot run inline: it does not compile (sqlx reports the
    /// error), holds more than one statement, has none, or uses named or numbered parameters.
    ///
    /// # Safety
    /// `db` is valid and locked.
    unsafe fn prepare(db: NonNull<ffi::sqlite3>, sql: &str) -> Option<Statement> {
        let len = c_int::try_from(sql.len()).ok()?;
        let mut stmt = ptr::null_mut();
        let mut tail: *const c_char = ptr::null();
        // SAFETY: `db` is valid and locked (the caller's promise); `sql` is `len` bytes.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db.as_ptr(),
                sql.as_ptr().cast(),
                len,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                &mut tail,
            )
        };
        let statement = Statement {
            stmt: NonNull::new(stmt)?,
            n_params: 0,
            pragma: is_pragma(sql),
            columns: None,
        };
        if rc != ffi::SQLITE_OK || tail.is_null() {
            return None;
        }
        // SAFETY: `tail` points into `sql`, at or after its start.
        let consumed = usize::try_from(unsafe { tail.offset_from(sql.as_ptr().cast()) }).ok()?;
        if !sql.get(consumed..)?.trim().is_empty() {
            return None;
        }
        // SAFETY: `stmt` is a live statement of `db`.
        let n = unsafe { ffi::sqlite3_bind_parameter_count(statement.stmt.as_ptr()) };
        for i in 1..=n {
            // SAFETY: as above; `i` is a valid parameter index.
            if !unsafe { ffi::sqlite3_bind_parameter_name(statement.stmt.as_ptr(), i) }.is_null() {
                return None;
            }
        }
        let mut statement = statement;
        statement.n_params = usize::try_from(n).ok()?;
        Some(statement)
    }

    /// Binds `params`, steps to the end and resets. Returns the changes, and collects the rows
    /// into `rows` if given; `None` if the statement met a shared-cache lock before doing anything, or (when
    /// `busy_to_sqlx`) a file lock held by another connection, so that sqlx (which waits for the
    /// unlock) runs it instead.
    ///
    /// A file lock is only ever taken at the first step: reading or writing starts by taking
    /// it, and an autocommit statement that cannot commit for a lock is rolled back whole.
    /// (A page cache spill that cannot get its lock is not an error: the cache grows instead.)
    ///
    /// # Safety
    /// `db` is valid and locked, and owns this statement.
    unsafe fn run<P: Param>(
        &mut self,
        db: NonNull<ffi::sqlite3>,
        params: &[P],
        rows: Option<&mut Vec<Row>>,
        busy_to_sqlx: bool,
    ) -> Option<Result<u64, Error>> {
        /// Resets the statement when `run` returns or unwinds, so that no step is left half-way,
        /// and (`clear`) clears its bindings, so that SQLite holds no pointer into `params`
        /// afterwards. Without text or blob parameters there is no such pointer, and the next
        /// run binds every parameter again (`prepare` checked their count), so the bound
        /// numbers can stay.
        struct Reset(*mut ffi::sqlite3_stmt, bool);
        impl Drop for Reset {
            fn drop(&mut self) {
                // SAFETY: `run`'s caller's promise: the statement is live and its connection
                // locked for us.
                unsafe {
                    ffi::sqlite3_reset(self.0);
                    if self.1 {
                        ffi::sqlite3_clear_bindings(self.0);
                    }
                }
            }
        }
        // Binding sets `clear` when it binds text or a blob.
        let mut reset = Reset(self.stmt.as_ptr(), false);
        // SAFETY: the caller's promise.
        unsafe { self.bind_and_step(db, params, rows, busy_to_sqlx, &mut reset.1) }
    }

    /// Binds, steps and reads as [`Self::run`] says; sets `borrows` once it has bound text or
    /// a blob (then the bindings point into `params`).
    ///
    /// # Safety
    /// As [`Self::run`].
    unsafe fn bind_and_step<P: Param>(
        &mut self,
        db: NonNull<ffi::sqlite3>,
        params: &[P],
        mut rows: Option<&mut Vec<Row>>,
        busy_to_sqlx: bool,
        borrows: &mut bool,
    ) -> Option<Result<u64, Error>> {
        let stmt = self.stmt.as_ptr();
        for (i, param) in params.iter().enumerate() {
            // `prepare` checked that the statement has `params.len()` parameters, a c_int.
            let index = c_int::try_from(i + 1).unwrap_or(c_int::MAX);
            // SAFETY: the caller's promise. Text and blobs are bound without a copy
            // (SQLITE_STATIC): `params` outlives `run`, which clears the bindings before it
            // returns. An empty one is copied, so that SQLite never keeps a dangling pointer.
            let rc = unsafe {
                match param.value() {
                    ValueRef::Null => ffi::sqlite3_bind_null(stmt, index),
                    ValueRef::Integer(v) => ffi::sqlite3_bind_int64(stmt, index, v),
                    ValueRef::Real(v) => ffi::sqlite3_bind_double(stmt, index, v),
                    ValueRef::Text(v) => {
                        *borrows = true;
                        ffi::sqlite3_bind_text64(
                            stmt,
                            index,
                            v.as_ptr().cast(),
                            v.len() as u64,
                            borrowed(v.len()),
                            UTF8,
                        )
                    }
                    ValueRef::Blob(v) => {
                        *borrows = true;
                        ffi::sqlite3_bind_blob64(
                            stmt,
                            index,
                            v.as_ptr().cast(),
                            v.len() as u64,
                            borrowed(v.len()),
                        )
                    }
                }
            };
            if rc != ffi::SQLITE_OK {
                // SAFETY: the caller's promise.
                return Some(Err(unsafe { db_error(db) }));
            }
        }
        let mut columns: Option<Arc<[String]>> = None;
        // sqlx decodes rows after the statement has run to its end; so does this.
        let mut decode_error = None;
        let mut first = true;
        loop {
            // SAFETY: the caller's promise.
            let rc = unsafe { ffi::sqlite3_step(stmt) };
            match rc {
                ffi::SQLITE_ROW if rows.is_some() => {
                    // SAFETY: the statement is on a row.
                    let columns = columns.get_or_insert_with(|| unsafe { self.column_names() });
                    // SAFETY: as above.
                    match unsafe { read_row(stmt, columns.len()) } {
                        Ok(values) => {
                            if let Some(rows) = rows.as_deref_mut() {
                                rows.push(Row::new(Arc::clone(columns), values));
                            }
                        }
                        Err(err) => {
                            decode_error.get_or_insert(err);
                        }
                    }
                }
                ffi::SQLITE_ROW => {}
                ffi::SQLITE_DONE => break,
                rc if first && rc & 0xff == ffi::SQLITE_LOCKED => return None,
                rc if first && busy_to_sqlx && rc & 0xff == ffi::SQLITE_BUSY => return None,
                _ => {
                    // SAFETY: the caller's promise.
                    return Some(Err(unsafe { db_error(db) }));
                }
            }
            first = false;
        }
        if let Some(err) = decode_error {
            return Some(Err(err));
        }
        // SAFETY: the caller's promise. sqlx reports `sqlite3_changes` after the statement.
        let changes = unsafe { ffi::sqlite3_changes(db.as_ptr()) };
        Some(Ok(u64::try_from(changes).unwrap_or(0)))
    }
}

impl Statement {
    /// The result column names, kept from an earlier run unless the statement was prepared
    /// again since.
    ///
    /// # Safety
    /// The statement is live, on a row, and its connection locked for us.
    unsafe fn column_names(&mut self) -> Arc<[String]> {
        let stmt = self.stmt.as_ptr();
        // SAFETY: the caller's promise.
        let prepared =
            unsafe { ffi::sqlite3_stmt_status(stmt, ffi::SQLITE_STMTSTATUS_REPREPARE, 0) };
        if let Some((seen, names)) = &self.columns
            && *seen == prepared
        {
            return Arc::clone(names);
        }
        // SAFETY: the caller's promise.
        let names = unsafe { column_names(stmt) };
        self.columns = Some((prepared, Arc::clone(&names)));
        names
    }
}

/// The destructor to bind `len` bytes that outlive the statement's use of them with: none
/// (SQLITE_STATIC), or for an empty value, whose pointer may dangle, a copy (SQLITE_TRANSIENT).
fn borrowed(len: usize) -> ffi::sqlite3_destructor_type {
    if len == 0 {
        ffi::SQLITE_TRANSIENT()
    } else {
        ffi::SQLITE_STATIC()
    }
}

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: statements only live inside a `RawLock`, whose handle is still locked while
        // they drop; each is finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// The error on `db` as the sqlx path reports it: the extended code as text, and the message.
///
/// # Safety
/// `db` is valid and locked.
unsafe fn db_error(db: NonNull<ffi::sqlite3>) -> Error {
    // SAFETY: the caller's promise; `sqlite3_errmsg` returns a NUL-terminated string.
    let (code, message) = unsafe {
        (
            ffi::sqlite3_extended_errcode(db.as_ptr()),
            CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr()))
                .to_string_lossy()
                .into_owned(),
        )
    };
    Error::Database {
        dialect: DIALECT,
        code: Some(liteorm_core::SqliteCode(code)),
        message,
    }
}

/// The result column names of `stmt`.
///
/// # Safety
/// `stmt` is a live statement, on a row.
unsafe fn column_names(stmt: *mut ffi::sqlite3_stmt) -> Arc<[String]> {
    // SAFETY: the caller's promise.
    let n = unsafe { ffi::sqlite3_column_count(stmt) };
    (0..n)
        .map(|i| {
            // SAFETY: `i` is a column index; a name is NUL-terminated (NULL only when out of
            // memory, which sqlx would treat as an empty name).
            let name = unsafe { ffi::sqlite3_column_name(stmt, i) };
            if name.is_null() {
                String::new()
            } else {
                // SAFETY: as above.
                unsafe { CStr::from_ptr(name) }
                    .to_string_lossy()
                    .into_owned()
            }
        })
        .collect()
}

/// The values of the current row, each by its own storage class (as the sqlx path reads them).
///
/// # Safety
/// `stmt` is a live statement, on a row with `n` columns.
unsafe fn read_row(stmt: *mut ffi::sqlite3_stmt, n: usize) -> Result<Vec<Value>, Error> {
    (0..n)
        .map(|i| {
            // `n` came from `sqlite3_column_count`, a c_int.
            let col = c_int::try_from(i).unwrap_or(c_int::MAX);
            // SAFETY: the caller's promise; `col` is a column index. Text and blob pointers are
            // valid until the next step, and copied at once.
            unsafe {
                Ok(match ffi::sqlite3_column_type(stmt, col) {
                    ffi::SQLITE_NULL => Value::Null,
                    ffi::SQLITE_INTEGER => Value::Integer(ffi::sqlite3_column_int64(stmt, col)),
                    ffi::SQLITE_FLOAT => Value::Real(ffi::sqlite3_column_double(stmt, col)),
                    ffi::SQLITE_TEXT => {
                        let bytes = column_bytes(stmt, col, ffi::sqlite3_column_text(stmt, col));
                        match std::str::from_utf8(bytes) {
                            Ok(text) => Value::Text(text.to_owned()),
                            Err(err) => {
                                return Err(Error::Driver(Box::new(sqlx::Error::ColumnDecode {
                                    index: format!("{i:?}"),
                                    source: Box::new(err),
                                })));
                            }
                        }
                    }
                    _ => Value::Blob(
                        column_bytes(stmt, col, ffi::sqlite3_column_blob(stmt, col).cast())
                            .to_vec(),
                    ),
                })
            }
        })
        .collect()
}

/// The bytes of a text or blob column whose pointer SQLite just returned.
///
/// # Safety
/// `data` is that pointer for column `col` of `stmt`, and the slice is used before the next step.
unsafe fn column_bytes<'a>(stmt: *mut ffi::sqlite3_stmt, col: c_int, data: *const u8) -> &'a [u8] {
    // SAFETY: the caller's promise; the length is read after the pointer, as SQLite asks.
    let len = usize::try_from(unsafe { ffi::sqlite3_column_bytes(stmt, col) }).unwrap_or(0);
    if data.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: SQLite returned `len` bytes at `data`, valid until the next step.
    unsafe { std::slice::from_raw_parts(data, len) }
}
