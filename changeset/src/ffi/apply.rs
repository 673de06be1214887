//! `sqlite3changeset_apply_v2`, or `_v3` for a per-change filter (blob and stream): the filter,
//! conflict and progress callbacks are trampolines that catch panics, hand them to the hooks and
//! answer ABORT.

use std::any::Any;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::io::Read;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::Arc;

use libsqlite3_sys as sys;

use super::iter::IterRef;
use super::stream::{Input, input_trampoline};
use super::{Handle, RawError, c_len, check_on, take_buffer};

/// Why a change conflicted, as SQLite reports it to the conflict callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawConflict {
    Data,
    NotFound,
    Conflict,
    Constraint,
    ForeignKey,
}

impl RawConflict {
    fn from_code(code: c_int) -> Option<Self> {
        Some(match code {
            sys::SQLITE_CHANGESET_DATA => RawConflict::Data,
            sys::SQLITE_CHANGESET_NOTFOUND => RawConflict::NotFound,
            sys::SQLITE_CHANGESET_CONFLICT => RawConflict::Conflict,
            sys::SQLITE_CHANGESET_CONSTRAINT => RawConflict::Constraint,
            sys::SQLITE_CHANGESET_FOREIGN_KEY => RawConflict::ForeignKey,
            _ => return None,
        })
    }
}

/// A conflict callback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Omit,
    Replace,
    Abort,
}

impl Verdict {
    fn code(self) -> c_int {
        match self {
            Verdict::Omit => sys::SQLITE_CHANGESET_OMIT,
            Verdict::Replace => sys::SQLITE_CHANGESET_REPLACE,
            Verdict::Abort => sys::SQLITE_CHANGESET_ABORT,
        }
    }
}

/// The `sqlite3changeset_apply_v2` flags (those this SQLite was built without are never set:
/// the caller checks the capability first).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApplyFlags {
    pub(crate) no_savepoint: bool,
    pub(crate) invert: bool,
    pub(crate) ignore_noop: bool,
    pub(crate) fk_no_action: bool,
}

impl ApplyFlags {
    fn bits(self) -> c_int {
        let mut bits = 0;
        if self.no_savepoint {
            bits |= sys::SQLITE_CHANGESETAPPLY_NOSAVEPOINT;
        }
        if self.invert {
            bits |= sys::SQLITE_CHANGESETAPPLY_INVERT;
        }
        #[cfg(sqlite_has_ignorenoop)]
        if self.ignore_noop {
            bits |= sys::SQLITE_CHANGESETAPPLY_IGNORENOOP;
        }
        #[cfg(sqlite_has_fknoaction)]
        if self.fk_no_action {
            bits |= sys::SQLITE_CHANGESETAPPLY_FKNOACTION;
        }
        #[cfg(not(sqlite_has_ignorenoop))]
        let _ = self.ignore_noop;
        #[cfg(not(sqlite_has_fknoaction))]
        let _ = self.fk_no_action;
        bits
    }
}

