//! `sqlite3_changegroup` and the blob functions built on the same code: merging, concatenating
//! and inverting changesets.

use std::io::{Read, Write};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use libsqlite3_sys as sys;

use super::Handle;
#[cfg(sqlite_has_changegroup_add_change)]
use super::iter::ChangesetIter;
use super::stream::{Input, Output, input_trampoline, output_trampoline, stream_result};
use super::{RawError, c_len, check, construct, padded, take_output};

/// Inverts a changeset (patchsets cannot be inverted: SQLite reports SQLITE_CORRUPT).
pub(crate) fn invert(input: &[u8]) -> Result<Arc<[u8]>, RawError> {
    let input_len = c_len(input.len())?;
    take_output("sqlite3changeset_invert", |len, buf| {
        // SAFETY: `input` is valid for its length and only read by SQLite; the out-pointers
        // are valid.
        unsafe { sys::sqlite3changeset_invert(input_len, input.as_ptr().cast(), len, buf) }
    })
}

/// Concatenates two changesets (or two patchsets).
pub(crate) fn concat(a: &[u8], b: &[u8]) -> Result<Arc<[u8]>, RawError> {
    let (a_len, b_len) = (c_len(a.len())?, c_len(b.len())?);
    let (a, b) = (padded(a), padded(b));
    take_output("sqlite3changeset_concat", |len, buf| {
        // SAFETY: SQLite only reads the inputs (the C API lacks `const`), `a_len`/`b_len` bytes
        // of each and at most the spare byte after them; the out-pointers are valid.
        unsafe {
            sys::sqlite3changeset_concat(
                a_len,
                a.as_ptr().cast_mut().cast(),
                b_len,
                b.as_ptr().cast_mut().cast(),
                len,
                buf,
            )
        }
    })
}

/// A `sqlite3_changegroup`: changes merged in memory. It belongs to no connection, unless
/// [`RawChangegroup::schema`] gave it one for `'db`.
pub(crate) struct RawChangegroup<'db> {
    ptr: NonNull<sys::sqlite3_changegroup>,
    _db: PhantomData<&'db ()>,
}

// SAFETY: a changegroup is only mutated through `&mut self`; the connection `schema` may give it
// is used only during calls on the group, which its `Handle` lifetime keeps inside the access
// that locked it.
unsafe impl Send for RawChangegroup<'_> {}

impl<'db> RawChangegroup<'db> {
    pub(crate) fn new() -> Result<Self, RawError> {
        // SAFETY: `out` is a valid out-pointer.
        let ptr = construct("sqlite3changegroup_new", |out| unsafe {
            sys::sqlite3changegroup_new(out)
        })?;
        Ok(RawChangegroup {
            ptr,
            _db: PhantomData,
        })
    }

    /// Conforms every change added from now on to the schema of `main` of `db`, which the
    /// group reads (lazily, while adding) until it is dropped, within `'db`.
    #[cfg(sqlite_has_changegroup_schema)]
    pub(crate) fn schema(&mut self, db: Handle<'db>) -> Result<(), RawError> {
        // SAFETY: `db` is valid and locked for `'db` (a `Handle` proves it), which the group
        // cannot outlive; "main" is NUL-terminated.
        let rc = unsafe {
            sys::sqlite3changegroup_schema(self.ptr.as_ptr(), db.as_ptr(), c"main".as_ptr())
        };
        check(rc, "sqlite3changegroup_schema")
    }

    /// Adds every change of a validated blob.
    pub(crate) fn add(&mut self, blob: &[u8]) -> Result<(), RawError> {
        let len = c_len(blob.len())?;
        let blob = padded(blob);
        // SAFETY: the group is live; SQLite only reads `len` bytes of `blob` and at most the
        // spare byte after them (the C API lacks `const`), and copies what it keeps.
        let rc = unsafe {
            sys::sqlite3changegroup_add(self.ptr.as_ptr(), len, blob.as_ptr().cast_mut().cast())
        };
        check(rc, "sqlite3changegroup_add")
    }

    /// Adds the change `iter` is on.
    #[cfg(sqlite_has_changegroup_add_change)]
    pub(crate) fn add_change(&mut self, iter: &ChangesetIter<'_>) -> Result<(), RawError> {
        // SAFETY: the group and the iterator are live; the iterator is positioned on a change.
        let rc =
            unsafe { sys::sqlite3changegroup_add_change(self.ptr.as_ptr(), iter.iter.as_ptr()) };
        check(rc, "sqlite3changegroup_add_change")
    }

