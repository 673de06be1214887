//! The raw baseline's SQLite calls: a connection opened with `sqlite3_open_v2`, statements run
//! with `sqlite3_exec`, changesets applied with a plain `sqlite3changeset_apply`. Every `unsafe`
//! call of the benchmark lives in this module.

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
        // (`exec` and `apply` finalize theirs).
        unsafe { ffi::sqlite3_close(self.ptr.as_ptr()) };
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
