//! Every `unsafe` call into libsqlite3-sys, each with a `// SAFETY:` line. The rest of the crate
//! is safe code over the wrappers here.
//!
//! Functions that take a `NonNull<sqlite3>` are `unsafe`: the caller promises that the handle is
//! valid and locked out from sqlx's worker (it comes from `PinnedGuard::with_raw*`) for the whole
//! call, which is the only way the crate obtains one.

use std::any::Any;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use liteorm_core::Value;
use liteorm_sqlite::ffi;

use crate::error::Error;
use crate::iter::{Change, ChangeOp};

/// Converts a blob length to the `int` the C API takes; changesets over 2 GiB need the
/// streaming API.
fn c_len(len: usize) -> Result<c_int, Error> {
    c_int::try_from(len).map_err(|_| Error::TooLarge { len })
}

/// The English text SQLite has for a result code.
fn errstr(rc: c_int) -> String {
    // SAFETY: sqlite3_errstr accepts any code and returns a static, NUL-terminated string.
    let text = unsafe { CStr::from_ptr(ffi::sqlite3_errstr(rc)) };
    text.to_string_lossy().into_owned()
}

/// An error for a failed call that has no connection (blob functions).
pub(crate) fn code_error(rc: c_int, context: &'static str) -> Error {
    Error::Sqlite {
        code: rc,
        message: errstr(rc),
        context,
    }
}

/// An error for a failed call on `db`, with the connection's message when it has one.
///
/// # Safety
/// `db` is valid and locked (see the module docs).
pub(crate) unsafe fn db_error(
    db: NonNull<ffi::sqlite3>,
    rc: c_int,
    context: &'static str,
) -> Error {
    // SAFETY: the caller guarantees `db` is a valid, locked handle; errmsg returns a string owned
    // by the connection that we copy before any other call on it.
    let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())) }.to_string_lossy();
    let message = if message == "not an error" {
        errstr(rc)
    } else {
        message.into_owned()
    };
    Error::Sqlite {
        code: rc,
        message,
        context,
    }
}

/// Copies a buffer that SQLite allocated into Rust memory and frees it.
///
/// # Safety
/// `buf` is null (then `len` is 0) or points to `len` bytes allocated by `sqlite3_malloc`.
unsafe fn take_buffer(len: c_int, buf: *mut c_void) -> Arc<[u8]> {
    if buf.is_null() || len <= 0 {
        // SAFETY: sqlite3_free accepts NULL.
        unsafe { ffi::sqlite3_free(buf) };
        return Arc::from(&[][..]);
    }
    let len = usize::try_from(len).unwrap_or(0);
    // SAFETY: the caller guarantees `buf` holds `len` initialised bytes.
    let bytes = Arc::from(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) });
    // SAFETY: `buf` came from sqlite3_malloc and is not used again.
    unsafe { ffi::sqlite3_free(buf) };
    bytes
}

/// How many `sqlite3_session` objects exist per database file (for tests and diagnostics).
static LIVE_SESSIONS: std::sync::Mutex<std::collections::BTreeMap<String, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn count_session(file: &str, delta: isize) {
    let mut live = LIVE_SESSIONS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let count = live.entry(file.to_owned()).or_default();
    *count = count.saturating_add_signed(delta);
    if *count == 0 {
        live.remove(file);
    }
}

/// How many session objects are alive on connections to `file`.
pub(crate) fn live_sessions(file: &str) -> usize {
    let live = LIVE_SESSIONS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    live.get(file).copied().unwrap_or(0)
}

/// A `sqlite3_session` object. It must be deleted (with [`RawSession::delete`]) while its
/// connection is locked and before the connection is closed or goes back to the pool.
pub(crate) struct RawSession {
    ptr: NonNull<ffi::sqlite3_session>,
    /// The database file it records (`""` for in-memory databases).
    file: String,
}

// SAFETY: the session is only touched while its connection is locked by the thread that holds
// the lock, so moving the pointer between threads is fine.
unsafe impl Send for RawSession {}

