//! The raw baseline's SQLite calls: a connection opened with `sqlite3_open_v2`, statements run
//! with `sqlite3_exec` or prepared once, changesets recorded with a session object and applied
//! with a plain `sqlite3changeset_apply`. Every `unsafe` call of the benchmark lives in this
//! module.

use std::ffi::{CStr, CString, c_int, c_void};
use std::ptr::{self, NonNull};

use libsqlite3_sys as ffi;

use crate::BoxError;

/// An owned connection (`READWRITE | CREATE | NOMUTEX`, as sqlx opens liteorm's), closed on
/// drop.
pub(crate) struct RawDb {
    ptr: NonNull<ffi::sqlite3>,
}

// SAFETY: the connection is opened with SQLITE_OPEN_NOMUTEX, which only forbids *concurrent*
// use; `RawDb` is used through `&mut self` or `&self` by one task at a time, so moving it to
// another thread is fine.
unsafe impl Send for RawDb {}

impl RawDb {
    /// Opens (creating) the database file at `path`.
    pub(crate) fn open(path: &str) -> Result<RawDb, BoxError> {
        let name = CString::new(path)?;
        let mut db = ptr::null_mut();
        let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE | ffi::SQLITE_OPEN_NOMUTEX;
        // SAFETY: `name` is NUL-terminated; `db` is an out-pointer; default VFS.
        let rc = unsafe { ffi::sqlite3_open_v2(name.as_ptr(), &mut db, flags, ptr::null()) };
        let Some(ptr) = NonNull::new(db) else {
            return Err(format!("sqlite3_open_v2: out of memory (SQLite code {rc})").into());
        };
        let db = RawDb { ptr };
        if rc != ffi::SQLITE_OK {
            return Err(db.error(rc, "sqlite3_open_v2"));
        }
        Ok(db)
    }

    /// Runs `sql` (one or more statements without parameters or results).
    pub(crate) fn exec(&self, sql: &str) -> Result<(), BoxError> {
        let sql = CString::new(sql)?;
        // SAFETY: the connection is open; `sql` is NUL-terminated; no callback, no error
        // buffer (the message is read from the connection).
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

    /// `sqlite3changeset_apply` of `changeset`, every table, aborting on any conflict.
    pub(crate) fn apply(&self, changeset: &[u8]) -> Result<(), BoxError> {
        let len = c_int::try_from(changeset.len())?;
        // SAFETY: the connection is open; the blob outlives the call and SQLite only reads it
        // (the C API lacks `const`); the handler ignores its context, which is null.
        let rc = unsafe {
            ffi::sqlite3changeset_apply(
                self.ptr.as_ptr(),
                len,
                changeset.as_ptr().cast_mut().cast(),
                None,
                Some(abort_on_conflict),
                ptr::null_mut(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error(rc, "sqlite3changeset_apply"))
        }
    }

    /// Prepares `sql`, one statement.
    pub(crate) fn prepare(&self, sql: &str) -> Result<Statement<'_>, BoxError> {
        let sql = CString::new(sql)?;
        let mut stmt = ptr::null_mut();
        // SAFETY: the connection is open; `sql` is NUL-terminated; `stmt` is an out-pointer.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                self.ptr.as_ptr(),
                sql.as_ptr(),
                -1,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        match NonNull::new(stmt) {
            Some(ptr) if rc == ffi::SQLITE_OK => Ok(Statement { ptr, db: self }),
            _ => Err(self.error(rc, "sqlite3_prepare_v2")),
        }
    }

    /// Runs `f` with a session object recording `table`, and returns the changeset it recorded.
    pub(crate) fn capture(
        &self,
        table: &str,
        f: impl FnOnce() -> Result<(), BoxError>,
    ) -> Result<Vec<u8>, BoxError> {
        /// Deletes the session object however the capture ends.
        struct Session(*mut ffi::sqlite3_session);
        impl Drop for Session {
            fn drop(&mut self) {
                // SAFETY: a live session object (or NULL, which is a no-op), deleted once.
                unsafe { ffi::sqlite3session_delete(self.0) };
            }
        }
        let table = CString::new(table)?;
        let mut session = Session(ptr::null_mut());
        // SAFETY: the connection is open; `session.0` is an out-pointer.
        let rc = unsafe {
            ffi::sqlite3session_create(self.ptr.as_ptr(), c"main".as_ptr(), &mut session.0)
        };
        if rc != ffi::SQLITE_OK || session.0.is_null() {
            return Err(self.error(rc, "sqlite3session_create"));
        }
        // SAFETY: a live session object; `table` is NUL-terminated.
        let rc = unsafe { ffi::sqlite3session_attach(session.0, table.as_ptr()) };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc, "sqlite3session_attach"));
        }
        f()?;
        let (mut len, mut buf) = (0, ptr::null_mut());
        // SAFETY: a live session object; both are out-pointers.
        let rc = unsafe { ffi::sqlite3session_changeset(session.0, &mut len, &mut buf) };
        let changeset = match (usize::try_from(len), buf.is_null()) {
            (Ok(len), false) if len > 0 => {
                // SAFETY: SQLite returned `len` bytes at `buf`, copied before it is freed.
                unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec()
            }
            _ => Vec::new(),
        };
        // SAFETY: `buf` came from sqlite3_malloc (or is NULL, which is a no-op).
        unsafe { ffi::sqlite3_free(buf) };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc, "sqlite3session_changeset"));
        }
        Ok(changeset)
    }

    fn error(&self, rc: c_int, context: &str) -> BoxError {
        // SAFETY: the connection is open; sqlite3_errmsg returns a NUL-terminated string valid
        // until the next call on it, copied here at once.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.ptr.as_ptr())) }
            .to_string_lossy()
            .into_owned();
        format!("{context}: {message} (SQLite code {rc})").into()
    }
}

