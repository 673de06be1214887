//! Every `unsafe` call into libsqlite3-sys, each with a `// SAFETY:` line, split by concern
//! (session, iter, stream, group, rebase, apply). The rest of the crate is safe code over the
//! wrappers here.
//!
//! A leaf: it imports nothing else of the crate. Failures are [`RawError`]s (one [`check`] turns
//! a result code into one), which the crate's `Error` converts from. Calls on a connection take
//! a [`Handle`], which only the dialect's raw access (`PinnedGuard::with_raw*`) creates and
//! which proves the connection valid and locked for the call, so they are safe functions.

mod apply;
mod group;
mod iter;
mod rebase;
mod session;
mod stream;

use std::ffi::{CStr, CString, c_int, c_void};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use libsqlite3_sys as sys;
pub(crate) use liteorm_sqlite::raw::Handle;

pub(crate) use apply::{ApplyFlags, ApplyHooks, ApplyInput, RawConflict, Verdict, apply};
pub(crate) use group::{RawChangegroup, RawSchemaGroup, concat, invert};
pub(crate) use iter::{ChangesetIter, IterRef, RawChange, RawOp};
pub(crate) use rebase::RawRebaser;
pub(crate) use session::{RawSession, TableFilter, TableFilterFn, live_sessions};
pub(crate) use stream::{Input, Output, StreamError, StreamIter, concat_strm, invert_strm};

/// A failed call into SQLite, before the crate turns it into its `Error`.
#[derive(Debug)]
pub(crate) enum RawError {
    /// SQLite returned `code`.
    Sqlite {
        /// SQLite's (extended) result code.
        code: c_int,
        /// SQLite's message.
        message: String,
        /// The call that failed.
        context: &'static str,
    },
    /// A blob is larger than the in-memory C API takes.
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A table name holds a NUL byte.
    InvalidName(String),
    /// A stream's reader or writer failed (its error wins over SQLite's, which only says I/O).
    Stream(StreamError),
}

