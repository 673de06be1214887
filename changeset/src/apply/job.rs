//! One apply on the locked connection: savepoint, SQLite's apply, the outcome and the report.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::channel::oneshot;

use crate::ffi::{self, ApplyFlags, ApplyInput, Handle, Input};
use crate::format::{self, Checked};
use crate::{Error, RebaseBuffer};

use crate::changeset::BlobKind;

use super::hooks::Hooks;
use super::prefilter;
use super::schema::{TableInfo, compatibility, stream_tables, survey};
use super::{ApplyReport, Source};

/// One apply's inputs, movable to a blocking thread.
pub(super) struct Job {
    pub(super) source: Source,
    pub(super) kind: Option<BlobKind>,
    pub(super) flags: ApplyFlags,
    /// Whether to wrap the apply in a savepoint: it joins the caller's transaction (an apply
    /// that opened its own transaction rolls that back on failure instead).
    pub(super) savepoint: bool,
    /// Whether to ask for the rebase buffer.
    pub(super) rebase: bool,
    pub(super) tables: Tables,
    pub(super) hooks: Hooks,
}

/// What an apply knows of its input's tables when SQLite starts on it.
pub(super) enum Tables {
    /// Listed and checked against the schema: their compatibility is in `hooks.tables`, and the
    /// filter skips the incompatible ones.
    Checked(HashMap<String, TableInfo>),
    /// A large blob, being listed on another thread meanwhile. SQLite skips incompatible tables
    /// itself; the report names them afterwards.
    Listing(oneshot::Receiver<Result<HashMap<String, TableInfo>, Error>>),
    /// A stream, listed as SQLite reads it (and then as for `Listing`).
    Streamed,
}
impl Job {
    pub(super) fn run(self, db: Handle<'_>) -> Result<ApplyReport, Error> {
        let Job {
            mut source,
            mut kind,
            mut flags,
            savepoint,
            rebase,
            mut tables,
            mut hooks,
        } = self;
        // Without SQLite's own per-change filter, the filters run first, on the whole input,
        // and SQLite applies what they kept (see `prefilter`).
        if hooks.change_filter.is_some() && !prefilter::sqlite_filters() {
            let (blob, blob_kind): (Arc<[u8]>, BlobKind) = match source {
                Source::Blob(blob) => (blob, kind.unwrap_or(BlobKind::Changeset)),
                Source::Stream(reader) => {
                    let (bytes, kind) = prefilter::read_stream(Checked::new(reader))?;
                    (bytes.into(), kind)
                }
            };
            let listed = match tables {
                Tables::Checked(listed) => listed,
                Tables::Listing(listing) => {
                    let listed = futures::executor::block_on(listing)
                        .unwrap_or_else(|_| survey(&blob, blob_kind))?;
                    hooks.tables = compatibility(db, &listed)?;
                    listed
                }
                Tables::Streamed => {
                    let listed = survey(&blob, blob_kind)?;
                    hooks.tables = compatibility(db, &listed)?;
                    listed
                }
            };
            hooks.deferred = false;
            let kept = prefilter::keep(&blob, blob_kind, flags.invert, &mut hooks)?;
            if let Some(failure) = hooks.failure.take() {
                return Err(failure);
            }
            flags.invert = false;
            source = Source::Blob(kept.into());
            kind = Some(blob_kind);
            tables = Tables::Checked(listed);
        }
        let (blob, mut stream) = match source {
            Source::Blob(blob) => (Some(blob), None),
            Source::Stream(reader) => (None, Some(Input::new(Checked::surveying(reader)))),
        };
        hooks.deferred = !matches!(tables, Tables::Checked(_));
        // Inside the caller's transaction, a savepoint undoes the apply alone when it fails,
        // also when a callback failed although SQLite finished (a filter panic, say). An apply
        // in its own transaction needs none: a failure rolls the whole transaction back.
        if savepoint {
            ffi::exec(db, c"SAVEPOINT liteorm_apply", "starting the apply")?;
        }
        let input = match (&blob, stream.as_mut()) {
            (Some(blob), _) => ApplyInput::Blob(blob),
            (None, Some(stream)) => ApplyInput::Stream(stream),
            // The source was one or the other.
            (None, None) => ApplyInput::Blob(&[]),
        };
        // SQLite records every omitted or replaced conflict for the rebase buffer, and then
        // discards it for a patchset: not asking for it there saves that work per conflict.
        let rebase = rebase && kind != Some(BlobKind::Patchset);
        let applied = ffi::apply(db, input, flags, &mut hooks, rebase);
        let (outcome, rebase) = match applied {
            Ok((outcome, rebase)) => (Ok(outcome), rebase),
            Err(err) => (Err(Error::from(err)), Arc::from(&[][..])),
        };
        // A large blob that does not list is malformed: that is the error to report, whatever
        // SQLite made of it.
        let (listed, listing_error) = match tables {
            Tables::Checked(tables) => (Some(tables), None),
            Tables::Listing(listing) => {
                // The listing did not finish only if its thread could not start: list here then.
                let listed = futures::executor::block_on(listing).unwrap_or_else(|_| {
                    let kind = kind.unwrap_or(BlobKind::Changeset);
                    survey(blob.as_deref().unwrap_or_default(), kind)
                });
                match listed {
                    Ok(tables) => (Some(tables), None),
                    Err(err) => (None, Some(err)),
                }
            }
            Tables::Streamed => (None, None),
        };
        let stream_error = stream.as_mut().and_then(|s| s.error.take());
        let mut failure = match outcome {
            _ if listing_error.is_some() => listing_error,
            Err(err) => Some(err),
            Ok(_) if stream_error.is_some() => stream_error.map(Error::from),
            Ok(_) if hooks.failure.is_some() => hooks.failure.take(),
            Ok(_) if hooks.cancel.load(Ordering::Relaxed) => Some(Error::Cancelled),
            Ok(Err(_))
                if flags.invert
                    && stream.as_ref().and_then(|s| s.reader.checker().marker())
                        == Some(format::PATCHSET) =>
            {
                Some(Error::Misuse("a patchset cannot be inverted"))
            }
            Ok(Err(err)) => Some(err.into()),
            Ok(Ok(())) => None,
        };
        let tables = match (listed, &stream) {
            (Some(tables), _) => tables,
            (None, Some(stream)) => stream_tables(stream.reader.checker().sections()),
            (None, None) => HashMap::new(),
        };
        // Tables listed only now are checked before the savepoint ends, so that a failure to
        // read the schema undoes the apply too.
        if failure.is_none() && hooks.deferred {
            match compatibility(db, &tables) {
                Ok(compat) => hooks.account_deferred(&compat),
                Err(err) => failure = Some(err),
            }
        } else if failure.is_none() {
            let compat = std::mem::take(&mut hooks.tables);
            hooks.account_unasked(&compat);
        }
        let ended = if savepoint {
            let end: &std::ffi::CStr = if failure.is_some() {
                c"ROLLBACK TO liteorm_apply; RELEASE liteorm_apply"
            } else {
                c"RELEASE liteorm_apply"
            };
            ffi::exec(db, end, "ending the apply").map_err(Error::from)
        } else {
            Ok(())
        };
        if let Some(failure) = failure {
            return Err(failure);
        }
        ended?;
        let mut report = hooks.into_report();
        report.changes = tables.values().map(|t| t.changes).sum();
        report.attempted = report.attempted.saturating_sub(report.filtered_changes);
        report.applied = report.attempted - report.omitted.min(report.attempted);
        report.rebase = RebaseBuffer::trusted(rebase);
        Ok(report)
    }
}
