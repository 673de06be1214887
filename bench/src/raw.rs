//! Thin synchronous wrappers over the raw SQLite C API (connections, statements, sessions,
//! changesets) for the baseline: no sqlx, no async, one connection per database.
//!
//! They use the same libsqlite3-sys (and so the same linked SQLite) as liteorm. Every `unsafe` call lives in this module.

use std::ffi::{CStr, CString, c_int, c_void};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use libsqlite3_sys as ffi;
use tempfile::TempDir;

use crate::common::{BenchResult, DbMode, RowData};

/// An error from a raw SQLite call: the result code, SQLite's message and what was being done.
pub(crate) fn sqlite_error(
    rc: c_int,
    message: String,
    context: &str,
) -> Box<dyn std::error::Error> {
    format!("{context}: {message} (SQLite code {rc})").into()
}

/// The English text SQLite has for `rc`.
fn errstr(rc: c_int) -> String {
    // SAFETY: sqlite3_errstr accepts any code and returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::sqlite3_errstr(rc)) }
        .to_string_lossy()
        .into_owned()
}

/// The version of the SQLite library linked into this process.
pub(crate) fn libversion() -> String {
    // SAFETY: sqlite3_libversion returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::sqlite3_libversion()) }
        .to_string_lossy()
        .into_owned()
}

/// The compile-time options of the SQLite library linked into this process
/// (`PRAGMA compile_options`), comma-separated in SQLite's order.
pub(crate) fn compile_options() -> BenchResult<String> {
    let db = Db::open(DbMode::Mem)?;
    let mut stmt = db.handle().prepare("PRAGMA compile_options")?;
    let mut options = Vec::new();
    while stmt.step()? {
        match stmt.column(0) {
            ValueRef::Text(option) => options.push(String::from_utf8_lossy(option).into_owned()),
            other => return Err(format!("compile_options: {other:?}").into()),
        }
    }
    Ok(options.join(","))
}

/// A borrowed, valid connection handle: from an owned [`Db`], or from liteorm's
/// `PinnedGuard::with_raw` for the untimed setup and checks on liteorm's databases.
#[derive(Clone, Copy)]
pub(crate) struct Handle<'a> {
    ptr: NonNull<ffi::sqlite3>,
    _life: PhantomData<&'a ()>,
}

/// Runs `f` on the raw handle of a Diesel connection (untimed setup and checks of the `diesel`
/// workload).
pub(crate) fn with_diesel_handle<R>(
    conn: &mut diesel::SqliteConnection,
    f: impl for<'h> FnOnce(Handle<'h>) -> BenchResult<R>,
) -> BenchResult<R> {
    // SAFETY: Diesel lends the pointer of the connection borrowed mutably here for the duration
    // of the closure (nobody else uses or closes it meanwhile), and the `Handle` stays inside.
    unsafe {
        conn.with_raw_connection(|db| {
            let db = NonNull::new(db).ok_or("Diesel lent a NULL connection")?;
            // SAFETY: as above.
            f(Handle::from_raw(db))
        })
    }
}

impl<'a> Handle<'a> {
    /// Wraps a handle that someone else keeps valid.
    ///
    /// # Safety
    /// `ptr` is an open connection that no other thread uses for as long as the handle lives.
    pub(crate) unsafe fn from_raw(ptr: NonNull<ffi::sqlite3>) -> Self {
        Handle {
            ptr,
            _life: PhantomData,
        }
    }

    fn error(&self, rc: c_int, context: &str) -> Box<dyn std::error::Error> {
        // SAFETY: the handle is valid (type invariant); errmsg returns a string owned by the
        // connection, copied at once.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.ptr.as_ptr())) }
            .to_string_lossy()
            .into_owned();
        sqlite_error(rc, message, context)
    }