impl RawSession {
    /// Creates a session on the `main` database of `db`.
    ///
    /// # Safety
    /// `db` is valid and locked.
    pub(crate) unsafe fn create(db: NonNull<ffi::sqlite3>) -> Result<Self, Error> {
        let mut session = ptr::null_mut();
        // SAFETY: `db` is valid and locked; "main" is NUL-terminated; `session` is an out-pointer.
        let rc = unsafe { ffi::sqlite3session_create(db.as_ptr(), c"main".as_ptr(), &mut session) };
        if rc != ffi::SQLITE_OK {
            // SAFETY: as above.
            return Err(unsafe { db_error(db, rc, "sqlite3session_create") });
        }
        let ptr = NonNull::new(session)
            .ok_or_else(|| code_error(ffi::SQLITE_NOMEM, "sqlite3session_create"))?;
        // SAFETY: `db` is valid and locked; the returned name (NULL or NUL-terminated) is owned
        // by the connection and copied at once.
        let file = unsafe {
            let name = ffi::sqlite3_db_filename(db.as_ptr(), c"main".as_ptr());
            if name.is_null() {
                String::new()
            } else {
                CStr::from_ptr(name).to_string_lossy().into_owned()
            }
        };
        count_session(&file, 1);
        Ok(RawSession { ptr, file })
    }

    /// Attaches one table, or every table (`None`).
    ///
    /// # Safety
    /// The session's connection is locked.
    pub(crate) unsafe fn attach(&self, table: Option<&str>) -> Result<(), Error> {
        let name = table
            .map(|t| CString::new(t).map_err(|_| Error::InvalidName(t.to_owned())))
            .transpose()?;
        let name_ptr = name.as_ref().map_or(ptr::null(), |n| n.as_ptr());
        // SAFETY: the session is live and its connection locked; `name_ptr` is NULL or a
        // NUL-terminated string that outlives the call.
        let rc = unsafe { ffi::sqlite3session_attach(self.ptr.as_ptr(), name_ptr) };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(code_error(rc, "sqlite3session_attach"))
        }
    }

    /// The changeset (or patchset) of everything recorded so far.
    ///
    /// # Safety
    /// The session's connection `db` is locked.
    pub(crate) unsafe fn generate(
        &self,
        db: NonNull<ffi::sqlite3>,
        patchset: bool,
    ) -> Result<Arc<[u8]>, Error> {
        let (mut len, mut buf) = (0, ptr::null_mut());
        let generate = if patchset {
            ffi::sqlite3session_patchset
        } else {
            ffi::sqlite3session_changeset
        };
        // SAFETY: the session is live and its connection locked; out-pointers are valid.
        let rc = unsafe { generate(self.ptr.as_ptr(), &mut len, &mut buf) };
        if rc != ffi::SQLITE_OK {
            // SAFETY: on error SQLite sets `buf` to NULL or a buffer we must free; `db` is locked.
            unsafe { ffi::sqlite3_free(buf) };
            // SAFETY: `db` is valid and locked.
            return Err(unsafe { db_error(db, rc, "sqlite3session_changeset") });
        }
        // SAFETY: on success `buf` holds `len` bytes from sqlite3_malloc.
        Ok(unsafe { take_buffer(len, buf) })
    }

    /// Bytes of heap the session uses.
    ///
    /// # Safety
    /// The session's connection is locked.
    pub(crate) unsafe fn memory_used(&self) -> i64 {
        // SAFETY: the session is live and its connection locked.
        unsafe { ffi::sqlite3session_memory_used(self.ptr.as_ptr()) }
    }

    /// Deletes the session.
    ///
    /// # Safety
    /// The session's connection is locked.
    pub(crate) unsafe fn delete(self) {
        // SAFETY: the session is live, its connection locked, and `self` is consumed so it is
        // never used again.
        unsafe { ffi::sqlite3session_delete(self.ptr.as_ptr()) };
        count_session(&self.file, -1);
    }
}

/// Runs `sql` (no parameters, no rows) on `db`.
///
/// # Safety
/// `db` is valid and locked.
pub(crate) unsafe fn exec(
    db: NonNull<ffi::sqlite3>,
    sql: &CStr,
    context: &'static str,
) -> Result<(), Error> {
    // SAFETY: `db` is valid and locked; `sql` is NUL-terminated; no callback, no error out-param.
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
        // SAFETY: `db` is valid and locked.
        Err(unsafe { db_error(db, rc, context) })
    }
}