/// What an apply's callbacks do; implemented by the apply module.
pub(crate) trait ApplyHooks {
    /// Whether to apply the changes of `table`.
    fn filter(&mut self, table: &str) -> bool;
    /// Whether there is a filter per change (then SQLite's per-change filter is used where
    /// linked, and [`ApplyHooks::filter_change`] replaces [`ApplyHooks::filter`]).
    #[cfg(sqlite_has_apply_v3)]
    fn filters_changes(&self) -> bool;
    /// Whether to apply the change `iter` is on (its table's schema already matched).
    #[cfg(sqlite_has_apply_v3)]
    fn filter_change(&mut self, iter: IterRef<'_>) -> bool;
    /// The verdict for conflict `kind` on `iter` (`None`: a kind this crate does not know,
    /// which aborts).
    fn conflict(&mut self, kind: Option<RawConflict>, iter: IterRef<'_>) -> Verdict;
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
    // SAFETY: SQLite passes a NUL-terminated table name that lives for the call.
    let table = unsafe { CStr::from_ptr(table) }.to_string_lossy();
    match catch_unwind(AssertUnwindSafe(|| hooks.filter(&table))) {
        Ok(keep) => c_int::from(keep),
        Err(payload) => {
            hooks.panicked("table filter", payload);
            0
        }
    }
}

#[cfg(sqlite_has_apply_v3)]
unsafe extern "C" fn change_filter_trampoline<H: ApplyHooks>(
    ctx: *mut c_void,
    iter: *mut sys::sqlite3_changeset_iter,
) -> c_int {
    // SAFETY: `ctx` is the `&mut H` passed to `apply`, alive and not aliased during the call.
    let hooks = unsafe { &mut *ctx.cast::<H>() };
    if hooks.should_stop() {
        return 0;
    }
    let iter = IterRef {
        iter,
        _life: PhantomData,
    };
    // The change filter's own panics are caught by the hooks; what reaches here is the table
    // filter's.
    match catch_unwind(AssertUnwindSafe(|| hooks.filter_change(iter))) {
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
    iter: *mut sys::sqlite3_changeset_iter,
) -> c_int {
    // SAFETY: `ctx` is the `&mut H` passed to `apply`, alive and not aliased during the call.
    let hooks = unsafe { &mut *ctx.cast::<H>() };
    if hooks.should_stop() {
        return sys::SQLITE_CHANGESET_ABORT;
    }
    let iter = IterRef {
        iter,
        _life: PhantomData,
    };
    let kind = RawConflict::from_code(kind);
    match catch_unwind(AssertUnwindSafe(|| hooks.conflict(kind, iter))) {
        Ok(verdict) => verdict.code(),
        Err(payload) => {
            hooks.panicked("conflict handler", payload);
            sys::SQLITE_CHANGESET_ABORT
        }
    }
}

unsafe extern "C" fn progress_trampoline<H: ApplyHooks>(ctx: *mut c_void) -> c_int {
    // SAFETY: `ctx` is the `&mut H` passed to `apply`; `should_stop` only reads it.
    let hooks = unsafe { &*ctx.cast::<H>() };
    c_int::from(hooks.should_stop())
}

/// What SQLite made of an apply (its outcome, with the connection's message on failure) and
/// the rebase buffer.
pub(crate) type Applied = (Result<(), RawError>, Arc<[u8]>);

/// What an apply reads: a validated blob, or a stream that validates as SQLite pulls from it.
pub(crate) enum ApplyInput<'a, R> {
    Blob(&'a [u8]),
    Stream(&'a mut Input<R>),
}

/// Applies `input` to `main` of `db` with `hooks` as filter and conflict handler, and a progress
/// handler that interrupts the apply once `hooks.should_stop()`. Returns SQLite's outcome (with
/// the connection's message) and, for `rebase`, the rebase buffer (empty unless a conflict was
/// resolved). A stream's own failure is left in its `Input` for the caller.
pub(crate) fn apply<H: ApplyHooks, R: Read>(
    db: Handle<'_>,
    input: ApplyInput<'_, R>,
    flags: ApplyFlags,
    hooks: &mut H,
    rebase: bool,
) -> Result<Applied, RawError> {
    let ctx = ptr::from_mut(hooks).cast::<c_void>();
    let flags = flags.bits();
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
    // SAFETY: `db` is valid and locked (a `Handle` proves it); the progress handler's context
    // outlives the apply and is removed right after it.
    unsafe {
        sys::sqlite3_progress_handler(db.as_ptr(), 1000, Some(progress_trampoline::<H>), ctx)
    };
    #[cfg(sqlite_has_apply_v3)]
    if hooks.filters_changes() && crate::Capability::ChangeFilter.is_available() {
        let filter = Some(change_filter_trampoline::<H> as ChangeFilterFn);
        let rc = match input {
            // SAFETY: as for `sqlite3changeset_apply_v2` below; the filter takes the iterator
            // as the v3 API passes it.
            ApplyInput::Blob(blob) => unsafe {
                sys::sqlite3changeset_apply_v3(
                    db.as_ptr(),
                    blob_len,
                    blob.as_ptr().cast_mut().cast(),
                    filter,
                    Some(conflict_trampoline::<H>),
                    ctx,
                    rebase_buf_ptr,
                    rebase_len_ptr,
                    flags,
                )
            },
            // SAFETY: as for `sqlite3changeset_apply_v2_strm` below.
            ApplyInput::Stream(stream) => unsafe {
                sys::sqlite3changeset_apply_v3_strm(
                    db.as_ptr(),
                    Some(input_trampoline::<R>),
                    ptr::from_mut(stream).cast(),
                    filter,
                    Some(conflict_trampoline::<H>),
                    ctx,
                    rebase_buf_ptr,
                    rebase_len_ptr,
                    flags,
                )
            },
        };
        return Ok(finish_apply(db, rc, rebase_len, rebase_buf));
    }
    let rc = match input {
        // SAFETY: `db` is locked; `blob` outlives the call and is only read; the trampolines
        // match the C signatures and `ctx` points to a live `H` for the whole call; the rebase
        // out-pointers are both valid or both NULL.
        ApplyInput::Blob(blob) => unsafe {
            sys::sqlite3changeset_apply_v2(
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
        // SAFETY: `db` is locked; the input context outlives the call and matches its
        // trampoline; the other trampolines match the C signatures and `ctx` points to a live
        // `H` for the whole call; the rebase out-pointers are both valid or both NULL.
        ApplyInput::Stream(stream) => unsafe {
            sys::sqlite3changeset_apply_v2_strm(
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
    Ok(finish_apply(db, rc, rebase_len, rebase_buf))
}

/// The C type of `sqlite3changeset_apply_v3`'s filter.
#[cfg(sqlite_has_apply_v3)]
type ChangeFilterFn = unsafe extern "C" fn(*mut c_void, *mut sys::sqlite3_changeset_iter) -> c_int;

/// After SQLite's apply returned `rc`: removes the progress handler and takes the rebase buffer.
fn finish_apply(db: Handle<'_>, rc: c_int, rebase_len: c_int, rebase_buf: *mut c_void) -> Applied {
    // SAFETY: `db` is valid and locked; removes the handler `apply` installed.
    unsafe { sys::sqlite3_progress_handler(db.as_ptr(), 0, None, ptr::null_mut()) };
    // SAFETY: SQLite set the buffer (sqlite3_malloc'd, or NULL with length 0) or left it NULL.
    let rebase = unsafe { take_buffer(rebase_len, rebase_buf) };
    (check_on(db, rc, "sqlite3changeset_apply"), rebase)
}