    /// Runs one or more statements without parameters.
    pub(crate) fn exec(&self, sql: &str) -> BenchResult<()> {
        let sql = CString::new(sql)?;
        // SAFETY: the handle is valid; `sql` is NUL-terminated; no callback, no error out-param.
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.ptr.as_ptr(),
                sql.as_ptr(),
                None,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error(rc, "sqlite3_exec"))
        }
    }

    /// Compiles one statement.
    pub(crate) fn prepare(&self, sql: &str) -> BenchResult<Stmt<'a>> {
        let sql = CString::new(sql)?;
        let mut stmt = ptr::null_mut();
        // SAFETY: the handle is valid; `sql` is NUL-terminated (-1: read up to the NUL).
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                self.ptr.as_ptr(),
                sql.as_ptr(),
                -1,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc, "sqlite3_prepare_v2"));
        }
        let ptr = NonNull::new(stmt).ok_or("sqlite3_prepare_v2: empty statement")?;
        Ok(Stmt { ptr, db: *self })
    }

    /// Creates a session object on `main` with `table` attached.
    pub(crate) fn session(&self, table: &str) -> BenchResult<Session<'a>> {
        let mut session = ptr::null_mut();
        // SAFETY: the handle is valid; "main" is NUL-terminated; `session` is an out-pointer.
        let rc = unsafe {
            ffi::sqlite3session_create(self.ptr.as_ptr(), c"main".as_ptr(), &mut session)
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc, "sqlite3session_create"));
        }
        let ptr = NonNull::new(session).ok_or("sqlite3session_create returned NULL")?;
        let session = Session {
            ptr,
            _db: PhantomData,
        };
        let table = CString::new(table)?;
        // SAFETY: the session is live; `table` is NUL-terminated and outlives the call.
        let rc = unsafe { ffi::sqlite3session_attach(session.ptr.as_ptr(), table.as_ptr()) };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(rc, errstr(rc), "sqlite3session_attach"));
        }
        Ok(session)
    }

    /// `sqlite3changeset_apply` with no table filter and `handler` as the conflict handler;
    /// `ctx` is what the handler receives (here: a counter).
    pub(crate) fn apply(
        &self,
        changeset: &[u8],
        handler: ConflictHandler,
        calls: &mut u64,
    ) -> BenchResult<()> {
        let len = c_int::try_from(changeset.len())?;
        // SAFETY: the handle is valid; the blob outlives the call and SQLite only reads it
        // (the C API lacks `const`); `calls` is a live `u64` for the whole call, and `handler`
        // treats its context as exactly that.
        let rc = unsafe {
            ffi::sqlite3changeset_apply(
                self.ptr.as_ptr(),
                len,
                changeset.as_ptr().cast_mut().cast(),
                None,
                Some(handler),
                ptr::from_mut(calls).cast(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error(rc, "sqlite3changeset_apply"))
        }
    }
}

/// A conflict handler as `sqlite3changeset_apply` takes it; its context is a `*mut u64`.
pub(crate) type ConflictHandler =
    unsafe extern "C" fn(*mut c_void, c_int, *mut ffi::sqlite3_changeset_iter) -> c_int;

/// Counts its calls and aborts the apply (the `apply` workload expects no conflict at all).
pub(crate) unsafe extern "C" fn abort_counting(
    ctx: *mut c_void,
    _kind: c_int,
    _iter: *mut ffi::sqlite3_changeset_iter,
) -> c_int {
    // SAFETY: `Handle::apply` passes a live, unaliased `*mut u64` as the context.
    unsafe { *ctx.cast::<u64>() += 1 };
    ffi::SQLITE_CHANGESET_ABORT
}

/// Counts its calls; omits DATA conflicts and aborts on anything else.
pub(crate) unsafe extern "C" fn omit_data_counting(
    ctx: *mut c_void,
    kind: c_int,
    _iter: *mut ffi::sqlite3_changeset_iter,
) -> c_int {
    // SAFETY: `Handle::apply` passes a live, unaliased `*mut u64` as the context.
    unsafe { *ctx.cast::<u64>() += 1 };
    if kind == ffi::SQLITE_CHANGESET_DATA {
        ffi::SQLITE_CHANGESET_OMIT
    } else {
        ffi::SQLITE_CHANGESET_ABORT
    }
}

/// An owned connection (`sqlite3_open_v2`), closed on drop; for `--db file`, the temp directory
/// that holds the database file (and its WAL), removed after the connection is closed.
pub(crate) struct Db {
    ptr: NonNull<ffi::sqlite3>,
    _dir: Option<TempDir>,
}

