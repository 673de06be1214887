//! `sqlite3_changeset_iter`: walking the changes of a blob, and reading the change an iterator
//! (or a conflict callback) is on.

use std::ffi::{CStr, c_char, c_int};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use libsqlite3_sys as sys;
use liteorm_core::Value;

use super::{RawError, c_len, check, code_error};

/// What a change does to its row, as the iterator reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawOp {
    Insert,
    Update,
    Delete,
}

/// One decoded change (the crate's `Change` is made from it).
pub(crate) struct RawChange {
    pub(crate) table: Arc<str>,
    pub(crate) op: RawOp,
    pub(crate) indirect: bool,
    pub(crate) pk: Vec<u8>,
    pub(crate) old: Vec<Option<Value>>,
    pub(crate) new: Vec<Option<Value>>,
}

/// Reads an `sqlite3_value` the session API handed out.
///
/// # Safety
/// `value` is a valid protected value that lives for the duration of the call.
unsafe fn read_value(value: *mut sys::sqlite3_value) -> Value {
    // SAFETY: `value` is valid (the caller's promise); lengths come from sqlite3_value_bytes
    // right after the text/blob pointer is fetched, as the SQLite docs prescribe.
    unsafe {
        match sys::sqlite3_value_type(value) {
            sys::SQLITE_INTEGER => Value::Integer(sys::sqlite3_value_int64(value)),
            sys::SQLITE_FLOAT => Value::Real(sys::sqlite3_value_double(value)),
            sys::SQLITE_TEXT => {
                let text = sys::sqlite3_value_text(value);
                let len = usize::try_from(sys::sqlite3_value_bytes(value)).unwrap_or(0);
                if text.is_null() {
                    return Value::Text(String::new());
                }
                let bytes = std::slice::from_raw_parts(text, len);
                Value::Text(String::from_utf8_lossy(bytes).into_owned())
            }
            sys::SQLITE_BLOB => {
                let blob = sys::sqlite3_value_blob(value);
                let len = usize::try_from(sys::sqlite3_value_bytes(value)).unwrap_or(0);
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
    pub(super) iter: *mut sys::sqlite3_changeset_iter,
    pub(super) _life: PhantomData<&'a ()>,
}

type ValueGetter = unsafe extern "C" fn(
    *mut sys::sqlite3_changeset_iter,
    c_int,
    *mut *mut sys::sqlite3_value,
) -> c_int;

impl IterRef<'_> {
    /// Reads values `0..n` with `get`; a NULL pointer (not recorded) becomes `None`.
    fn values(
        &self,
        n: c_int,
        get: ValueGetter,
        context: &'static str,
    ) -> Result<Vec<Option<Value>>, RawError> {
        (0..n)
            .map(|i| {
                let mut value = ptr::null_mut();
                // SAFETY: the iterator is positioned on a change with `n` columns; `i` is in
                // range; `value` is an out-pointer.
                let rc = unsafe { get(self.iter, i, &mut value) };
                check(rc, context)?;
                // SAFETY: a non-NULL value is owned by the iterator and valid until it moves.
                Ok((!value.is_null()).then(|| unsafe { read_value(value) }))
            })
            .collect()
    }

    /// `sqlite3changeset_op` of the current change: name, column count, op code, indirect.
    fn op(&self) -> (c_int, *const c_char, c_int, c_int, c_int) {
        let (mut name, mut n_col, mut op, mut indirect): (*const c_char, c_int, c_int, c_int) =
            (ptr::null(), 0, 0, 0);
        // SAFETY: the iterator is positioned on a change; the out-pointers are valid.
        let rc = unsafe {
            sys::sqlite3changeset_op(self.iter, &mut name, &mut n_col, &mut op, &mut indirect)
        };
        (rc, name, n_col, op, indirect)
    }

    /// The table name of the current change, without reading its values (`None` if it is not
    /// UTF-8).
    pub(crate) fn table(&self) -> Option<&str> {
        let (rc, name, ..) = self.op();
        if rc != sys::SQLITE_OK || name.is_null() {
            return None;
        }
        // SAFETY: the name points into the iterator's current change, which outlives `&self`.
        unsafe { CStr::from_ptr(name) }.to_str().ok()
    }

    /// The table, op and values of the current change. `table_cache` avoids one allocation per
    /// change when consecutive changes are on the same table.
    pub(crate) fn change(&self, table_cache: &mut Option<Arc<str>>) -> Result<RawChange, RawError> {
        let (rc, name, n_col, op, indirect) = self.op();
        check(rc, "sqlite3changeset_op")?;
        if name.is_null() {
            return Err(code_error(sys::SQLITE_CORRUPT, "sqlite3changeset_op"));
        }
        // SAFETY: `name` is a NUL-terminated string owned by the iterator's current change.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        let table = match table_cache {
            Some(cached) if **cached == *name => Arc::clone(cached),
            _ => Arc::clone(table_cache.insert(Arc::from(name.as_ref()))),
        };
        let op = match op {
            sys::SQLITE_INSERT => RawOp::Insert,
            sys::SQLITE_UPDATE => RawOp::Update,
            sys::SQLITE_DELETE => RawOp::Delete,
            _ => return Err(code_error(sys::SQLITE_CORRUPT, "sqlite3changeset_op")),
        };
        let (mut pk_ptr, mut pk_cols) = (ptr::null_mut(), 0);
        // SAFETY: the iterator is positioned on a change; the out-pointers are valid.
        let rc = unsafe { sys::sqlite3changeset_pk(self.iter, &mut pk_ptr, &mut pk_cols) };
        if rc != sys::SQLITE_OK || pk_ptr.is_null() || pk_cols != n_col {
            return Err(code_error(sys::SQLITE_CORRUPT, "sqlite3changeset_pk"));
        }
        let len = usize::try_from(n_col).unwrap_or(0);
        // SAFETY: SQLite reports `n_col` PK flags at `pk_ptr`, owned by the iterator.
        let pk = unsafe { std::slice::from_raw_parts(pk_ptr, len) }.to_vec();
        let old = match op {
            RawOp::Insert => Vec::new(),
            _ => self.values(n_col, sys::sqlite3changeset_old, "sqlite3changeset_old")?,
        };
        let new = match op {
            RawOp::Delete => Vec::new(),
            _ => self.values(n_col, sys::sqlite3changeset_new, "sqlite3changeset_new")?,
        };
        Ok(RawChange {
            table,
            op,
            indirect: indirect != 0,
            pk,
            old,
            new,
        })
    }

    /// Checks the current change the way [`Self::change`] reads it (the same calls in the same
    /// order, so the same errors) without copying anything out: how a blob is validated.
    pub(crate) fn check(&self) -> Result<(), RawError> {
        let (rc, name, n_col, op, _) = self.op();
        check(rc, "sqlite3changeset_op")?;
        if name.is_null() {
            return Err(code_error(sys::SQLITE_CORRUPT, "sqlite3changeset_op"));
        }
        if !matches!(
            op,
            sys::SQLITE_INSERT | sys::SQLITE_UPDATE | sys::SQLITE_DELETE
        ) {
            return Err(code_error(sys::SQLITE_CORRUPT, "sqlite3changeset_op"));
        }
        let (mut pk_ptr, mut pk_cols) = (ptr::null_mut(), 0);
        // SAFETY: the iterator is positioned on a change; the out-pointers are valid.
        let rc = unsafe { sys::sqlite3changeset_pk(self.iter, &mut pk_ptr, &mut pk_cols) };
        if rc != sys::SQLITE_OK || pk_ptr.is_null() || pk_cols != n_col {
            return Err(code_error(sys::SQLITE_CORRUPT, "sqlite3changeset_pk"));
        }
        if op != sys::SQLITE_INSERT {
            self.check_values(n_col, sys::sqlite3changeset_old, "sqlite3changeset_old")?;
        }
        if op != sys::SQLITE_DELETE {
            self.check_values(n_col, sys::sqlite3changeset_new, "sqlite3changeset_new")?;
        }
        Ok(())
    }

    /// Asks for values `0..n` with `get`, as [`Self::values`] does, without reading them.
    fn check_values(
        &self,
        n: c_int,
        get: ValueGetter,
        context: &'static str,
    ) -> Result<(), RawError> {
        for i in 0..n {
            let mut value = ptr::null_mut();
            // SAFETY: as in `values`.
            let rc = unsafe { get(self.iter, i, &mut value) };
            check(rc, context)?;
        }
        Ok(())
    }

    /// The conflicting row of the target table (DATA and CONFLICT conflicts only).
    pub(crate) fn conflicting_row(&self, n_col: usize) -> Result<Vec<Value>, RawError> {
        let n = c_len(n_col)?;
        let values = self.values(
            n,
            sys::sqlite3changeset_conflict,
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
        // SAFETY: the iterator is live; SQLite returns SQLITE_MISUSE unless it is a FOREIGN_KEY
        // conflict callback's; `n` is an out-pointer.
        let rc = unsafe { sys::sqlite3changeset_fk_conflicts(self.iter, &mut n) };
        if rc == sys::SQLITE_OK {
            usize::try_from(n).unwrap_or(0)
        } else {
            0
        }
    }
}

/// An iterator over the changes of a blob.
pub(crate) struct ChangesetIter<'a> {
    pub(super) iter: NonNull<sys::sqlite3_changeset_iter>,
    pub(super) _blob: PhantomData<&'a [u8]>,
}

// SAFETY: an iterator belongs to no connection and has no thread affinity; it is only used
// through `&mut self` (or `&self` for reads between moves), so moving it between threads is fine.
unsafe impl Send for ChangesetIter<'_> {}

impl<'a> ChangesetIter<'a> {
    /// Starts iterating `blob`, which SQLite reads but never writes, inverted if `invert` (`SQLITE_CHANGESETSTART_INVERT`: inserts
    /// read as deletes, deletes as inserts, and an update's old and new values swapped).
    pub(crate) fn start_v2(blob: &'a [u8], invert: bool) -> Result<Self, RawError> {
        let len = c_len(blob.len())?;
        let flags = if invert {
            sys::SQLITE_CHANGESETSTART_INVERT
        } else {
            0
        };
        let iter = super::construct("sqlite3changeset_start_v2", |out| {
            // SAFETY: `blob` outlives the iterator (lifetime `'a`) and SQLite only reads it;
            // `out` is a valid out-pointer.
            unsafe {
                sys::sqlite3changeset_start_v2(out, len, blob.as_ptr().cast_mut().cast(), flags)
            }
        })?;
        Ok(ChangesetIter {
            iter,
            _blob: PhantomData,
        })
    }

    /// Moves to the next change; `Ok(false)` at the end.
    pub(crate) fn advance(&mut self) -> Result<bool, RawError> {
        // SAFETY: the iterator is live.
        match unsafe { sys::sqlite3changeset_next(self.iter.as_ptr()) } {
            sys::SQLITE_ROW => Ok(true),
            sys::SQLITE_DONE => Ok(false),
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
        unsafe { sys::sqlite3changeset_finalize(self.iter.as_ptr()) };
    }
}
