//! Every `unsafe` call into libsqlite3-sys, each with a `// SAFETY:` line. The rest of the crate
//! is safe code over the wrappers here.
//!
//! Functions that take a `NonNull<sqlite3>` are `unsafe`: the caller promises that the handle is
//! valid and locked out from sqlx's worker (it comes from `PinnedGuard::with_raw*`) for the whole
//! call, which is the only way the crate obtains one.

use std::any::Any;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::{self, Read, Write};
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
    /// The table filter SQLite calls back, owned here so that it outlives the session.
    filter: Option<Box<TableFilter>>,
}

/// Whether to record a table, by name.
pub(crate) type TableFilterFn = Box<dyn FnMut(&str) -> bool + Send>;

/// A capture's table filter and what happened to it.
pub(crate) struct TableFilter {
    /// Whether to record a table.
    pub(crate) filter: TableFilterFn,
    /// The panic message, if the filter panicked (it then records nothing more).
    pub(crate) panicked: Option<String>,
}

unsafe extern "C" fn table_filter_trampoline(ctx: *mut c_void, table: *const c_char) -> c_int {
    // SAFETY: `ctx` is the `TableFilter` boxed in the session, which outlives it; SQLite calls
    // the filter only from statements on the session's connection, one at a time.
    let state = unsafe { &mut *ctx.cast::<TableFilter>() };
    if state.panicked.is_some() {
        return 0;
    }
    // SAFETY: SQLite passes a NUL-terminated table name.
    let table = unsafe { CStr::from_ptr(table) }.to_string_lossy();
    match catch_unwind(AssertUnwindSafe(|| (state.filter)(&table))) {
        Ok(keep) => c_int::from(keep),
        Err(payload) => {
            state.panicked = Some(panic_message(payload.as_ref()));
            0
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
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
        Ok(RawSession {
            ptr,
            file,
            filter: None,
        })
    }

    /// Turns on `sqlite3session_changeset_size` bookkeeping (before any table is attached).
    ///
    /// # Safety
    /// The session's connection is locked.
    #[cfg(sqlite_has_changeset_size)]
    pub(crate) unsafe fn track_size(&self) -> Result<(), Error> {
        // SAFETY: the caller's promise.
        unsafe { self.object_config(ffi::SQLITE_SESSION_OBJCONFIG_SIZE) }
    }

    /// Records tables without a PRIMARY KEY, keyed by rowid (before any table is attached).
    ///
    /// # Safety
    /// The session's connection is locked.
    #[cfg(sqlite_has_implicit_pk)]
    pub(crate) unsafe fn implicit_pk(&self) -> Result<(), Error> {
        // SAFETY: the caller's promise.
        unsafe { self.object_config(ffi::SQLITE_SESSION_OBJCONFIG_ROWID) }
    }

    /// Sets boolean option `op` of `sqlite3session_object_config`.
    ///
    /// # Safety
    /// The session's connection is locked.
    #[cfg(sqlite_has_changeset_size)]
    unsafe fn object_config(&self, op: c_int) -> Result<(), Error> {
        let mut on: c_int = 1;
        // SAFETY: the session is live and its connection locked; the option takes an `int*`.
        let rc = unsafe {
            ffi::sqlite3session_object_config(self.ptr.as_ptr(), op, ptr::from_mut(&mut on).cast())
        };
        if rc == ffi::SQLITE_OK && on == 1 {
            Ok(())
        } else {
            Err(code_error(rc, "sqlite3session_object_config"))
        }
    }

    /// Starts (`true`) or stops recording changes.
    ///
    /// # Safety
    /// The session's connection is locked.
    pub(crate) unsafe fn enable(&self, on: bool) {
        // SAFETY: the session is live and its connection locked.
        unsafe { ffi::sqlite3session_enable(self.ptr.as_ptr(), c_int::from(on)) };
    }

    /// Marks the changes recorded from now on as indirect (`true`) or direct.
    ///
    /// # Safety
    /// The session's connection is locked.
    pub(crate) unsafe fn indirect(&self, on: bool) {
        // SAFETY: the session is live and its connection locked.
        unsafe { ffi::sqlite3session_indirect(self.ptr.as_ptr(), c_int::from(on)) };
    }

    /// Whether no change has been recorded.
    ///
    /// # Safety
    /// The session's connection is locked.
    pub(crate) unsafe fn is_empty(&self) -> bool {
        // SAFETY: the session is live and its connection locked.
        unsafe { ffi::sqlite3session_isempty(self.ptr.as_ptr()) != 0 }
    }

    /// The size of the changeset the session would generate now (needs [`Self::track_size`]).
    ///
    /// # Safety
    /// The session's connection is locked.
    #[cfg(sqlite_has_changeset_size)]
    pub(crate) unsafe fn changeset_size(&self) -> i64 {
        // SAFETY: the session is live and its connection locked.
        unsafe { ffi::sqlite3session_changeset_size(self.ptr.as_ptr()) }
    }

    /// Installs the filter that decides which tables an all-tables session records.
    ///
    /// # Safety
    /// The session's connection is locked.
    pub(crate) unsafe fn set_table_filter(&mut self, filter: TableFilter) {
        let mut boxed = Box::new(filter);
        let ctx = ptr::from_mut(boxed.as_mut()).cast::<c_void>();
        // SAFETY: the session is live and its connection locked; `ctx` points into a box that
        // `self` owns and frees only after deleting the session.
        unsafe {
            ffi::sqlite3session_table_filter(self.ptr.as_ptr(), Some(table_filter_trampoline), ctx)
        };
        self.filter = Some(boxed);
    }

    /// The panic message of the table filter, if it panicked.
    pub(crate) fn filter_panic(&self) -> Option<String> {
        self.filter.as_ref().and_then(|f| f.panicked.clone())
    }

    /// Records the changes that turn `from.table` into `main.table` (attaching `table`).
    /// On failure, returns SQLite's code and message.
    ///
    /// # Safety
    /// The session's connection `db` is locked.
    pub(crate) unsafe fn diff(
        &self,
        db: NonNull<ffi::sqlite3>,
        from: &CStr,
        table: &CStr,
    ) -> Result<(), (c_int, String)> {
        let mut message: *mut c_char = ptr::null_mut();
        // SAFETY: the session is live and its connection locked; names are NUL-terminated;
        // `message` is an out-pointer that SQLite fills with a sqlite3_malloc'd string or NULL.
        let rc = unsafe {
            ffi::sqlite3session_diff(
                self.ptr.as_ptr(),
                from.as_ptr(),
                table.as_ptr(),
                &mut message,
            )
        };
        let text = if message.is_null() {
            None
        } else {
            // SAFETY: a NUL-terminated string from sqlite3_mprintf, freed right after the copy.
            let text = unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: as above; not used again.
            unsafe { ffi::sqlite3_free(message.cast()) };
            Some(text)
        };
        if rc == ffi::SQLITE_OK {
            return Ok(());
        }
        // SAFETY: `db` is valid and locked.
        let fallback = || match unsafe { db_error(db, rc, "sqlite3session_diff") } {
            Error::Sqlite { message, .. } => message,
            other => other.to_string(),
        };
        Err((rc, text.unwrap_or_else(fallback)))
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
/// (0 for columns outside the key), modulo 256 as SQLite's session extension stores it, or
/// `None` if there is no such table.
///
/// # Safety
/// `db` is valid and locked.
pub(crate) unsafe fn table_pk(
    db: NonNull<ffi::sqlite3>,
    table: &str,
) -> Result<Option<Vec<u8>>, Error> {
    // The pragma itself, not the `pragma_table_info` table-valued function, which prepares this
    // same pragma inside on every run. The name is quoted as an identifier; rows come in column
    // order. No table name holds a NUL.
    let sql = format!("PRAGMA main.table_info(\"{}\")", table.replace('"', "\"\""));
    let Ok(sql) = CString::new(sql) else {
        return Ok(None);
    };
    let mut stmt = ptr::null_mut();
    // SAFETY: `db` is valid and locked; `sql` is NUL-terminated (-1 = read to the NUL).
    let rc = unsafe {
        ffi::sqlite3_prepare_v2(db.as_ptr(), sql.as_ptr(), -1, &mut stmt, ptr::null_mut())
    };
    let Some(stmt) = NonNull::new(stmt).filter(|_| rc == ffi::SQLITE_OK) else {
        // SAFETY: `db` is valid and locked.
        return Err(unsafe { db_error(db, rc, "reading table schema") });
    };
    let mut pk = Vec::new();
    let result = loop {
        // SAFETY: `stmt` is a live statement on the locked `db`.
        match unsafe { ffi::sqlite3_step(stmt.as_ptr()) } {
            ffi::SQLITE_ROW => {
                // SAFETY: the statement has a current row; `pk` is its sixth column.
                let position = unsafe { ffi::sqlite3_column_int(stmt.as_ptr(), 5) };
                // The low byte, as the session extension keeps it (`abPK[i] =
                // sqlite3_column_int(pStmt, 5)` into a `u8`): key position 256 is 0 there,
                // and headers and compatibility checks must agree with SQLite's.
                pk.push(position.to_le_bytes()[0]);
            }
            ffi::SQLITE_DONE => break Ok((!pk.is_empty()).then_some(pk)),
            // SAFETY: `db` is valid and locked.
            rc => break Err(unsafe { db_error(db, rc, "reading table schema") }),
        }
    };
    // SAFETY: `stmt` is live and not used after this.
    unsafe { ffi::sqlite3_finalize(stmt.as_ptr()) };
    result
}

/// Runs `sql` with text parameters `params` (`?1`, `?2`, ...) and returns every row, each column
/// as text (`None` for NULL).
///
/// # Safety
/// `db` is valid and locked.
pub(crate) unsafe fn query_text(
    db: NonNull<ffi::sqlite3>,
    sql: &CStr,
    params: &[&str],
    context: &'static str,
) -> Result<Vec<Vec<Option<String>>>, Error> {
    let mut stmt = ptr::null_mut();
    // SAFETY: `db` is valid and locked; `sql` is NUL-terminated (-1 = read to the NUL).
    let rc = unsafe {
        ffi::sqlite3_prepare_v2(db.as_ptr(), sql.as_ptr(), -1, &mut stmt, ptr::null_mut())
    };
    if rc != ffi::SQLITE_OK {
        // SAFETY: `db` is valid and locked.
        return Err(unsafe { db_error(db, rc, context) });
    }
    let result = (|| {
        for (i, param) in params.iter().enumerate() {
            let index = c_int::try_from(i + 1).unwrap_or(c_int::MAX);
            let len = c_len(param.len())?;
            // SAFETY: `stmt` is live; SQLITE_TRANSIENT makes SQLite copy the text.
            let rc = unsafe {
                ffi::sqlite3_bind_text(
                    stmt,
                    index,
                    param.as_ptr().cast(),
                    len,
                    ffi::SQLITE_TRANSIENT(),
                )
            };
            if rc != ffi::SQLITE_OK {
                // SAFETY: `db` is valid and locked.
                return Err(unsafe { db_error(db, rc, context) });
            }
        }
        // SAFETY: `stmt` is live.
        let columns = unsafe { ffi::sqlite3_column_count(stmt) };
        let mut rows = Vec::new();
        loop {
            // SAFETY: `stmt` is a live statement on the locked `db`.
            match unsafe { ffi::sqlite3_step(stmt) } {
                ffi::SQLITE_ROW => {
                    let row = (0..columns)
                        .map(|i| {
                            // SAFETY: the statement has a current row with `columns` columns;
                            // the text is copied before the next call on the statement.
                            unsafe {
                                let text = ffi::sqlite3_column_text(stmt, i);
                                let len = usize::try_from(ffi::sqlite3_column_bytes(stmt, i))
                                    .unwrap_or(0);
                                (!text.is_null()).then(|| {
                                    let bytes = std::slice::from_raw_parts(text, len);
                                    String::from_utf8_lossy(bytes).into_owned()
                                })
                            }
                        })
                        .collect();
                    rows.push(row);
                }
                ffi::SQLITE_DONE => break,
                // SAFETY: `db` is valid and locked.
                rc => return Err(unsafe { db_error(db, rc, context) }),
            }
        }
        Ok(rows)
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

/// A copy of `blob` followed by a zero byte that is not part of it, for SQLite's change-group
/// code (`sqlite3changeset_concat`, `sqlite3changegroup_add`, and the iterator whose changes
/// `sqlite3changegroup_add_change` takes).
///
/// `sessionChangeHash` (SQLite 3.51.3) reads the type byte of every column of a patchset DELETE
/// before it skips the non-key ones, so for a DELETE at the very end of the input whose table
/// has a non-key column after its last key column it reads one byte past the end. The spare
/// byte keeps that read inside the allocation.
pub(crate) fn padded(blob: &[u8]) -> Vec<u8> {
    let mut copy = Vec::with_capacity(blob.len() + 1);
    copy.extend_from_slice(blob);
    copy.push(0);
    copy
}

/// Concatenates two changesets (or two patchsets).
pub(crate) fn concat(a: &[u8], b: &[u8]) -> Result<Arc<[u8]>, Error> {
    let (mut len, mut buf) = (0, ptr::null_mut());
    let (a_len, b_len) = (c_len(a.len())?, c_len(b.len())?);
    let (a, b) = (padded(a), padded(b));
    // SAFETY: SQLite only reads the inputs (the C API lacks `const`), `a_len`/`b_len` bytes of
    // each and at most the spare byte after them; out-pointers are valid.
    let rc = unsafe {
        ffi::sqlite3changeset_concat(
            a_len,
            a.as_ptr().cast_mut().cast(),
            b_len,
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

    /// The table name of the current change, without reading its values (`None` if it is not
    /// UTF-8).
    pub(crate) fn table(&self) -> Option<&str> {
        let (mut name, mut n_col, mut op, mut indirect): (*const c_char, c_int, c_int, c_int) =
            (ptr::null(), 0, 0, 0);
        // SAFETY: the iterator is positioned on a change; out-pointers are valid.
        let rc = unsafe {
            ffi::sqlite3changeset_op(self.iter, &mut name, &mut n_col, &mut op, &mut indirect)
        };
        if rc != ffi::SQLITE_OK || name.is_null() {
            return None;
        }
        // SAFETY: the name points into the iterator's current change, which outlives `&self`.
        unsafe { CStr::from_ptr(name) }.to_str().ok()
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

// SAFETY: an iterator belongs to no connection and has no thread affinity; it is only used
// through `&mut self` (or `&self` for reads between moves), so moving it between threads is fine.
unsafe impl Send for ChangesetIter<'_> {}

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

/// An iterator over the changes of a stream; owns the stream.
pub(crate) struct StreamIter<R> {
    // Declared first: dropped (finalized) before the input it reads from.
    iter: ChangesetIter<'static>,
    input: Box<Input<R>>,
}

impl<R: Read> StreamIter<R> {
    /// Starts iterating what `input` reads; SQLite pulls from it as the iteration advances.
    pub(crate) fn start(input: Input<R>) -> Result<Self, Error> {
        let mut input = Box::new(input);
        let mut iter = ptr::null_mut();
        // SAFETY: the context is the boxed input, which the returned value owns and drops only
        // after finalizing the iterator; the trampoline matches the C signature.
        let rc = unsafe {
            ffi::sqlite3changeset_start_strm(
                &mut iter,
                Some(input_trampoline::<R>),
                ptr::from_mut(input.as_mut()).cast(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(input.error.take().map_or_else(
                || code_error(rc, "sqlite3changeset_start_strm"),
                StreamError::into_error,
            ));
        }
        let iter = NonNull::new(iter)
            .ok_or_else(|| code_error(ffi::SQLITE_NOMEM, "sqlite3changeset_start_strm"))?;
        Ok(StreamIter {
            iter: ChangesetIter {
                iter,
                _blob: PhantomData,
            },
            input,
        })
    }

    /// Moves to the next change; `Ok(false)` at the end. A failure of the stream (a read
    /// error, a malformed byte) is returned as such.
    pub(crate) fn advance(&mut self) -> Result<bool, Error> {
        self.iter
            .advance()
            .map_err(|err| self.input.error.take().map_or(err, StreamError::into_error))
    }

    /// The current change (after `advance` returned `true`).
    pub(crate) fn current(&self) -> IterRef<'_> {
        self.iter.current()
    }

    /// The stream's reader.
    pub(crate) fn reader(&self) -> &R {
        &self.input.reader
    }
}

/// How a stream callback failed.
pub(crate) enum StreamError {
    /// The reader or writer returned an error.
    Io(io::Error),
    /// The reader or writer panicked.
    Panicked(String),
}

impl StreamError {
    /// The crate error: a reader's structure error (an `InvalidData` error wrapping the checker's
    /// finding) becomes [`Error::Invalid`], other I/O errors [`Error::Io`].
    pub(crate) fn into_error(self) -> Error {
        match self {
            StreamError::Io(err) => {
                if err.kind() == io::ErrorKind::InvalidData
                    && let Some(found) = err
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<crate::format::Malformed>())
                {
                    return Error::Invalid {
                        kind: "changeset stream",
                        entry: found.entry,
                        offset: Some(found.offset),
                        reason: found.reason.clone(),
                    };
                }
                Error::Io(err)
            }
            StreamError::Panicked(message) => Error::CallbackPanicked {
                callback: "stream reader or writer",
                message,
            },
        }
    }
}

/// A reader SQLite pulls a stream from, and how it failed.
pub(crate) struct Input<R> {
    pub(crate) reader: R,
    pub(crate) error: Option<StreamError>,
}

impl<R> Input<R> {
    pub(crate) fn new(reader: R) -> Self {
        Input {
            reader,
            error: None,
        }
    }
}

/// A writer SQLite pushes a stream to, and how it failed.
pub(crate) struct Output<W> {
    pub(crate) writer: W,
    pub(crate) error: Option<StreamError>,
}

impl<W> Output<W> {
    pub(crate) fn new(writer: W) -> Self {
        Output {
            writer,
            error: None,
        }
    }
}

/// Whether a stream callback failed: its error then wins over SQLite's (which only says I/O).
fn stream_result(
    rc: c_int,
    context: &'static str,
    errors: [Option<StreamError>; 2],
) -> Result<(), Error> {
    if let Some(err) = errors.into_iter().flatten().next() {
        return Err(err.into_error());
    }
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(code_error(rc, context))
    }
}

unsafe extern "C" fn input_trampoline<R: Read>(
    ctx: *mut c_void,
    data: *mut c_void,
    len: *mut c_int,
) -> c_int {
    // SAFETY: `len` is SQLite's in/out parameter: the room in `data` on entry.
    let room = usize::try_from(unsafe { *len }).unwrap_or(0);
    if data.is_null() || room == 0 {
        // SAFETY: as above.
        unsafe { *len = 0 };
        return ffi::SQLITE_OK;
    }
    // SAFETY: `ctx` is the `Input<R>` passed with this trampoline, alive and not otherwise
    // borrowed while SQLite runs; `data` is non-null with room for `room` bytes.
    let (input, buf) = unsafe {
        let input = &mut *ctx.cast::<Input<R>>();
        (
            input,
            std::slice::from_raw_parts_mut(data.cast::<u8>(), room),
        )
    };
    let read = loop {
        match catch_unwind(AssertUnwindSafe(|| input.reader.read(buf))) {
            Ok(Ok(n)) => break n,
            Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(err)) => {
                input.error.get_or_insert(StreamError::Io(err));
                return ffi::SQLITE_IOERR_READ;
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                input.error.get_or_insert(StreamError::Panicked(message));
                return ffi::SQLITE_IOERR_READ;
            }
        }
    };
    // SAFETY: `len` is SQLite's out-parameter; `read <= buf.len()`, which came from it.
    unsafe { *len = c_int::try_from(read).unwrap_or(0) };
    ffi::SQLITE_OK
}

unsafe extern "C" fn output_trampoline<W: Write>(
    ctx: *mut c_void,
    data: *const c_void,
    len: c_int,
) -> c_int {
    // SAFETY: `ctx` is the `Output<W>` passed with this trampoline, alive and not otherwise
    // borrowed while SQLite runs; `data` holds `len` bytes.
    let (output, bytes) = unsafe {
        let output = &mut *ctx.cast::<Output<W>>();
        let len = usize::try_from(len).unwrap_or(0);
        let bytes = if len == 0 || data.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(data.cast::<u8>(), len)
        };
        (output, bytes)
    };
    match catch_unwind(AssertUnwindSafe(|| output.writer.write_all(bytes))) {
        Ok(Ok(())) => ffi::SQLITE_OK,
        Ok(Err(err)) => {
            output.error.get_or_insert(StreamError::Io(err));
            ffi::SQLITE_IOERR_WRITE
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            output.error.get_or_insert(StreamError::Panicked(message));
            ffi::SQLITE_IOERR_WRITE
        }
    }
}

/// Inverts the changeset `input` reads into `output`.
pub(crate) fn invert_strm<R: Read, W: Write>(
    input: &mut Input<R>,
    output: &mut Output<W>,
) -> Result<(), Error> {
    // SAFETY: both contexts outlive the call and match their trampolines.
    let rc = unsafe {
        ffi::sqlite3changeset_invert_strm(
            Some(input_trampoline::<R>),
            ptr::from_mut(input).cast(),
            Some(output_trampoline::<W>),
            ptr::from_mut(output).cast(),
        )
    };
    stream_result(
        rc,
        "sqlite3changeset_invert_strm",
        [input.error.take(), output.error.take()],
    )
}

/// Concatenates the changesets (or patchsets) `a` and `b` read into `output`.
pub(crate) fn concat_strm<A: Read, B: Read, W: Write>(
    a: &mut Input<A>,
    b: &mut Input<B>,
    output: &mut Output<W>,
) -> Result<(), Error> {
    // SAFETY: the three contexts outlive the call and match their trampolines.
    let rc = unsafe {
        ffi::sqlite3changeset_concat_strm(
            Some(input_trampoline::<A>),
            ptr::from_mut(a).cast(),
            Some(input_trampoline::<B>),
            ptr::from_mut(b).cast(),
            Some(output_trampoline::<W>),
            ptr::from_mut(output).cast(),
        )
    };
    let first = a.error.take().or_else(|| b.error.take());
    stream_result(
        rc,
        "sqlite3changeset_concat_strm",
        [first, output.error.take()],
    )
}

/// The SQLite library's version number at run time, e.g. 3040001.
pub(crate) fn libversion_number() -> c_int {
    // SAFETY: no preconditions.
    unsafe { ffi::sqlite3_libversion_number() }
}

/// Calls a C constructor that fills an out-pointer, turning its result code and a NULL object
/// into errors named by `context`.
fn construct<T>(
    context: &'static str,
    make: impl FnOnce(*mut *mut T) -> c_int,
) -> Result<NonNull<T>, Error> {
    let mut out = ptr::null_mut();
    let rc = make(&mut out);
    if rc != ffi::SQLITE_OK {
        return Err(code_error(rc, context));
    }
    NonNull::new(out).ok_or_else(|| code_error(ffi::SQLITE_NOMEM, context))
}

/// A `sqlite3_changegroup`: changes merged in memory, independent of any connection.
pub(crate) struct RawChangegroup {
    ptr: NonNull<ffi::sqlite3_changegroup>,
}

// SAFETY: a changegroup belongs to no connection (see `schema` for the one exception, which is
// only used while the connection is locked) and is only mutated through `&mut self`.
unsafe impl Send for RawChangegroup {}

impl RawChangegroup {
    pub(crate) fn new() -> Result<Self, Error> {
        // SAFETY: `out` is a valid out-pointer.
        let ptr = construct("sqlite3changegroup_new", |out| unsafe {
            ffi::sqlite3changegroup_new(out)
        })?;
        Ok(RawChangegroup { ptr })
    }

    /// Conforms every change added from now on to the schema of `main` of `db`, which the
    /// group reads (lazily, while adding) until it is dropped.
    ///
    /// # Safety
    /// `db` is valid and locked, and stays so for every later call on this group and its drop.
    #[cfg(sqlite_has_changegroup_schema)]
    pub(crate) unsafe fn schema(&mut self, db: NonNull<ffi::sqlite3>) -> Result<(), Error> {
        // SAFETY: the caller's promise; "main" is NUL-terminated.
        let rc = unsafe {
            ffi::sqlite3changegroup_schema(self.ptr.as_ptr(), db.as_ptr(), c"main".as_ptr())
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(code_error(rc, "sqlite3changegroup_schema"))
        }
    }

    /// Adds every change of a validated blob. Returns SQLite's code.
    pub(crate) fn add(&mut self, blob: &[u8]) -> Result<c_int, Error> {
        let len = c_len(blob.len())?;
        let blob = padded(blob);
        // SAFETY: the group is live; SQLite only reads `len` bytes of `blob` and at most the
        // spare byte after them (the C API lacks `const`), and copies what it keeps.
        Ok(unsafe {
            ffi::sqlite3changegroup_add(self.ptr.as_ptr(), len, blob.as_ptr().cast_mut().cast())
        })
    }

    /// Adds the change `iter` is on. Returns SQLite's code.
    #[cfg(sqlite_has_changegroup_add_change)]
    pub(crate) fn add_change(&mut self, iter: &ChangesetIter<'_>) -> c_int {
        // SAFETY: the group and the iterator are live; the iterator is positioned on a change.
        unsafe { ffi::sqlite3changegroup_add_change(self.ptr.as_ptr(), iter.iter.as_ptr()) }
    }

    /// Adds every change `input` reads.
    pub(crate) fn add_strm<R: Read>(&mut self, input: &mut Input<R>) -> Result<(), Error> {
        // SAFETY: the group is live; the context outlives the call and matches the trampoline.
        let rc = unsafe {
            ffi::sqlite3changegroup_add_strm(
                self.ptr.as_ptr(),
                Some(input_trampoline::<R>),
                ptr::from_mut(input).cast(),
            )
        };
        stream_result(
            rc,
            "sqlite3changegroup_add_strm",
            [input.error.take(), None],
        )
    }

    /// The merged changes.
    pub(crate) fn output(&self) -> Result<Arc<[u8]>, Error> {
        let (mut len, mut buf) = (0, ptr::null_mut());
        // SAFETY: the group is live; out-pointers are valid.
        let rc = unsafe { ffi::sqlite3changegroup_output(self.ptr.as_ptr(), &mut len, &mut buf) };
        if rc != ffi::SQLITE_OK {
            // SAFETY: on error `buf` is NULL or ours to free.
            unsafe { ffi::sqlite3_free(buf) };
            return Err(code_error(rc, "sqlite3changegroup_output"));
        }
        // SAFETY: on success `buf` holds `len` bytes from sqlite3_malloc.
        Ok(unsafe { take_buffer(len, buf) })
    }

    /// Writes the merged changes to `output`.
    pub(crate) fn output_strm<W: Write>(&self, output: &mut Output<W>) -> Result<(), Error> {
        // SAFETY: the group is live; the context outlives the call and matches the trampoline.
        let rc = unsafe {
            ffi::sqlite3changegroup_output_strm(
                self.ptr.as_ptr(),
                Some(output_trampoline::<W>),
                ptr::from_mut(output).cast(),
            )
        };
        stream_result(
            rc,
            "sqlite3changegroup_output_strm",
            [output.error.take(), None],
        )
    }
}

impl Drop for RawChangegroup {
    fn drop(&mut self) {
        // SAFETY: the group is live and never used after this.
        unsafe { ffi::sqlite3changegroup_delete(self.ptr.as_ptr()) };
    }
}

/// A `sqlite3_rebaser`: conflict resolutions of applied remote changes, to rebase local ones.
pub(crate) struct RawRebaser {
    ptr: NonNull<ffi::sqlite3_rebaser>,
}

// SAFETY: a rebaser belongs to no connection and is only used through `&mut self`.
unsafe impl Send for RawRebaser {}

impl RawRebaser {
    pub(crate) fn new() -> Result<Self, Error> {
        // SAFETY: `out` is a valid out-pointer.
        let ptr = construct("sqlite3rebaser_create", |out| unsafe {
            ffi::sqlite3rebaser_create(out)
        })?;
        Ok(RawRebaser { ptr })
    }

    /// Adds the resolutions in a validated rebase buffer.
    pub(crate) fn configure(&mut self, buffer: &[u8]) -> Result<(), Error> {
        let len = c_len(buffer.len())?;
        // Hashed by SQLite's change-group code, which can read one byte past the end.
        let buffer = padded(buffer);
        // SAFETY: the rebaser is live; SQLite copies what it needs from `buffer`, reading `len`
        // bytes and at most the spare byte after them.
        let rc = unsafe {
            ffi::sqlite3rebaser_configure(self.ptr.as_ptr(), len, buffer.as_ptr().cast())
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(code_error(rc, "sqlite3rebaser_configure"))
        }
    }

    /// Rebases a validated changeset.
    pub(crate) fn rebase(&mut self, input: &[u8]) -> Result<Arc<[u8]>, Error> {
        let (mut len, mut buf) = (0, ptr::null_mut());
        let input_len = c_len(input.len())?;
        // Its records are hashed like the change-group code's, which can read one byte past
        // the end.
        let input = padded(input);
        // SAFETY: the rebaser is live; SQLite only reads `input_len` bytes of `input` and at
        // most the spare byte after them; out-pointers are valid.
        let rc = unsafe {
            ffi::sqlite3rebaser_rebase(
                self.ptr.as_ptr(),
                input_len,
                input.as_ptr().cast(),
                &mut len,
                &mut buf,
            )
        };
        if rc != ffi::SQLITE_OK {
            // SAFETY: on error `buf` is NULL or ours to free.
            unsafe { ffi::sqlite3_free(buf) };
            return Err(code_error(rc, "sqlite3rebaser_rebase"));
        }
        // SAFETY: on success `buf` holds `len` bytes from sqlite3_malloc.
        Ok(unsafe { take_buffer(len, buf) })
    }
}

impl Drop for RawRebaser {
    fn drop(&mut self) {
        // SAFETY: the rebaser is live and never used after this.
        unsafe { ffi::sqlite3rebaser_delete(self.ptr.as_ptr()) };
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

/// What an apply reads: a validated blob, or a stream that validates as SQLite pulls from it.
pub(crate) enum ApplyInput<'a, R> {
    Blob(&'a [u8]),
    Stream(&'a mut Input<R>),
}

/// Applies `input` to `main` of `db` with `hooks` as filter and conflict handler, and a progress
/// handler that interrupts the apply once `hooks.should_stop()`. Returns SQLite's result code
/// and, for `rebase`, the rebase buffer (empty unless a conflict was resolved).
///
/// # Safety
/// `db` is valid and locked.
pub(crate) unsafe fn apply<H: ApplyHooks, R: Read>(
    db: NonNull<ffi::sqlite3>,
    input: ApplyInput<'_, R>,
    flags: c_int,
    hooks: &mut H,
    rebase: bool,
) -> Result<(c_int, Arc<[u8]>), Error> {
    let ctx = ptr::from_mut(hooks).cast::<c_void>();
    let (mut rebase_len, mut rebase_buf) = (0, ptr::null_mut());
    let (rebase_len_ptr, rebase_buf_ptr): (*mut c_int, *mut *mut c_void) = if rebase {
        (&mut rebase_len, &mut rebase_buf)
    } else {
        (ptr::null_mut(), ptr::null_mut())
    };
    let blob_len = match &input {
        ApplyInput::Blob(blob) => c_len(blob.len())?,
        ApplyInput::Stream(_) => 0,
    };
    // SAFETY: `db` is valid and locked; the progress handler's context outlives the apply and is
    // removed right after it.
    unsafe {
        ffi::sqlite3_progress_handler(db.as_ptr(), 1000, Some(progress_trampoline::<H>), ctx)
    };
    let rc = match input {
        // SAFETY: `db` is locked; `blob` outlives the call and is only read; the trampolines
        // match the C signatures and `ctx` points to a live `H` for the whole call; the rebase
        // out-pointers are both valid or both NULL.
        ApplyInput::Blob(blob) => unsafe {
            ffi::sqlite3changeset_apply_v2(
                db.as_ptr(),
                blob_len,
                blob.as_ptr().cast_mut().cast(),
                Some(filter_trampoline::<H>),
                Some(conflict_trampoline::<H>),
                ctx,
                rebase_buf_ptr,
                rebase_len_ptr,
                flags,
            )
        },
        // SAFETY: as above, and the input context outlives the call and matches its trampoline.
        ApplyInput::Stream(stream) => unsafe {
            ffi::sqlite3changeset_apply_v2_strm(
                db.as_ptr(),
                Some(input_trampoline::<R>),
                ptr::from_mut(stream).cast(),
                Some(filter_trampoline::<H>),
                Some(conflict_trampoline::<H>),
                ctx,
                rebase_buf_ptr,
                rebase_len_ptr,
                flags,
            )
        },
    };
    // SAFETY: `db` is valid and locked; removes the handler installed above.
    unsafe { ffi::sqlite3_progress_handler(db.as_ptr(), 0, None, ptr::null_mut()) };
    // SAFETY: SQLite set the buffer (sqlite3_malloc'd, or NULL with length 0) or left it NULL.
    let rebase = unsafe { take_buffer(rebase_len, rebase_buf) };
    Ok((rc, rebase))
}