// SAFETY: the connection is opened with SQLITE_OPEN_NOMUTEX, which only forbids *concurrent*
// use; `Db` is used by one thread at a time (`&mut`/ownership), so moving it is fine.
unsafe impl Send for Db {}

impl Db {
    /// Opens a private in-memory database (`mem`) or a new file in a temp directory with WAL and
    /// `synchronous=NORMAL` (`file`). `foreign_keys` stays at SQLite's default (OFF).
    pub(crate) fn open(mode: DbMode) -> BenchResult<Db> {
        let (name, dir) = match mode {
            DbMode::Mem => (":memory:".to_owned(), None),
            DbMode::File => {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("bench.db");
                let path = path.to_str().ok_or("temp path is not UTF-8")?.to_owned();
                (path, Some(dir))
            }
        };
        let cname = CString::new(name)?;
        let mut db = ptr::null_mut();
        let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE | ffi::SQLITE_OPEN_NOMUTEX;
        // SAFETY: `cname` is NUL-terminated; `db` is an out-pointer; default VFS.
        let rc = unsafe { ffi::sqlite3_open_v2(cname.as_ptr(), &mut db, flags, ptr::null()) };
        let Some(ptr) = NonNull::new(db) else {
            return Err(sqlite_error(rc, errstr(rc), "sqlite3_open_v2"));
        };
        let db = Db { ptr, _dir: dir };
        if rc != ffi::SQLITE_OK {
            return Err(db.handle().error(rc, "sqlite3_open_v2"));
        }
        if mode == DbMode::File {
            db.handle()
                .exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")?;
        }
        Ok(db)
    }

    /// The connection, borrowed.
    pub(crate) fn handle(&self) -> Handle<'_> {
        // SAFETY: `self.ptr` is open until `Drop`, and `&self` keeps it from being dropped.
        unsafe { Handle::from_raw(self.ptr) }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // SAFETY: the connection is open and not used after this; no statement or session is
        // left on it (`Stmt` and `Session` borrow the `Db`, so they are gone already).
        unsafe { ffi::sqlite3_close(self.ptr.as_ptr()) };
    }
}

/// A prepared statement, finalized on drop.
pub(crate) struct Stmt<'a> {
    ptr: NonNull<ffi::sqlite3_stmt>,
    db: Handle<'a>,
}