/// The primary-key position of each column of `main.<table>` as `PRAGMA table_info` reports it
/// (0 for columns outside the key), or `None` if there is no such table.
///
/// # Safety
/// `db` is valid and locked.
pub(crate) unsafe fn table_pk(
    db: NonNull<ffi::sqlite3>,
    table: &str,
) -> Result<Option<Vec<u8>>, Error> {
    const SQL: &CStr = c"SELECT pk FROM pragma_table_info(?1, 'main') ORDER BY cid";
    let mut stmt = ptr::null_mut();
    // SAFETY: `db` is valid and locked; SQL is NUL-terminated (-1 = read to the NUL).
    let rc = unsafe {
        ffi::sqlite3_prepare_v2(db.as_ptr(), SQL.as_ptr(), -1, &mut stmt, ptr::null_mut())
    };
    if rc != ffi::SQLITE_OK {
        // SAFETY: `db` is valid and locked.
        return Err(unsafe { db_error(db, rc, "reading table schema") });
    }
    let result = (|| {
        let len = c_len(table.len())?;
        // SAFETY: `stmt` is a live statement; SQLITE_TRANSIENT makes SQLite copy the text.
        let rc = unsafe {
            ffi::sqlite3_bind_text(stmt, 1, table.as_ptr().cast(), len, ffi::SQLITE_TRANSIENT())
        };
        if rc != ffi::SQLITE_OK {
            // SAFETY: `db` is valid and locked.
            return Err(unsafe { db_error(db, rc, "reading table schema") });
        }
        let mut pk = Vec::new();
        loop {
            // SAFETY: `stmt` is a live statement on the locked `db`.
            match unsafe { ffi::sqlite3_step(stmt) } {
                ffi::SQLITE_ROW => {
                    // SAFETY: the statement has a current row with one column.
                    let position = unsafe { ffi::sqlite3_column_int(stmt, 0) };
                    pk.push(u8::try_from(position).unwrap_or(u8::MAX));
                }
                ffi::SQLITE_DONE => break,
                // SAFETY: `db` is valid and locked.
                rc => return Err(unsafe { db_error(db, rc, "reading table schema") }),
            }
        }
        Ok((!pk.is_empty()).then_some(pk))
    })();
    // SAFETY: `stmt` is live and not used after this.
    unsafe { ffi::sqlite3_finalize(stmt) };
    result
}

/// Whether `db` is inside an explicit transaction.
///
/// # Safety
/// `db` is valid and locked.
pub(crate) unsafe fn in_transaction(db: NonNull<ffi::sqlite3>) -> bool {
    // SAFETY: `db` is valid and locked.
    unsafe { ffi::sqlite3_get_autocommit(db.as_ptr()) == 0 }
}

/// Inverts a changeset (patchsets cannot be inverted: SQLite reports SQLITE_CORRUPT).
pub(crate) fn invert(input: &[u8]) -> Result<Arc<[u8]>, Error> {
    let (mut len, mut buf) = (0, ptr::null_mut());
    // SAFETY: `input` is valid for its length and only read by SQLite; out-pointers are valid.
    let rc = unsafe {
        ffi::sqlite3changeset_invert(
            c_len(input.len())?,
            input.as_ptr().cast(),
            &mut len,
            &mut buf,
        )
    };
    if rc != ffi::SQLITE_OK {
        // SAFETY: on error `buf` is NULL or ours to free.
        unsafe { ffi::sqlite3_free(buf) };
        return Err(code_error(rc, "sqlite3changeset_invert"));
    }
    // SAFETY: on success `buf` holds `len` bytes from sqlite3_malloc.
    Ok(unsafe { take_buffer(len, buf) })
}

/// Concatenates two changesets (or two patchsets).
pub(crate) fn concat(a: &[u8], b: &[u8]) -> Result<Arc<[u8]>, Error> {
    let (mut len, mut buf) = (0, ptr::null_mut());
    // SAFETY: SQLite only reads the inputs (the C API lacks `const`); out-pointers are valid.
    let rc = unsafe {
        ffi::sqlite3changeset_concat(
            c_len(a.len())?,
            a.as_ptr().cast_mut().cast(),
            c_len(b.len())?,
            b.as_ptr().cast_mut().cast(),
            &mut len,
            &mut buf,
        )
    };
    if rc != ffi::SQLITE_OK {
        // SAFETY: on error `buf` is NULL or ours to free.
        unsafe { ffi::sqlite3_free(buf) };
        return Err(code_error(rc, "sqlite3changeset_concat"));
    }
    // SAFETY: on success `buf` holds `len` bytes from sqlite3_malloc.
    Ok(unsafe { take_buffer(len, buf) })
}

