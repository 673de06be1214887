//! The streaming (`_strm`) API: SQLite pulls input from a Rust reader and pushes output to a
//! Rust writer through trampolines that never let a panic unwind into C.

use std::ffi::{c_int, c_void};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use libsqlite3_sys as sys;

use super::iter::{ChangesetIter, IterRef};
use super::{RawError, check, construct, panic_message};

/// How a stream callback failed.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The reader or writer returned an error.
    Io(io::Error),
    /// The reader or writer panicked.
    Panicked(String),
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
pub(super) fn stream_result(
    rc: c_int,
    context: &'static str,
    errors: [Option<StreamError>; 2],
) -> Result<(), RawError> {
    if let Some(err) = errors.into_iter().flatten().next() {
        return Err(RawError::Stream(err));
    }
    check(rc, context)
}

pub(super) unsafe extern "C" fn input_trampoline<R: Read>(
    ctx: *mut c_void,
    data: *mut c_void,
    len: *mut c_int,
) -> c_int {
    // SAFETY: `len` is SQLite's in/out parameter: the room in `data` on entry.
    let room = usize::try_from(unsafe { *len }).unwrap_or(0);
    if data.is_null() || room == 0 {
        // SAFETY: `len` is SQLite's valid out-parameter.
        unsafe { *len = 0 };
        return sys::SQLITE_OK;
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
                return sys::SQLITE_IOERR_READ;
            }
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                input.error.get_or_insert(StreamError::Panicked(message));
                return sys::SQLITE_IOERR_READ;
            }
        }
    };
    // SAFETY: `len` is SQLite's out-parameter; `read <= buf.len()`, which came from it.
    unsafe { *len = c_int::try_from(read).unwrap_or(0) };
    sys::SQLITE_OK
}

pub(super) unsafe extern "C" fn output_trampoline<W: Write>(
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
        Ok(Ok(())) => sys::SQLITE_OK,
        Ok(Err(err)) => {
            output.error.get_or_insert(StreamError::Io(err));
            sys::SQLITE_IOERR_WRITE
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            output.error.get_or_insert(StreamError::Panicked(message));
            sys::SQLITE_IOERR_WRITE
        }
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
    pub(crate) fn start(input: Input<R>) -> Result<Self, RawError> {
        let mut input = Box::new(input);
        let ctx = ptr::from_mut(input.as_mut()).cast();
        let iter = construct("sqlite3changeset_start_strm", |out| {
            // SAFETY: the context is the boxed input, which the returned value owns and drops
            // only after finalizing the iterator; the trampoline matches the C signature; `out`
            // is a valid out-pointer.
            unsafe { sys::sqlite3changeset_start_strm(out, Some(input_trampoline::<R>), ctx) }
        })
        .map_err(|err| input.error.take().map_or(err, RawError::Stream))?;
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
    pub(crate) fn advance(&mut self) -> Result<bool, RawError> {
        self.iter
            .advance()
            .map_err(|err| self.input.error.take().map_or(err, RawError::Stream))
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

/// Inverts the changeset `input` reads into `output`.
pub(crate) fn invert_strm<R: Read, W: Write>(
    input: &mut Input<R>,
    output: &mut Output<W>,
) -> Result<(), RawError> {
    // SAFETY: both contexts outlive the call and match their trampolines.
    let rc = unsafe {
        sys::sqlite3changeset_invert_strm(
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
) -> Result<(), RawError> {
    // SAFETY: the three contexts outlive the call and match their trampolines.
    let rc = unsafe {
        sys::sqlite3changeset_concat_strm(
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