impl Stmt<'_> {
    fn check(&self, rc: c_int, context: &str) -> BenchResult<()> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.db.error(rc, context))
        }
    }

    /// Binds an integer to parameter `i` (1-based).
    pub(crate) fn bind_i64(&mut self, i: c_int, value: i64) -> BenchResult<()> {
        // SAFETY: the statement is live.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.ptr.as_ptr(), i, value) };
        self.check(rc, "sqlite3_bind_int64")
    }

    /// Binds a float to parameter `i`.
    pub(crate) fn bind_f64(&mut self, i: c_int, value: f64) -> BenchResult<()> {
        // SAFETY: the statement is live.
        let rc = unsafe { ffi::sqlite3_bind_double(self.ptr.as_ptr(), i, value) };
        self.check(rc, "sqlite3_bind_double")
    }

    /// Binds text to parameter `i` (SQLite copies it).
    pub(crate) fn bind_text(&mut self, i: c_int, value: &str) -> BenchResult<()> {
        let len = c_int::try_from(value.len())?;
        // SAFETY: the statement is live; `value` is valid for `len` bytes during the call and
        // SQLITE_TRANSIENT makes SQLite copy it.
        let rc = unsafe {
            ffi::sqlite3_bind_text(
                self.ptr.as_ptr(),
                i,
                value.as_ptr().cast(),
                len,
                ffi::SQLITE_TRANSIENT(),
            )
        };
        self.check(rc, "sqlite3_bind_text")
    }

    /// Binds a blob to parameter `i` (SQLite copies it).
    pub(crate) fn bind_blob(&mut self, i: c_int, value: &[u8]) -> BenchResult<()> {
        let len = c_int::try_from(value.len())?;
        // SAFETY: the statement is live; `value` is valid for `len` bytes during the call and
        // SQLITE_TRANSIENT makes SQLite copy it.
        let rc = unsafe {
            ffi::sqlite3_bind_blob(
                self.ptr.as_ptr(),
                i,
                value.as_ptr().cast(),
                len,
                ffi::SQLITE_TRANSIENT(),
            )
        };
        self.check(rc, "sqlite3_bind_blob")
    }

    /// Binds the five columns of `row` to parameters 1..=5.
    pub(crate) fn bind_row(&mut self, row: &RowData) -> BenchResult<()> {
        self.bind_i64(1, row.id)?;
        self.bind_text(2, &row.a)?;
        self.bind_i64(3, row.b)?;
        self.bind_f64(4, row.c)?;
        self.bind_blob(5, &row.d)
    }

    /// One step: `true` for a row, `false` when done.
    pub(crate) fn step(&mut self) -> BenchResult<bool> {
        // SAFETY: the statement is live; its connection is valid and used by this thread only.
        match unsafe { ffi::sqlite3_step(self.ptr.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(self.db.error(rc, "sqlite3_step")),
        }
    }

    /// Resets the statement for the next execution (bindings stay).
    pub(crate) fn reset(&mut self) -> BenchResult<()> {
        // SAFETY: the statement is live.
        let rc = unsafe { ffi::sqlite3_reset(self.ptr.as_ptr()) };
        self.check(rc, "sqlite3_reset")
    }

    /// Steps a statement that returns no row, then resets it.
    pub(crate) fn run(&mut self) -> BenchResult<()> {
        if self.step()? {
            return Err("statement returned a row".into());
        }
        self.reset()
    }

    /// Column `i` of the current row as a borrowed value.
    pub(crate) fn column(&self, i: c_int) -> ValueRef<'_> {
        // SAFETY: the statement is live and positioned on a row (callers only read after
        // `step` returned `true`); text/blob pointers are read before their byte count, as the
        // SQLite docs prescribe, and stay valid until the next step/reset (tied to `&self`).
        unsafe {
            let stmt = self.ptr.as_ptr();
            match ffi::sqlite3_column_type(stmt, i) {
                ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_column_int64(stmt, i)),
                ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_column_double(stmt, i)),
                ffi::SQLITE_TEXT => {
                    let p = ffi::sqlite3_column_text(stmt, i);
                    let n = usize::try_from(ffi::sqlite3_column_bytes(stmt, i)).unwrap_or(0);
                    ValueRef::Text(bytes_at(p, n))
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_column_blob(stmt, i).cast::<u8>();
                    let n = usize::try_from(ffi::sqlite3_column_bytes(stmt, i)).unwrap_or(0);
                    ValueRef::Blob(bytes_at(p, n))
                }
                _ => ValueRef::Null,
            }
        }
    }
}

impl Drop for Stmt<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and not used after this.
        unsafe { ffi::sqlite3_finalize(self.ptr.as_ptr()) };
    }
}

/// `n` bytes at `p` (empty for NULL).
///
/// # Safety
/// `p` is NULL or valid for `n` bytes for `'a`.
unsafe fn bytes_at<'a>(p: *const u8, n: usize) -> &'a [u8] {
    if p.is_null() || n == 0 {
        return &[];
    }
    // SAFETY: the caller guarantees `p` is valid for `n` bytes.
    unsafe { std::slice::from_raw_parts(p, n) }
}

/// A value read from SQLite (text as raw bytes, as stored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ValueRef<'a> {
    /// NULL (or a column the change does not record).
    Null,
    /// An integer.
    Integer(i64),
    /// A float.
    Real(f64),
    /// Text bytes.
    Text(&'a [u8]),
    /// Blob bytes.
    Blob(&'a [u8]),
}

/// A session object, deleted on drop.
pub(crate) struct Session<'a> {
    ptr: NonNull<ffi::sqlite3_session>,
    _db: PhantomData<Handle<'a>>,
}

type Generate =
    unsafe extern "C" fn(*mut ffi::sqlite3_session, *mut c_int, *mut *mut c_void) -> c_int;