/// Reads an `sqlite3_value` the session API handed out.
///
/// # Safety
/// `value` is a valid protected value that lives for the duration of the call.
unsafe fn read_value(value: *mut ffi::sqlite3_value) -> Value {
    // SAFETY: `value` is valid (the caller's promise); lengths come from sqlite3_value_bytes
    // right after the text/blob pointer is fetched, as the SQLite docs prescribe.
    unsafe {
        match ffi::sqlite3_value_type(value) {
            ffi::SQLITE_INTEGER => Value::Integer(ffi::sqlite3_value_int64(value)),
            ffi::SQLITE_FLOAT => Value::Real(ffi::sqlite3_value_double(value)),
            ffi::SQLITE_TEXT => {
                let text = ffi::sqlite3_value_text(value);
                let len = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
                if text.is_null() {
                    return Value::Text(String::new());
                }
                let bytes = std::slice::from_raw_parts(text, len);
                Value::Text(String::from_utf8_lossy(bytes).into_owned())
            }
            ffi::SQLITE_BLOB => {
                let blob = ffi::sqlite3_value_blob(value);
                let len = usize::try_from(ffi::sqlite3_value_bytes(value)).unwrap_or(0);
                if blob.is_null() || len == 0 {
                    return Value::Blob(Vec::new());
                }
                Value::Blob(std::slice::from_raw_parts(blob.cast::<u8>(), len).to_vec())
            }
            _ => Value::Null,
        }
    }
}

/// A borrowed view of an iterator SQLite positioned on one change (during iteration or inside a
/// conflict callback).
pub(crate) struct IterRef<'a> {
    iter: *mut ffi::sqlite3_changeset_iter,
    _life: PhantomData<&'a ()>,
}

type ValueGetter = unsafe extern "C" fn(
    *mut ffi::sqlite3_changeset_iter,
    c_int,
    *mut *mut ffi::sqlite3_value,
) -> c_int;

impl IterRef<'_> {
    /// Reads values `0..n` with `get`; a NULL pointer (not recorded) becomes `None`.
    fn values(
        &self,
        n: c_int,
        get: ValueGetter,
        context: &'static str,
    ) -> Result<Vec<Option<Value>>, Error> {
        (0..n)
            .map(|i| {
                let mut value = ptr::null_mut();
                // SAFETY: the iterator is positioned on a change with `n` columns; `i` is in range.
                let rc = unsafe { get(self.iter, i, &mut value) };
                if rc != ffi::SQLITE_OK {
                    return Err(code_error(rc, context));
                }
                // SAFETY: a non-NULL value is owned by the iterator and valid until it moves.
                Ok((!value.is_null()).then(|| unsafe { read_value(value) }))
            })
            .collect()
    }

    /// The table name, column count and primary-key flags of the current change, without
    /// reading its values.
    pub(crate) fn header(&self) -> Result<(&CStr, usize, &[u8]), Error> {
        let (mut name, mut n_col, mut op, mut indirect): (*const c_char, c_int, c_int, c_int) =
            (ptr::null(), 0, 0, 0);
        // SAFETY: the iterator is positioned on a change; out-pointers are valid.
        let rc = unsafe {
            ffi::sqlite3changeset_op(self.iter, &mut name, &mut n_col, &mut op, &mut indirect)
        };
        let (mut pk_ptr, mut pk_cols) = (ptr::null_mut(), 0);
        // SAFETY: as above.
        let pk_rc = unsafe { ffi::sqlite3changeset_pk(self.iter, &mut pk_ptr, &mut pk_cols) };
        if rc != ffi::SQLITE_OK
            || pk_rc != ffi::SQLITE_OK
            || name.is_null()
            || pk_ptr.is_null()
            || pk_cols != n_col
        {
            return Err(code_error(ffi::SQLITE_CORRUPT, "sqlite3changeset_op"));
        }
        let len = usize::try_from(n_col).unwrap_or(0);
        // SAFETY: both point into the iterator's current change, which outlives `&self`.
        Ok(unsafe {
            (
                CStr::from_ptr(name),
                len,
                std::slice::from_raw_parts(pk_ptr, len),
            )
        })
    }

    /// The table, op and values of the current change. `table_cache` avoids one allocation per
    /// change when consecutive changes are on the same table.
    pub(crate) fn change(&self, table_cache: &mut Option<Arc<str>>) -> Result<Change, Error> {
        let (mut name, mut n_col, mut op, mut indirect): (*const c_char, c_int, c_int, c_int) =
            (ptr::null(), 0, 0, 0);
        // SAFETY: the iterator is positioned on a change; out-pointers are valid.
        let rc = unsafe {
            ffi::sqlite3changeset_op(self.iter, &mut name, &mut n_col, &mut op, &mut indirect)
        };
        if rc != ffi::SQLITE_OK || name.is_null() {
            return Err(code_error(
                if rc == ffi::SQLITE_OK {
                    ffi::SQLITE_CORRUPT
                } else {
                    rc
                },
                "sqlite3changeset_op",
            ));
        }
        // SAFETY: `name` is a NUL-terminated string owned by the iterator.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        let table = match table_cache {
            Some(cached) if **cached == *name => Arc::clone(cached),
            _ => Arc::clone(table_cache.insert(Arc::from(name.as_ref()))),
        };
        let op = match op {
            ffi::SQLITE_INSERT => ChangeOp::Insert,
            ffi::SQLITE_UPDATE => ChangeOp::Update,
            ffi::SQLITE_DELETE => ChangeOp::Delete,
            _ => return Err(code_error(ffi::SQLITE_CORRUPT, "sqlite3changeset_op")),
        };
        let (mut pk_ptr, mut pk_cols) = (ptr::null_mut(), 0);
        // SAFETY: as above.
        let rc = unsafe { ffi::sqlite3changeset_pk(self.iter, &mut pk_ptr, &mut pk_cols) };
        if rc != ffi::SQLITE_OK || pk_ptr.is_null() || pk_cols != n_col {
            return Err(code_error(ffi::SQLITE_CORRUPT, "sqlite3changeset_pk"));
        }
        let len = usize::try_from(n_col).unwrap_or(0);
        // SAFETY: SQLite reports `n_col` PK flags at `pk_ptr`, owned by the iterator.
        let pk = unsafe { std::slice::from_raw_parts(pk_ptr, len) }.to_vec();
        let old = match op {
            ChangeOp::Insert => Vec::new(),
            _ => self.values(n_col, ffi::sqlite3changeset_old, "sqlite3changeset_old")?,
        };
        let new = match op {
            ChangeOp::Delete => Vec::new(),
            _ => self.values(n_col, ffi::sqlite3changeset_new, "sqlite3changeset_new")?,
        };
        Ok(Change {
            table,
            op,
            indirect: indirect != 0,
            pk,
            old,
            new,
        })
    }

    /// The conflicting row of the target table (DATA and CONFLICT conflicts only).
    pub(crate) fn conflicting_row(&self, n_col: usize) -> Result<Vec<Value>, Error> {
        let n = c_len(n_col)?;
        let values = self.values(
            n,
            ffi::sqlite3changeset_conflict,
            "sqlite3changeset_conflict",
        )?;
        Ok(values
            .into_iter()
            .map(|v| v.unwrap_or(Value::Null))
            .collect())
    }

    /// The number of foreign key violations (FOREIGN_KEY conflicts only).
    pub(crate) fn fk_conflicts(&self) -> usize {
        let mut n = 0;
        // SAFETY: called only from a FOREIGN_KEY conflict callback with its iterator.
        let rc = unsafe { ffi::sqlite3changeset_fk_conflicts(self.iter, &mut n) };
        if rc == ffi::SQLITE_OK {
            usize::try_from(n).unwrap_or(0)
        } else {
            0
        }
    }
}