impl Drop for RawDb {
    fn drop(&mut self) {
        // SAFETY: the connection is open and not used after this; it has no statements left
        // (`exec` and `apply` finalize theirs, and a `Statement` borrows the connection, so it
        // was dropped before).
        unsafe { ffi::sqlite3_close(self.ptr.as_ptr()) };
    }
}

/// A parameter of [`Statement::run`].
pub(crate) enum Param<'a> {
    Int(i64),
    Blob(&'a [u8]),
}

/// A statement prepared once on a [`RawDb`], finalized on drop.
pub(crate) struct Statement<'db> {
    ptr: NonNull<ffi::sqlite3_stmt>,
    db: &'db RawDb,
}

impl Statement<'_> {
    /// Binds `params` (`?1`, `?2`, ...), steps to the end and resets.
    pub(crate) fn run(&mut self, params: &[Param<'_>]) -> Result<(), BoxError> {
        let stmt = self.ptr.as_ptr();
        for (i, param) in (1..).zip(params) {
            // SAFETY: a live statement of an open connection; `i` is a parameter index; a blob
            // is copied by SQLite (SQLITE_TRANSIENT).
            let rc = unsafe {
                match param {
                    Param::Int(v) => ffi::sqlite3_bind_int64(stmt, i, *v),
                    Param::Blob(b) => ffi::sqlite3_bind_blob(
                        stmt,
                        i,
                        b.as_ptr().cast(),
                        c_int::try_from(b.len())?,
                        ffi::SQLITE_TRANSIENT(),
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(self.db.error(rc, "sqlite3_bind"));
            }
        }
        // SAFETY: as above.
        let rc = unsafe { ffi::sqlite3_step(stmt) };
        // SAFETY: as above; the step's error stays readable on the connection.
        unsafe { ffi::sqlite3_reset(stmt) };
        if rc == ffi::SQLITE_DONE {
            Ok(())
        } else {
            Err(self.db.error(rc, "sqlite3_step"))
        }
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        // SAFETY: a live statement, finalized once.
        unsafe { ffi::sqlite3_finalize(self.ptr.as_ptr()) };
    }
}

/// The conflict handler: the baseline's replica expects none, so any conflict aborts the apply.
unsafe extern "C" fn abort_on_conflict(
    _ctx: *mut c_void,
    _kind: c_int,
    _iter: *mut ffi::sqlite3_changeset_iter,
) -> c_int {
    ffi::SQLITE_CHANGESET_ABORT
}