    /// Adds every change `input` reads.
    pub(crate) fn add_strm<R: Read>(&mut self, input: &mut Input<R>) -> Result<(), RawError> {
        // SAFETY: the group is live; the context outlives the call and matches the trampoline.
        let rc = unsafe {
            sys::sqlite3changegroup_add_strm(
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
    pub(crate) fn output(&self) -> Result<Arc<[u8]>, RawError> {
        let group = self.ptr.as_ptr();
        take_output("sqlite3changegroup_output", |len, buf| {
            // SAFETY: the group is live; the out-pointers are valid.
            unsafe { sys::sqlite3changegroup_output(group, len, buf) }
        })
    }

    /// Writes the merged changes to `output`.
    pub(crate) fn output_strm<W: Write>(&self, output: &mut Output<W>) -> Result<(), RawError> {
        // SAFETY: the group is live; the context outlives the call and matches the trampoline.
        let rc = unsafe {
            sys::sqlite3changegroup_output_strm(
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

impl Drop for RawChangegroup<'_> {
    fn drop(&mut self) {
        // SAFETY: the group is live and never used after this.
        unsafe { sys::sqlite3changegroup_delete(self.ptr.as_ptr()) };
    }
}

/// A changegroup conformed to the schema of one connection's `main`, kept across many raw
/// accesses of that connection: every call that may read the schema takes the connection's
/// [`Handle`] and checks it is the one the group was made for (as [`super::RawSession`] does).
#[cfg(sqlite_has_changegroup_schema)]
pub(crate) struct RawSchemaGroup {
    group: RawChangegroup<'static>,
    db: NonNull<sys::sqlite3>,
}

// SAFETY: the group is only used through `&mut self`/`&self`; the connection is only touched
// inside calls that take its `Handle`, so on the thread and within the access that locked it.
#[cfg(sqlite_has_changegroup_schema)]
unsafe impl Send for RawSchemaGroup {}

#[cfg(sqlite_has_changegroup_schema)]
impl RawSchemaGroup {
    /// A group that reads the schema of `main` of `db` whenever it meets a new table. The
    /// connection must stay open while the group lives (its owner keeps it pinned).
    pub(crate) fn new(db: Handle<'_>) -> Result<Self, RawError> {
        let mut group = RawChangegroup::new()?;
        // SAFETY: `db` is valid and locked now; SQLite keeps the pointer and uses it again only
        // inside `add`, which checks it is given the same connection's handle
        // (valid and locked then too). The owner keeps the connection open while the group
        // lives (documented above), and nothing else of the group reads the schema.
        let db_static = unsafe { Handle::from_raw(db.as_non_null()) };
        group.schema(db_static)?;
        Ok(RawSchemaGroup {
            group,
            db: db.as_non_null(),
        })
    }

    fn check(&self, db: Handle<'_>) {
        assert_eq!(
            db.as_non_null(),
            self.db,
            "a schema changegroup is used with the handle of its own connection"
        );
    }

    /// Adds every change of a validated blob, conformed to the schema.
    pub(crate) fn add(&mut self, db: Handle<'_>, blob: &[u8]) -> Result<(), RawError> {
        self.check(db);
        self.group.add(blob)
    }

    /// The merged changes (the schema is not read).
    pub(crate) fn output(&self) -> Result<Arc<[u8]>, RawError> {
        self.group.output()
    }
}

/// Where SQLite has no changegroup schemas: never made (callers check the capability first).
#[cfg(not(sqlite_has_changegroup_schema))]
pub(crate) enum RawSchemaGroup {}

#[cfg(not(sqlite_has_changegroup_schema))]
impl RawSchemaGroup {
    pub(crate) fn new(_db: Handle<'_>) -> Result<Self, RawError> {
        Err(super::misuse("changegroup schemas are not compiled in"))
    }

    pub(crate) fn add(&mut self, _db: Handle<'_>, _blob: &[u8]) -> Result<(), RawError> {
        match *self {}
    }

    pub(crate) fn output(&self) -> Result<Arc<[u8]>, RawError> {
        match *self {}
    }
}
