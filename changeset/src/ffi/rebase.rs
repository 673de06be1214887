//! `sqlite3_rebaser`: rebasing local changes over the conflict resolutions of applied remote ones.

use std::io::{Read, Write};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use libsqlite3_sys as sys;

use super::stream::{Input, Output, input_trampoline, output_trampoline, stream_result};
use super::{RawError, c_len, check, construct, padded, take_output};

/// A `sqlite3_rebaser`: conflict resolutions of applied remote changes, to rebase local ones.
pub(crate) struct RawRebaser {
    ptr: NonNull<sys::sqlite3_rebaser>,
}

// SAFETY: a rebaser belongs to no connection and is only used through `&mut self`.
unsafe impl Send for RawRebaser {}

impl RawRebaser {
    pub(crate) fn new() -> Result<Self, RawError> {
        // SAFETY: `out` is a valid out-pointer.
        let ptr = construct("sqlite3rebaser_create", |out| unsafe {
            sys::sqlite3rebaser_create(out)
        })?;
        Ok(RawRebaser { ptr })
    }

    /// Adds the resolutions in a validated rebase buffer.
    pub(crate) fn configure(&mut self, buffer: &[u8]) -> Result<(), RawError> {
        let len = c_len(buffer.len())?;
        // Hashed by SQLite's change-group code, which can read one byte past the end.
        let buffer = padded(buffer);
        // SAFETY: the rebaser is live; SQLite copies what it needs from `buffer`, reading `len`
        // bytes and at most the spare byte after them.
        let rc = unsafe {
            sys::sqlite3rebaser_configure(self.ptr.as_ptr(), len, buffer.as_ptr().cast())
        };
        check(rc, "sqlite3rebaser_configure")
    }

    /// Rebases a validated changeset.
    pub(crate) fn rebase(&mut self, input: &[u8]) -> Result<Arc<[u8]>, RawError> {
        let input_len = c_len(input.len())?;
        // Its records are hashed like the change-group code's, which can read one byte past
        // the end.
        let input = padded(input);
        let rebaser = self.ptr.as_ptr();
        take_output("sqlite3rebaser_rebase", |len, buf| {
            // SAFETY: the rebaser is live; SQLite only reads `input_len` bytes of `input` and at
            // most the spare byte after them; the out-pointers are valid.
            unsafe {
                sys::sqlite3rebaser_rebase(rebaser, input_len, input.as_ptr().cast(), len, buf)
            }
        })
    }
}

impl RawRebaser {
    /// Rebases the changeset `input` reads into `output` (`sqlite3rebaser_rebase_strm`). The
    /// reader must hand on only a well-formed changeset whose tables match the configured
    /// resolutions: SQLite reads its records with the resolutions' layout.
    pub(crate) fn rebase_strm<R: Read, W: Write>(
        &mut self,
        input: &mut Input<R>,
        output: &mut Output<W>,
    ) -> Result<(), RawError> {
        // SAFETY: the rebaser is live; both contexts outlive the call and match their
        // trampolines. SQLite copies the input into its own buffer, chunk by chunk.
        let rc = unsafe {
            sys::sqlite3rebaser_rebase_strm(
                self.ptr.as_ptr(),
                Some(input_trampoline::<R>),
                ptr::from_mut(input).cast(),
                Some(output_trampoline::<W>),
                ptr::from_mut(output).cast(),
            )
        };
        stream_result(
            rc,
            "sqlite3rebaser_rebase_strm",
            [input.error.take(), output.error.take()],
        )
    }
}

impl Drop for RawRebaser {
    fn drop(&mut self) {
        // SAFETY: the rebaser is live and never used after this.
        unsafe { sys::sqlite3rebaser_delete(self.ptr.as_ptr()) };
    }
}