/// An iterator over the changes of a blob.
pub(crate) struct ChangesetIter<'a> {
    iter: NonNull<ffi::sqlite3_changeset_iter>,
    _blob: PhantomData<&'a [u8]>,
}

impl<'a> ChangesetIter<'a> {
    /// Starts iterating `blob`, which SQLite reads but never writes.
    pub(crate) fn start(blob: &'a [u8]) -> Result<Self, Error> {
        let mut iter = ptr::null_mut();
        // SAFETY: `blob` outlives the iterator (lifetime `'a`) and SQLite only reads it.
        let rc = unsafe {
            ffi::sqlite3changeset_start(
                &mut iter,
                c_len(blob.len())?,
                blob.as_ptr().cast_mut().cast(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(code_error(rc, "sqlite3changeset_start"));
        }
        let iter = NonNull::new(iter)
            .ok_or_else(|| code_error(ffi::SQLITE_NOMEM, "sqlite3changeset_start"))?;
        Ok(ChangesetIter {
            iter,
            _blob: PhantomData,
        })
    }

    /// Moves to the next change; `Ok(false)` at the end.
    pub(crate) fn advance(&mut self) -> Result<bool, Error> {
        // SAFETY: the iterator is live.
        match unsafe { ffi::sqlite3changeset_next(self.iter.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(code_error(rc, "sqlite3changeset_next")),
        }
    }

    /// The current change (after `advance` returned `true`).
    pub(crate) fn current(&self) -> IterRef<'_> {
        IterRef {
            iter: self.iter.as_ptr(),
            _life: PhantomData,
        }
    }
}

impl Drop for ChangesetIter<'_> {
    fn drop(&mut self) {
        // SAFETY: the iterator is live and never used after this.
        unsafe { ffi::sqlite3changeset_finalize(self.iter.as_ptr()) };
    }
}

/// What an apply's callbacks do; implemented by the apply module.
pub(crate) trait ApplyHooks {
    /// Whether to apply the changes of `table`.
    fn filter(&mut self, table: &str) -> bool;
    /// The verdict (an `SQLITE_CHANGESET_*` action) for conflict `kind` on `iter`.
    fn conflict(&mut self, kind: c_int, iter: IterRef<'_>) -> c_int;
    /// Whether the apply should stop (the caller went away, or a callback failed).
    fn should_stop(&self) -> bool;
    /// `callback` panicked with `payload`.
    fn panicked(&mut self, callback: &'static str, payload: Box<dyn Any + Send>);
}

unsafe extern "C" fn filter_trampoline<H: ApplyHooks>(
    ctx: *mut c_void,
    table: *const c_char,
) -> c_int {
    // SAFETY: `ctx` is the `&mut H` passed to `apply`, alive and not aliased during the call.
    let hooks = unsafe { &mut *ctx.cast::<H>() };
    if hooks.should_stop() {
        return 0;
    }
    // SAFETY: SQLite passes a NUL-terminated table name.
    let table = unsafe { CStr::from_ptr(table) }.to_string_lossy();
    match catch_unwind(AssertUnwindSafe(|| hooks.filter(&table))) {
        Ok(keep) => c_int::from(keep),
        Err(payload) => {
            hooks.panicked("table filter", payload);
            0
        }
    }
}

unsafe extern "C" fn conflict_trampoline<H: ApplyHooks>(
    ctx: *mut c_void,
    kind: c_int,
    iter: *mut ffi::sqlite3_changeset_iter,
) -> c_int {
    // SAFETY: `ctx` is the `&mut H` passed to `apply`, alive and not aliased during the call.
    let hooks = unsafe { &mut *ctx.cast::<H>() };
    if hooks.should_stop() {
        return ffi::SQLITE_CHANGESET_ABORT;
    }
    let iter = IterRef {
        iter,
        _life: PhantomData,
    };
    match catch_unwind(AssertUnwindSafe(|| hooks.conflict(kind, iter))) {
        Ok(action) => action,
        Err(payload) => {
            hooks.panicked("conflict handler", payload);
            ffi::SQLITE_CHANGESET_ABORT
        }
    }
}

unsafe extern "C" fn progress_trampoline<H: ApplyHooks>(ctx: *mut c_void) -> c_int {
    // SAFETY: `ctx` is the `&mut H` passed to `apply`; `should_stop` only reads it.
    let hooks = unsafe { &*ctx.cast::<H>() };
    c_int::from(hooks.should_stop())
}

/// Applies `blob` to `main` of `db` with `hooks` as filter and conflict handler, and a progress
/// handler that interrupts the apply once `hooks.should_stop()`. Returns SQLite's result code.
///
/// # Safety
/// `db` is valid and locked.
pub(crate) unsafe fn apply<H: ApplyHooks>(
    db: NonNull<ffi::sqlite3>,
    blob: &[u8],
    flags: c_int,
    hooks: &mut H,
) -> Result<c_int, Error> {
    let len = c_len(blob.len())?;
    let ctx = ptr::from_mut(hooks).cast::<c_void>();
    // SAFETY: `db` is valid and locked; the progress handler's context outlives the apply and is
    // removed right after it.
    unsafe {
        ffi::sqlite3_progress_handler(db.as_ptr(), 1000, Some(progress_trampoline::<H>), ctx)
    };
    // SAFETY: `db` is locked; `blob` outlives the call and is only read; the trampolines match
    // the C signatures and `ctx` points to a live `H` for the whole call; no rebase buffer.
    let rc = unsafe {
        ffi::sqlite3changeset_apply_v2(
            db.as_ptr(),
            len,
            blob.as_ptr().cast_mut().cast(),
            Some(filter_trampoline::<H>),
            Some(conflict_trampoline::<H>),
            ctx,
            ptr::null_mut(),
            ptr::null_mut(),
            flags,
        )
    };
    // SAFETY: `db` is valid and locked; removes the handler installed above.
    unsafe { ffi::sqlite3_progress_handler(db.as_ptr(), 0, None, ptr::null_mut()) };
    Ok(rc)
}