impl Session<'_> {
    fn generate(&self, generate: Generate, context: &str) -> BenchResult<Vec<u8>> {
        let (mut len, mut buf) = (0, ptr::null_mut());
        // SAFETY: the session is live and its connection used by this thread only; the
        // out-pointers are valid.
        let rc = unsafe { generate(self.ptr.as_ptr(), &mut len, &mut buf) };
        if rc != ffi::SQLITE_OK {
            // SAFETY: on error `buf` is NULL or a buffer we own; sqlite3_free accepts NULL.
            unsafe { ffi::sqlite3_free(buf) };
            return Err(sqlite_error(rc, errstr(rc), context));
        }
        // SAFETY: on success `buf` holds `len` bytes from sqlite3_malloc (or is NULL for none).
        Ok(unsafe { take_buffer(len, buf) })
    }

    /// `sqlite3session_changeset`.
    pub(crate) fn changeset(&self) -> BenchResult<Vec<u8>> {
        self.generate(ffi::sqlite3session_changeset, "sqlite3session_changeset")
    }

    /// `sqlite3session_patchset`.
    pub(crate) fn patchset(&self) -> BenchResult<Vec<u8>> {
        self.generate(ffi::sqlite3session_patchset, "sqlite3session_patchset")
    }

    /// `sqlite3session_changeset` and the size of the result, whose buffer is freed at once
    /// (the `small` workload's per-transaction cycle does not keep the bytes).
    pub(crate) fn changeset_len_and_free(&self) -> BenchResult<usize> {
        let (mut len, mut buf) = (0, ptr::null_mut());
        // SAFETY: as in `generate`.
        let rc = unsafe { ffi::sqlite3session_changeset(self.ptr.as_ptr(), &mut len, &mut buf) };
        // SAFETY: `buf` is NULL or a buffer from sqlite3_malloc that we own.
        unsafe { ffi::sqlite3_free(buf) };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(rc, errstr(rc), "sqlite3session_changeset"));
        }
        Ok(usize::try_from(len)?)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // SAFETY: the session is live, its connection still open (the borrow), and it is not
        // used after this.
        unsafe { ffi::sqlite3session_delete(self.ptr.as_ptr()) };
    }
}

/// Copies a buffer from `sqlite3_malloc` into a `Vec` and frees it.
///
/// # Safety
/// `buf` is NULL or points to `len` bytes from `sqlite3_malloc`, owned by the caller.
unsafe fn take_buffer(len: c_int, buf: *mut c_void) -> Vec<u8> {
    let n = usize::try_from(len).unwrap_or(0);
    // SAFETY: the caller's promise.
    let bytes = unsafe { bytes_at(buf.cast::<u8>(), n) }.to_vec();
    // SAFETY: `buf` came from sqlite3_malloc (or is NULL) and is not used again.
    unsafe { ffi::sqlite3_free(buf) };
    bytes
}

/// `sqlite3changeset_invert`.
pub(crate) fn invert(changeset: &[u8]) -> BenchResult<Vec<u8>> {
    let (mut len, mut buf) = (0, ptr::null_mut());
    let n = c_int::try_from(changeset.len())?;
    // SAFETY: the input is valid for `n` bytes and only read; the out-pointers are valid.
    let rc =
        unsafe { ffi::sqlite3changeset_invert(n, changeset.as_ptr().cast(), &mut len, &mut buf) };
    if rc != ffi::SQLITE_OK {
        // SAFETY: on error `buf` is NULL or ours to free.
        unsafe { ffi::sqlite3_free(buf) };
        return Err(sqlite_error(rc, errstr(rc), "sqlite3changeset_invert"));
    }
    // SAFETY: on success `buf` holds `len` bytes from sqlite3_malloc.
    Ok(unsafe { take_buffer(len, buf) })
}

/// The op of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
}

/// An iterator over the changes of a changeset blob (`sqlite3changeset_start`/`next`).
pub(crate) struct ChangesetIter<'a> {
    ptr: NonNull<ffi::sqlite3_changeset_iter>,
    _blob: PhantomData<&'a [u8]>,
}

