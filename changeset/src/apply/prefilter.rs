//! The per-change filter where SQLite has none (before 3.51's `sqlite3changeset_apply_v3`): the
//! changes are offered to the filters before SQLite sees them, and SQLite applies the ones kept.
//!
//! SQLite's v3 apply offers a change to the filter once its table passed the schema check, in
//! the order of the input, inverted first when the apply inverts. This does the same on the
//! whole input in memory: it needs the input's tables checked against the schema first, so a
//! stream is read to its end (and validated) before anything is applied.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::Error;
use crate::build::Encoder;
use crate::change::Change;
use crate::changeset::BlobKind;
use crate::ffi::{self, ApplyHooks, StreamError};
use crate::format::Checked;

use super::hooks::Hooks;

/// Reads a stream input to its end, checked as SQLite would pull it; returns the bytes and
/// their kind.
pub(super) fn read_stream<R: Read>(mut input: Checked<R>) -> Result<(Vec<u8>, BlobKind), Error> {
    let mut bytes = Vec::new();
    match catch_unwind(AssertUnwindSafe(|| input.read_to_end(&mut bytes))) {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => return Err(StreamError::Io(err).into()),
        Err(payload) => {
            let message = ffi::panic_message(payload.as_ref());
            return Err(StreamError::Panicked(message).into());
        }
    }
    Ok((bytes, BlobKind::of_marker(input.checker().marker())))
}

/// The changes of `blob` (inverted if `invert`) that the table filter and the change filter of
/// `hooks` keep, in order, as a blob of `kind` (the input's kind; a changeset when inverted).
/// `hooks` must know the tables' compatibility already (not deferred).
pub(super) fn keep(
    blob: &[u8],
    kind: BlobKind,
    invert: bool,
    hooks: &mut Hooks,
) -> Result<Vec<u8>, Error> {
    debug_assert!(!hooks.deferred, "the tables are checked before filtering");
    let mut iter = ffi::ChangesetIter::start_v2(blob, invert)?;
    let mut kept = Encoder::new(kind);
    let mut table_cache = None;
    while iter.advance()? {
        let change = Change::from(iter.current().change(&mut table_cache)?);
        let table_kept = match catch_unwind(AssertUnwindSafe(|| hooks.filter(&change.table))) {
            Ok(keep) => keep,
            Err(payload) => {
                hooks.panicked("table filter", payload);
                false
            }
        };
        if hooks.should_stop() {
            break;
        }
        if table_kept && hooks.offer(&change) {
            kept.push(&change)?;
        }
        if hooks.should_stop() {
            break;
        }
    }
    Ok(kept.into_bytes())
}

/// Whether SQLite will run the per-change filter itself.
pub(super) fn sqlite_filters() -> bool {
    crate::Capability::ChangeFilter.is_available()
}