impl RawError {
    /// SQLite's result code, if SQLite reported the failure.
    pub(crate) fn code(&self) -> Option<c_int> {
        match self {
            RawError::Sqlite { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether SQLite reported `SQLITE_SCHEMA` (a change does not fit the schema).
    pub(crate) fn is_schema(&self) -> bool {
        self.code() == Some(sys::SQLITE_SCHEMA)
    }
}

/// The one conversion of a result code: `Ok` for `SQLITE_OK`, else an error with SQLite's
/// English text for the code.
pub(crate) fn check(rc: c_int, context: &'static str) -> Result<(), RawError> {
    if rc == sys::SQLITE_OK {
        Ok(())
    } else {
        Err(code_error(rc, context))
    }
}

/// [`check`] for a call on `db`: the error carries the connection's message when it has one.
pub(crate) fn check_on(db: Handle<'_>, rc: c_int, context: &'static str) -> Result<(), RawError> {
    if rc == sys::SQLITE_OK {
        Ok(())
    } else {
        Err(db_error(db, rc, context))
    }
}

/// Converts a blob length to the `int` the C API takes; changesets over 2 GiB need the
/// streaming API.
fn c_len(len: usize) -> Result<c_int, RawError> {
    c_int::try_from(len).map_err(|_| RawError::TooLarge { len })
}

/// The English text SQLite has for a result code.
fn errstr(rc: c_int) -> String {
    // SAFETY: sqlite3_errstr accepts any code and returns a static, NUL-terminated string.
    let text = unsafe { CStr::from_ptr(sys::sqlite3_errstr(rc)) };
    text.to_string_lossy().into_owned()
}

/// An error for a failed call that has no connection (blob functions).
fn code_error(rc: c_int, context: &'static str) -> RawError {
    RawError::Sqlite {
        code: rc,
        message: errstr(rc),
        context,
    }
}

/// An `SQLITE_MISUSE` error named by `context` (for input SQLite should never produce).
pub(crate) fn misuse(context: &'static str) -> RawError {
    code_error(sys::SQLITE_MISUSE, context)
}

/// An error for a failed call on `db`, with the connection's message when it has one.
fn db_error(db: Handle<'_>, rc: c_int, context: &'static str) -> RawError {
    // SAFETY: `db` is a valid, locked handle (a `Handle` proves it); errmsg returns a string
    // owned by the connection that we copy before any other call on it.
    let message = unsafe { CStr::from_ptr(sys::sqlite3_errmsg(db.as_ptr())) }.to_string_lossy();
    let message = if message == "not an error" {
        errstr(rc)
    } else {
        message.into_owned()
    };
    RawError::Sqlite {
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
        // SAFETY: sqlite3_free accepts NULL, and a non-NULL `buf` came from sqlite3_malloc.
        unsafe { sys::sqlite3_free(buf) };
        return Arc::from(&[][..]);
    }
    let len = usize::try_from(len).unwrap_or(0);
    // SAFETY: the caller guarantees `buf` holds `len` initialised bytes.
    let bytes = Arc::from(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) });
    // SAFETY: `buf` came from sqlite3_malloc and is not used again.
    unsafe { sys::sqlite3_free(buf) };
    bytes
}

/// Frees what a failed C call may have left in a buffer out-pointer, then returns its error.
fn discard_buffer(buf: *mut c_void, error: RawError) -> RawError {
    // SAFETY: on error SQLite leaves the buffer NULL or sets it to memory from sqlite3_malloc
    // that the caller owns; it is not used after this.
    unsafe { sys::sqlite3_free(buf) };
    error
}

/// Calls a C function that fills a buffer out-pointer, and takes the buffer.
fn take_output(
    context: &'static str,
    call: impl FnOnce(&mut c_int, &mut *mut c_void) -> c_int,
) -> Result<Arc<[u8]>, RawError> {
    let (mut len, mut buf) = (0, ptr::null_mut());
    let rc = call(&mut len, &mut buf);
    check(rc, context).map_err(|err| discard_buffer(buf, err))?;
    // SAFETY: on success `buf` holds `len` bytes from sqlite3_malloc (or is NULL with 0).
    Ok(unsafe { take_buffer(len, buf) })
}

/// Calls a C constructor that fills an out-pointer, turning its result code and a NULL object
/// into errors named by `context`.
fn construct<T>(
    context: &'static str,
    make: impl FnOnce(*mut *mut T) -> c_int,
) -> Result<NonNull<T>, RawError> {
    let mut out = ptr::null_mut();
    check(make(&mut out), context)?;
    NonNull::new(out).ok_or_else(|| code_error(sys::SQLITE_NOMEM, context))
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
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

/// The SQLite library's version number at run time, e.g. 3040001.
pub(crate) fn libversion_number() -> c_int {
    // SAFETY: no preconditions.
    unsafe { sys::sqlite3_libversion_number() }
}

/// Runs `sql` (no parameters, no rows) on `db`.
pub(crate) fn exec(db: Handle<'_>, sql: &CStr, context: &'static str) -> Result<(), RawError> {
    // SAFETY: `db` is valid and locked (a `Handle` proves it); `sql` is NUL-terminated; no
    // callback, no error out-param.
    let rc = unsafe {
        sys::sqlite3_exec(
            db.as_ptr(),
            sql.as_ptr(),
            None,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    check_on(db, rc, context)
}

/// Whether `db` is inside an explicit transaction.
pub(crate) fn in_transaction(db: Handle<'_>) -> bool {
    // SAFETY: `db` is valid and locked (a `Handle` proves it).
    unsafe { sys::sqlite3_get_autocommit(db.as_ptr()) == 0 }
}

/// A prepared statement on a locked connection, finalized on drop.
struct Statement<'a> {
    stmt: NonNull<sys::sqlite3_stmt>,
    db: Handle<'a>,
}

impl<'a> Statement<'a> {
    fn prepare(db: Handle<'a>, sql: &CStr, context: &'static str) -> Result<Self, RawError> {
        let mut stmt = ptr::null_mut();
        // SAFETY: `db` is valid and locked (a `Handle` proves it); `sql` is NUL-terminated
        // (-1 = read to the NUL); `stmt` is an out-pointer.
        let rc = unsafe {
            sys::sqlite3_prepare_v2(db.as_ptr(), sql.as_ptr(), -1, &mut stmt, ptr::null_mut())
        };
        check_on(db, rc, context)?;
        let stmt = NonNull::new(stmt).ok_or_else(|| db_error(db, sys::SQLITE_MISUSE, context))?;
        Ok(Statement { stmt, db })
    }

    /// Binds text `param` to parameter `index` (1-based).
    fn bind_text(
        &mut self,
        index: usize,
        param: &str,
        context: &'static str,
    ) -> Result<(), RawError> {
        let index = c_int::try_from(index).unwrap_or(c_int::MAX);
        let len = c_len(param.len())?;
        // SAFETY: the statement is live; SQLITE_TRANSIENT makes SQLite copy the text.
        let rc = unsafe {
            sys::sqlite3_bind_text(
                self.stmt.as_ptr(),
                index,
                param.as_ptr().cast(),
                len,
                sys::SQLITE_TRANSIENT(),
            )
        };
        check_on(self.db, rc, context)
    }

    /// Steps to the next row: `Ok(true)` on a row, `Ok(false)` when done.
    fn step(&mut self, context: &'static str) -> Result<bool, RawError> {
        // SAFETY: the statement is live on the locked connection.
        match unsafe { sys::sqlite3_step(self.stmt.as_ptr()) } {
            sys::SQLITE_ROW => Ok(true),
            sys::SQLITE_DONE => Ok(false),
            rc => Err(db_error(self.db, rc, context)),
        }
    }

    fn column_count(&self) -> c_int {
        // SAFETY: the statement is live.
        unsafe { sys::sqlite3_column_count(self.stmt.as_ptr()) }
    }

    /// Column `i` of the current row as an integer.
    fn column_int(&self, i: c_int) -> c_int {
        // SAFETY: the statement is live and has a current row (after `step` returned `true`);
        // an out-of-range column reads as 0.
        unsafe { sys::sqlite3_column_int(self.stmt.as_ptr(), i) }
    }

    /// Column `i` of the current row as text (`None` for NULL).
    fn column_text(&self, i: c_int) -> Option<String> {
        // SAFETY: the statement is live and has a current row; the length is read right after
        // the text pointer, and the text is copied before the next call on the statement.
        unsafe {
            let text = sys::sqlite3_column_text(self.stmt.as_ptr(), i);
            let len =
                usize::try_from(sys::sqlite3_column_bytes(self.stmt.as_ptr(), i)).unwrap_or(0);
            (!text.is_null()).then(|| {
                let bytes = std::slice::from_raw_parts(text, len);
                String::from_utf8_lossy(bytes).into_owned()
            })
        }
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live on the locked connection and not used after this.
        unsafe { sys::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// The primary-key position of each column of `main.<table>` as `PRAGMA table_info` reports it
/// (0 for columns outside the key), modulo 256 as SQLite's session extension stores it, or
/// `None` if there is no such table.
pub(crate) fn table_pk(db: Handle<'_>, table: &str) -> Result<Option<Vec<u8>>, RawError> {
    // The pragma itself, not the `pragma_table_info` table-valued function, which prepares this
    // same pragma inside on every run. The name is quoted as an identifier; rows come in column
    // order. No table name holds a NUL.
    let sql = format!("PRAGMA main.table_info(\"{}\")", table.replace('"', "\"\""));
    let Ok(sql) = CString::new(sql) else {
        return Ok(None);
    };
    let mut stmt = Statement::prepare(db, &sql, "reading table schema")?;
    let mut pk = Vec::new();
    while stmt.step("reading table schema")? {
        // `pk` is the sixth column. The low byte, as the session extension keeps it (`abPK[i] =
        // sqlite3_column_int(pStmt, 5)` into a `u8`): key position 256 is 0 there, and headers
        // and compatibility checks must agree with SQLite's.
        pk.push(stmt.column_int(5).to_le_bytes()[0]);
    }
    Ok((!pk.is_empty()).then_some(pk))
}

/// Runs `sql` with text parameters `params` (`?1`, `?2`, ...) and returns every row, each column
/// as text (`None` for NULL).
pub(crate) fn query_text(
    db: Handle<'_>,
    sql: &CStr,
    params: &[&str],
    context: &'static str,
) -> Result<Vec<Vec<Option<String>>>, RawError> {
    let mut stmt = Statement::prepare(db, sql, context)?;
    for (i, param) in params.iter().enumerate() {
        stmt.bind_text(i + 1, param, context)?;
    }
    let columns = stmt.column_count();
    let mut rows = Vec::new();
    while stmt.step(context)? {
        rows.push((0..columns).map(|i| stmt.column_text(i)).collect());
    }
    Ok(rows)
}