impl<'a> ChangesetIter<'a> {
    /// Starts iterating `blob`, which SQLite produced in this process.
    pub(crate) fn start(blob: &'a [u8]) -> BenchResult<Self> {
        let mut iter = ptr::null_mut();
        let n = c_int::try_from(blob.len())?;
        // SAFETY: `blob` outlives the iterator (`'a`) and SQLite only reads it.
        let rc =
            unsafe { ffi::sqlite3changeset_start(&mut iter, n, blob.as_ptr().cast_mut().cast()) };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(rc, errstr(rc), "sqlite3changeset_start"));
        }
        let ptr = NonNull::new(iter).ok_or("sqlite3changeset_start returned NULL")?;
        Ok(ChangesetIter {
            ptr,
            _blob: PhantomData,
        })
    }

    /// Moves to the next change and returns its op and column count; `None` at the end.
    pub(crate) fn next_change(&mut self) -> BenchResult<Option<(Op, c_int)>> {
        // SAFETY: the iterator is live.
        match unsafe { ffi::sqlite3changeset_next(self.ptr.as_ptr()) } {
            ffi::SQLITE_ROW => {}
            ffi::SQLITE_DONE => return Ok(None),
            rc => return Err(sqlite_error(rc, errstr(rc), "sqlite3changeset_next")),
        }
        let (mut name, mut n_col, mut op, mut indirect) = (ptr::null(), 0, 0, 0);
        // SAFETY: the iterator is positioned on a change; out-pointers are valid.
        let rc = unsafe {
            ffi::sqlite3changeset_op(
                self.ptr.as_ptr(),
                &mut name,
                &mut n_col,
                &mut op,
                &mut indirect,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(rc, errstr(rc), "sqlite3changeset_op"));
        }
        let op = match op {
            ffi::SQLITE_INSERT => Op::Insert,
            ffi::SQLITE_UPDATE => Op::Update,
            ffi::SQLITE_DELETE => Op::Delete,
            other => return Err(format!("unknown change op {other}").into()),
        };
        Ok(Some((op, n_col)))
    }

    fn value(
        &self,
        get: unsafe extern "C" fn(
            *mut ffi::sqlite3_changeset_iter,
            c_int,
            *mut *mut ffi::sqlite3_value,
        ) -> c_int,
        i: c_int,
    ) -> BenchResult<ValueRef<'_>> {
        let mut value = ptr::null_mut();
        // SAFETY: the iterator is positioned on a change whose column count the caller got from
        // `next_change`; `value` is an out-pointer.
        let rc = unsafe { get(self.ptr.as_ptr(), i, &mut value) };
        if rc != ffi::SQLITE_OK {
            return Err(sqlite_error(rc, errstr(rc), "reading a change's value"));
        }
        if value.is_null() {
            return Ok(ValueRef::Null);
        }
        // SAFETY: a non-NULL value is owned by the iterator and valid until it moves (tied to
        // `&self`); text/blob pointers are read before their byte count.
        Ok(unsafe {
            match ffi::sqlite3_value_type(value) {
                ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(value)),
                ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(value)),
                ffi::SQLITE_TEXT => {
                    let p = ffi::sqlite3_value_text(value);
                    let n = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
                    ValueRef::Text(bytes_at(p, n))
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_value_blob(value).cast::<u8>();
                    let n = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
                    ValueRef::Blob(bytes_at(p, n))
                }
                _ => ValueRef::Null,
            }
        })
    }

    /// The old value of column `i` of the current change (UPDATE, DELETE).
    pub(crate) fn old(&self, i: c_int) -> BenchResult<ValueRef<'_>> {
        self.value(ffi::sqlite3changeset_old, i)
    }

    /// The new value of column `i` of the current change (INSERT, UPDATE).
    pub(crate) fn new_value(&self, i: c_int) -> BenchResult<ValueRef<'_>> {
        self.value(ffi::sqlite3changeset_new, i)
    }
}

impl Drop for ChangesetIter<'_> {
    fn drop(&mut self) {
        // SAFETY: the iterator is live and not used after this.
        unsafe { ffi::sqlite3changeset_finalize(self.ptr.as_ptr()) };
    }
}
