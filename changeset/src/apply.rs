//! Applying a changeset or patchset to a database: conflict handler, table filter, report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use liteorm_core::{Session, Value};
use liteorm_sqlite::PinnedGuard;
use tokio::task::JoinHandle;

use crate::change::Change;
use crate::conflict::{Conflict, ConflictAction, ConflictKind};
use crate::ffi::{
    self, ApplyFlags, ApplyHooks, ApplyInput, Handle, Input, IterRef, RawConflict, Verdict,
};
use crate::stream::Checked;
use crate::{Capability, Error, RebaseBuffer, format, gate};

use crate::changeset::{BlobKind, sealed};

/// Blobs up to this size are applied on the calling task; larger ones on a blocking thread so
/// that the executor keeps running other tasks.
const INLINE_APPLY_MAX: usize = 16 * 1024;

/// One conflict as a borrowed view that decodes values only when asked, for
/// [`Apply::on_conflict_ref`]: a handler that decides on [`ConflictRef::kind`] or
/// [`ConflictRef::table`] alone costs no decoding. It lives only during the handler call;
/// [`ConflictRef::to_conflict`] makes an owned [`Conflict`].
pub struct ConflictRef<'a> {
    /// Why the change conflicted.
    pub kind: ConflictKind,
    iter: &'a IterRef<'a>,
}

impl ConflictRef<'_> {
    /// The table of the conflicting change (`None` for [`ConflictKind::ForeignKey`]), read
    /// without decoding any value.
    pub fn table(&self) -> Option<&str> {
        if self.kind == ConflictKind::ForeignKey {
            return None;
        }
        self.iter.table()
    }

    /// The change being applied, decoded; `None` for [`ConflictKind::ForeignKey`].
    pub fn change(&self) -> Result<Option<Change>, Error> {
        if self.kind == ConflictKind::ForeignKey {
            return Ok(None);
        }
        Ok(Some(Change::from(self.iter.change(&mut None)?)))
    }

    /// The conflicting row of the target database, decoded (for `Data` and `Conflict`).
    pub fn conflicting_row(&self) -> Result<Option<Vec<Value>>, Error> {
        match self.kind {
            ConflictKind::Data | ConflictKind::Conflict => {
                let change = self.iter.change(&mut None)?;
                Ok(Some(self.iter.conflicting_row(change.pk.len())?))
            }
            _ => Ok(None),
        }
    }

    /// How many foreign key constraints are violated (for `ForeignKey`; otherwise 0).
    pub fn foreign_key_violations(&self) -> usize {
        if self.kind == ConflictKind::ForeignKey {
            self.iter.fk_conflicts()
        } else {
            0
        }
    }

    /// The whole conflict, decoded into an owned [`Conflict`].
    pub fn to_conflict(&self) -> Result<Conflict, Error> {
        read_conflict(self.kind, self.iter, &mut None)
    }
}

impl fmt::Debug for ConflictRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConflictRef")
            .field("kind", &self.kind)
            .field("table", &self.table())
            .finish_non_exhaustive()
    }
}

/// Decodes one conflict.
fn read_conflict(
    kind: ConflictKind,
    iter: &IterRef<'_>,
    table_cache: &mut Option<Arc<str>>,
) -> Result<Conflict, Error> {
    if kind == ConflictKind::ForeignKey {
        return Ok(Conflict {
            kind,
            change: None,
            conflicting_row: None,
            foreign_key_violations: iter.fk_conflicts(),
        });
    }
    let change = Change::from(iter.change(table_cache)?);
    let conflicting_row = match kind {
        ConflictKind::Data | ConflictKind::Conflict => {
            Some(iter.conflicting_row(change.column_count())?)
        }
        _ => None,
    };
    Ok(Conflict {
        kind,
        change: Some(change),
        conflicting_row,
        foreign_key_violations: 0,
    })
}

/// Per conflict kind: how often it occurred and what the handler answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConflictCounts {
    /// Conflicts of this kind.
    pub seen: usize,
    /// Answered with `Omit`.
    pub omitted: usize,
    /// Answered with `Replace`.
    pub replaced: usize,
}

/// Why a table of the changeset was not applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// The target database has no such table.
    Missing,
    /// The target table has fewer columns than the changeset records.
    TooFewColumns {
        /// Columns recorded in the changeset.
        expected: usize,
        /// Columns of the target table.
        found: usize,
    },
    /// The target table's primary key is on other columns than the changeset's.
    PrimaryKeyMismatch,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Missing => f.write_str("the target database has no such table"),
            SkipReason::TooFewColumns { expected, found } => write!(
                f,
                "the changes record {expected} columns but the target table has {found}"
            ),
            SkipReason::PrimaryKeyMismatch => {
                f.write_str("the target table's primary key is on other columns")
            }
        }
    }
}

/// A table whose changes were not applied because the target schema is not compatible (SQLite
/// skips such tables without an error; liteorm reports them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkippedTable {
    /// The table.
    pub table: String,
    /// Why.
    pub reason: SkipReason,
    /// How many changes of the changeset were for it.
    pub changes: usize,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Changes in the changeset.
    pub changes: usize,
    /// Changes in tables that were applied to (not filtered out, schema compatible).
    pub attempted: usize,
    /// Attempted changes that took effect (`attempted - omitted`; replaced ones count).
    pub applied: usize,
    /// Changes skipped by an `Omit` verdict.
    pub omitted: usize,
    /// Changes applied by a `Replace` verdict.
    pub replaced: usize,
    /// Conflicts by kind.
    pub conflicts: BTreeMap<ConflictKind, ConflictCounts>,
    /// Tables the filter excluded.
    pub filtered_tables: Vec<String>,
    /// Tables skipped because the target schema is not compatible.
    pub skipped_tables: Vec<SkippedTable>,
    /// Every conflict with its verdict, in order, when [`Apply::log_conflicts`] was set.
    pub conflict_log: Vec<(Conflict, ConflictAction)>,
    /// How the conflicts were resolved, for a [`Rebaser`](crate::Rebaser) of local changes,
    /// when [`Apply::rebase_buffer`] was set (empty otherwise, when no conflict was resolved
    /// with `Omit` or `Replace`, and for patchsets).
    pub rebase: RebaseBuffer,
}

/// The conflict handler: on an owned, decoded [`Conflict`], or on a lazy [`ConflictRef`].
enum Handler {
    Owned(Box<dyn FnMut(&Conflict) -> ConflictAction + Send>),
    Lazy(Box<dyn for<'c> FnMut(&ConflictRef<'c>) -> ConflictAction + Send>),
}
type Filter = Box<dyn FnMut(&str) -> bool + Send>;

/// An apply being configured; `.await` it to run. Made by [`apply`] (or
/// [`stream::apply`](crate::stream::apply) for a changeset read from a stream).
///
/// Besides the conflict handler, table filter and log, the builder sets SQLite's
/// `sqlite3changeset_apply_v2` flags: [`Apply::invert`],
/// [`Apply::ignore_noop`] and [`Apply::fk_no_action`]; [`Apply::rebase_buffer`] asks for the
/// rebase buffer of its conflict resolutions in [`ApplyReport::rebase`].
///
/// ```
/// use liteorm_changeset::{ConflictAction, apply, capture};
/// use liteorm_core::Session;
/// use liteorm_sqlite::SqliteSession;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), liteorm_changeset::Error> {
/// let db = SqliteSession::open_in_memory().await?;
/// db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a')")
///     .await?;
/// let delete = capture(&db, &["t"], |s| async move {
///     s.execute("DELETE FROM t WHERE id = 1", &[]).await?;
///     Ok::<_, liteorm_changeset::Error>(())
/// })
/// .await?;
///
/// // Undo it by applying it inverted (no inverted copy needed).
/// apply(&db, &delete).invert().await?;
/// assert_eq!(db.query("SELECT * FROM t", &[]).await?.len(), 1);
///
/// // Deleting again conflicts (the row is gone); omitting it leaves a rebase buffer.
/// apply(&db, &delete).await?;
/// let report = apply(&db, &delete)
///     .on_conflict(|_| ConflictAction::Omit)
///     .rebase_buffer()
///     .await?;
/// assert_eq!(report.omitted, 1);
/// assert!(!report.rebase.is_empty());
/// # Ok(())
/// # }
/// ```
#[must_use = "an Apply does nothing until it is awaited"]
pub struct Apply<'a> {
    session: &'a dyn Session,
    source: Source,
    /// The blob's kind; `None` for a stream (its table headers tell).
    kind: Option<BlobKind>,
    handler: Option<Handler>,
    filter: Option<Filter>,
    log: bool,
    rebase: bool,
    flags: Flags,
}

/// What an apply reads.
enum Source {
    Blob(Arc<[u8]>),
    Stream(Box<dyn Read + Send>),
}

/// The `sqlite3changeset_apply_v2` flags asked for.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    invert: bool,
    ignore_noop: bool,
    fk_no_action: bool,
}

impl Flags {
    /// The C flags, or why this SQLite cannot honour them.
    fn checked(self, kind: Option<BlobKind>) -> Result<ApplyFlags, Error> {
        if self.invert && kind == Some(BlobKind::Patchset) {
            return Err(Error::Misuse("a patchset cannot be inverted"));
        }
        if self.ignore_noop {
            Capability::IgnoreNoop.require()?;
        }
        if self.fk_no_action {
            Capability::FkNoAction.require()?;
        }
        // SQLite's own savepoint would only nest inside liteorm's savepoint or transaction, which
        // undo a failed apply already, and each savepoint level costs per page the apply
        // changes: the page is copied to the sub-journal before its first change.
        Ok(ApplyFlags {
            no_savepoint: true,
            invert: self.invert,
            ignore_noop: self.ignore_noop,
            fk_no_action: self.fk_no_action,
        })
    }
}

/// Applies `changes` (a [`Changeset`](crate::Changeset) or [`Patchset`](crate::Patchset)) to the
/// `main` database of `session`, atomically.
///
/// Without [`Apply::on_conflict`], any conflict aborts the apply and nothing is applied
/// ([`Error::Aborted`] names the conflict). Inside a transaction (a pinned session) the apply
/// joins it. Large blobs are applied on a blocking thread with the connection moved there, so the
/// executor keeps running; dropping the future interrupts the apply, which then rolls back.
pub fn apply<'a, C: sealed::Changes>(session: &'a dyn Session, changes: &C) -> Apply<'a> {
    Apply::new(session, Source::Blob(changes.blob()), Some(C::KIND))
}

impl<'a> Apply<'a> {
    fn new(session: &'a dyn Session, source: Source, kind: Option<BlobKind>) -> Self {
        Apply {
            session,
            source,
            kind,
            handler: None,
            filter: None,
            log: false,
            rebase: false,
            flags: Flags::default(),
        }
    }

    /// An apply of the changeset or patchset `input` reads, checked as SQLite pulls from it.
    pub(crate) fn from_stream(session: &'a dyn Session, input: Box<dyn Read + Send>) -> Self {
        Apply::new(session, Source::Stream(input), None)
    }

    /// Applies the inverse of the changeset, as [`Changeset::invert`](crate::Changeset::invert)
    /// would give it, without building it (`SQLITE_CHANGESETAPPLY_INVERT`). The conflict handler
    /// sees the inverted changes. A patchset cannot be inverted ([`Error::Misuse`]).
    pub fn invert(mut self) -> Self {
        self.flags.invert = true;
        self
    }

    /// Applies changes that would change nothing without calling the conflict handler
    /// (`SQLITE_CHANGESETAPPLY_IGNORENOOP`): deleting a row that is already gone, an update whose
    /// new values are already there, an insert of a row that exists with the same values.
    /// Needs SQLite 3.42 ([`Capability::IgnoreNoop`]); older ones fail the apply with
    /// [`Error::Unsupported`].
    pub fn ignore_noop(mut self) -> Self {
        self.flags.ignore_noop = true;
        self
    }

    /// Makes every foreign key of the target behave as `ON UPDATE NO ACTION ON DELETE NO
    /// ACTION` during the apply (`SQLITE_CHANGESETAPPLY_FKNOACTION`): a cascade that already
    /// happened where the changes were captured is in the changeset itself and must not happen
    /// twice. Needs SQLite 3.44 ([`Capability::FkNoAction`]); older ones fail the apply with
    /// [`Error::Unsupported`].
    pub fn fk_no_action(mut self) -> Self {
        self.flags.fk_no_action = true;
        self
    }

    /// Resolves each conflict. The handler is a plain (synchronous) closure that runs on the
    /// thread applying the changeset, between SQLite's own steps: keep it quick and do not block
    /// on async work in it. A panic in it aborts the apply ([`Error::CallbackPanicked`]).
    pub fn on_conflict(
        mut self,
        handler: impl FnMut(&Conflict) -> ConflictAction + Send + 'static,
    ) -> Self {
        self.handler = Some(Handler::Owned(Box::new(handler)));
        self
    }

    /// Like [`Apply::on_conflict`], with a [`ConflictRef`] that decodes the change and the
    /// conflicting row only if the handler asks for them: the cheaper choice when most
    /// decisions depend on the conflict kind or the table alone. Replaces a handler set before.
    ///
    /// ```
    /// use liteorm_changeset::{ConflictAction, ConflictKind};
    /// # async fn demo(db: &dyn liteorm_core::Session, cs: &liteorm_changeset::Changeset) -> Result<(), liteorm_changeset::Error> {
    /// let report = liteorm_changeset::apply(db, cs)
    ///     .on_conflict_ref(|c| match (c.kind, c.table()) {
    ///         (ConflictKind::Data, Some("cache")) => ConflictAction::Replace,
    ///         (ConflictKind::Data | ConflictKind::NotFound, _) => ConflictAction::Omit,
    ///         _ => ConflictAction::Abort,
    ///     })
    ///     .await?;
    /// # let _ = report;
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_conflict_ref(
        mut self,
        handler: impl for<'c> FnMut(&ConflictRef<'c>) -> ConflictAction + Send + 'static,
    ) -> Self {
        self.handler = Some(Handler::Lazy(Box::new(handler)));
        self
    }

    /// Applies only the tables for which `filter` returns `true`. A panic in it aborts the apply.
    pub fn filter(mut self, filter: impl FnMut(&str) -> bool + Send + 'static) -> Self {
        self.filter = Some(Box::new(filter));
        self
    }

    /// Records every conflict and its verdict in [`ApplyReport::conflict_log`].
    pub fn log_conflicts(mut self) -> Self {
        self.log = true;
        self
    }

    /// Asks SQLite for the rebase buffer: how each conflict was resolved with `Omit` or
    /// `Replace`, in [`ApplyReport::rebase`], for a [`Rebaser`](crate::Rebaser) of local
    /// changes. SQLite then copies every such change into the buffer, which costs time and
    /// memory on conflict-heavy applies (about 7 % of an apply where half the changes are
    /// omitted), so it is off unless asked for. A patchset has no rebase buffer.
    pub fn rebase_buffer(mut self) -> Self {
        self.rebase = true;
        self
    }

    async fn run(self) -> Result<ApplyReport, Error> {
        let sqlite = gate::gate(self.session, "applying a changeset")?;
        let flags = self.flags.checked(self.kind)?;
        let inline = matches!(&self.source, Source::Blob(blob) if blob.len() <= INLINE_APPLY_MAX);
        // A large blob is listed on another thread while SQLite applies it: the listing reads
        // every byte (about 1 ms per 4 MB), and only the report needs it.
        let listing = match &self.source {
            Source::Blob(blob) if !inline => {
                let (blob, kind) = (Arc::clone(blob), self.kind.unwrap_or(BlobKind::Changeset));
                Some(tokio::task::spawn_blocking(move || survey(&blob, kind)))
            }
            _ => None,
        };
        let pinned = sqlite.pin().await?;
        let mut guard = pinned.lock().await?;
        // Outside a transaction, take the write lock before applying: waiting for it (up to the
        // busy timeout) then happens on sqlx's worker thread, not on an executor thread inside
        // the FFI call, where it could starve the task that holds the lock. (A deferred
        // transaction would also fail at once with SQLITE_BUSY_SNAPSHOT in WAL mode when
        // another connection writes between SQLite's schema reads and its first write.)
        let in_transaction = guard.with_raw(ffi::in_transaction).await?;
        if !in_transaction {
            guard.begin_immediate().await?;
        }
        let mut guard = OwnTransaction {
            guard,
            open: !in_transaction,
        };
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let mut hooks = Hooks::new(self.handler, self.filter, self.log, Arc::clone(&cancel.0));
        // A small blob's tables are listed and checked against the schema now; a large blob's
        // and a stream's once SQLite has applied it.
        let tables = match (&self.source, listing) {
            (_, Some(listing)) => Tables::Listing(listing),
            (Source::Blob(blob), None) => {
                Tables::Checked(survey(blob, self.kind.unwrap_or(BlobKind::Changeset))?)
            }
            (Source::Stream(_), None) => Tables::Streamed,
        };
        if let Tables::Checked(tables) = &tables {
            hooks.tables = compatibility_cached(&mut guard.guard, tables).await?;
        }
        let job = Job {
            source: self.source,
            kind: self.kind,
            flags,
            savepoint: in_transaction,
            rebase: self.rebase,
            tables,
            hooks,
        };
        if inline {
            // An apply changes no schema, so the key layouts kept on the connection stay valid.
            let result = guard.guard.with_raw_same_schema(|db| job.run(db)).await?;
            return guard.end(result).await;
        }
        let task = tokio::task::spawn_blocking(move || {
            // The guard (and with it the connection) lives on this thread until the apply is
            // over, whatever happens to the future that spawned it.
            let result = match guard.guard.with_raw_same_schema_blocking(|db| job.run(db)) {
                Ok(result) => futures::executor::block_on(guard.end(result)),
                Err(err) => Err(err.into()),
            };
            drop(guard);
            drop(pinned);
            result
        });
        match task.await {
            Ok(result) => result,
            Err(join) => Err(Error::task_failed("apply task", join)),
        }
    }
}

impl<'a> IntoFuture for Apply<'a> {
    type Output = Result<ApplyReport, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// The connection of an apply, and whether the apply opened its transaction (then it commits
/// it when the apply succeeds, and rolls it back otherwise, also when dropped unfinished).
struct OwnTransaction {
    guard: PinnedGuard,
    open: bool,
}

impl OwnTransaction {
    /// Commits the apply's own transaction after `result` succeeded, else rolls it back.
    async fn end(&mut self, result: Result<ApplyReport, Error>) -> Result<ApplyReport, Error> {
        if !self.open {
            return result;
        }
        let ended = match &result {
            Ok(_) => match self.guard.commit().await {
                Ok(()) => Ok(()),
                // A COMMIT that fails (a deferred foreign key, say) leaves the transaction open.
                Err(err) => self.guard.rollback().await.and(Err(err)),
            },
            Err(_) => self.guard.rollback().await,
        };
        self.open = false;
        let report = result?;
        ended?;
        Ok(report)
    }
}

impl Drop for OwnTransaction {
    fn drop(&mut self) {
        if self.open {
            // Failing here means the connection is broken; sqlx will not hand it out again.
            let _ = self.guard.rollback_levels_blocking(1);
        }
    }
}

/// Sets the flag when dropped, so that an apply whose future was dropped stops at the next
/// progress callback and rolls back.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One apply's inputs, movable to a blocking thread.
struct Job {
    source: Source,
    kind: Option<BlobKind>,
    flags: ApplyFlags,
    /// Whether to wrap the apply in a savepoint: it joins the caller's transaction (an apply
    /// that opened its own transaction rolls that back on failure instead).
    savepoint: bool,
    /// Whether to ask for the rebase buffer.
    rebase: bool,
    tables: Tables,
    hooks: Hooks,
}

/// What an apply knows of its input's tables when SQLite starts on it.
enum Tables {
    /// Listed and checked against the schema: their compatibility is in `hooks.tables`, and the
    /// filter skips the incompatible ones.
    Checked(HashMap<String, TableInfo>),
    /// A large blob, being listed on another thread meanwhile. SQLite skips incompatible tables
    /// itself; the report names them afterwards.
    Listing(JoinHandle<Result<HashMap<String, TableInfo>, Error>>),
    /// A stream, listed as SQLite reads it (and then as for `Listing`).
    Streamed,
}

/// Per table of the blob: its header and how many changes it has.
pub(crate) struct TableInfo {
    pub(crate) n_col: usize,
    pub(crate) pk: Vec<u8>,
    pub(crate) changes: usize,
}

impl Job {
    fn run(self, db: Handle<'_>) -> Result<ApplyReport, Error> {
        let Job {
            source,
            kind,
            flags,
            savepoint,
            rebase,
            tables,
            mut hooks,
        } = self;
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
                // The task did not run only if the runtime is shutting down: list here then.
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
        let mut report = hooks.report;
        report.changes = tables.values().map(|t| t.changes).sum();
        report.applied = report.attempted - report.omitted.min(report.attempted);
        report.rebase = RebaseBuffer::trusted(rebase);
        Ok(report)
    }
}

/// The tables of a streamed changeset, from the sections its checker saw.
fn stream_tables(sections: &[format::Section]) -> HashMap<String, TableInfo> {
    let mut tables = HashMap::new();
    let mut previous: Option<&str> = None;
    for section in sections {
        let info = TableInfo {
            n_col: section.pk.len(),
            pk: section.pk.clone(),
            changes: section.changes,
        };
        // A section continues the run before it when SQLite says so (see `same_run`).
        let name = match previous {
            Some(run) if same_run(run, &section.table) => run,
            _ => section.table.as_str(),
        };
        previous = Some(name);
        merge(&mut tables, name.to_owned(), info);
    }
    tables
}

/// Whether SQLite's apply takes a table header named `next` right after the run of `run` as
/// the same table: it compares the names ASCII-case-insensitively (`sqlite3_strnicmp`), and
/// calls the table filter once per run.
fn same_run(run: &str, next: &str) -> bool {
    run.as_bytes().eq_ignore_ascii_case(next.as_bytes())
}

/// Lists a blob's tables, their headers and change counts with the bounds-checked byte walk of
/// [`format`] (no value is decoded and SQLite's iterator is not involved). A malformed blob
/// fails here: before anything is written for a small blob, alongside SQLite's apply (which is
/// then undone) for a large one.
pub(crate) fn survey(blob: &[u8], kind: BlobKind) -> Result<HashMap<String, TableInfo>, Error> {
    // The fast walk accepts exactly what the checker accepts; only the checker says why not.
    let mut sections = match format::sections(blob) {
        Some(sections) => sections,
        None => {
            let mut checker = format::Checker::new(None).surveying();
            checker
                .feed(blob)
                .and_then(|()| checker.finish().map(drop))
                .map_err(|m| Error::Invalid {
                    kind: kind.name(),
                    entry: m.entry,
                    offset: Some(m.offset),
                    reason: m.reason,
                })?;
            checker.sections().to_vec()
        }
    };
    // SQLite's iterator never stops on a header without changes, so neither does the survey.
    sections.retain(|s| s.changes > 0);
    Ok(stream_tables(&sections))
}

fn merge(tables: &mut HashMap<String, TableInfo>, name: String, run: TableInfo) {
    tables
        .entry(name)
        .and_modify(|t| t.changes += run.changes)
        .or_insert(run);
}

/// Checks each table against the target schema as SQLite does (same name, at least as many
/// columns, same primary key columns), so skipped tables can be reported.
pub(crate) fn compatibility(
    db: Handle<'_>,
    tables: &HashMap<String, TableInfo>,
) -> Result<HashMap<String, (usize, Option<SkipReason>)>, Error> {
    let mut out = HashMap::with_capacity(tables.len());
    for (name, info) in tables {
        let reason = table_compatibility(db, name, info)?;
        out.insert(name.clone(), (info.changes, reason));
    }
    Ok(out)
}

/// [`compatibility`], with each table's key layout kept on the connection while its schema does
/// not change ([`PinnedGuard::schema_cached`]): reading it anew costs about a tenth of applying
/// a one-row changeset (SQLite prepares a pragma anew on every run).
async fn compatibility_cached(
    guard: &mut PinnedGuard,
    tables: &HashMap<String, TableInfo>,
) -> Result<HashMap<String, (usize, Option<SkipReason>)>, Error> {
    let mut out = HashMap::with_capacity(tables.len());
    for (name, info) in tables {
        let pk = crate::capture::table_pk(guard, name).await?;
        out.insert(name.clone(), (info.changes, compatible(pk, info)));
    }
    Ok(out)
}

/// Why changes recorded with `info`'s header cannot apply to `main.<name>`, if they cannot.
pub(crate) fn table_compatibility(
    db: Handle<'_>,
    name: &str,
    info: &TableInfo,
) -> Result<Option<SkipReason>, Error> {
    Ok(compatible(ffi::table_pk(db, name)?, info))
}

/// Why changes recorded with `info`'s header cannot apply to a table whose key layout is `pk`
/// (see [`ffi::table_pk`]; `None`: no such table), if they cannot.
fn compatible(pk: Option<Vec<u8>>, info: &TableInfo) -> Option<SkipReason> {
    let Some(mut pk) = pk else {
        return Some(SkipReason::Missing);
    };
    // SQLite 3.42+ keys a table without a PRIMARY KEY by an implicit leading `_rowid_` column,
    // in recording and in applying alike.
    if pk.iter().all(|&p| p == 0) && Capability::ImplicitPrimaryKey.is_available() {
        pk.insert(0, 1);
    }
    if pk.len() < info.n_col {
        Some(SkipReason::TooFewColumns {
            expected: info.n_col,
            found: pk.len(),
        })
    } else if pk[..info.n_col] != info.pk[..] {
        Some(SkipReason::PrimaryKeyMismatch)
    } else {
        None
    }
}

/// The callbacks of one apply and what they have counted.
struct Hooks {
    handler: Option<Handler>,
    filter: Option<Filter>,
    log: bool,
    cancel: Arc<AtomicBool>,
    /// Per table: change count and why it must be skipped, if it must.
    tables: HashMap<String, (usize, Option<SkipReason>)>,
    /// The tables whose changes the report counts already: SQLite calls the filter once per run
    /// of a table, and a table can have several (e.g. changesets concatenated byte for byte),
    /// while `tables` has the total of all of them.
    counted: HashSet<String>,
    report: ApplyReport,
    failure: Option<Error>,
    table_cache: Option<Arc<str>>,
    /// Whether the input's tables are checked only after SQLite applied it (a stream, or a
    /// large blob listed meanwhile): SQLite skips incompatible tables itself then.
    deferred: bool,
    /// When deferred: the tables the filter let through, in order.
    passed: Vec<String>,
}

impl Hooks {
    fn new(
        handler: Option<Handler>,
        filter: Option<Filter>,
        log: bool,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        Hooks {
            handler,
            filter,
            log,
            cancel,
            tables: HashMap::new(),
            counted: HashSet::new(),
            report: ApplyReport::default(),
            failure: None,
            table_cache: None,
            deferred: false,
            passed: Vec::new(),
        }
    }

    /// After a deferred apply: counts the changes of the tables the filter let through, now
    /// that the input's tables and their compatibility are known.
    fn account_deferred(&mut self, compat: &HashMap<String, (usize, Option<SkipReason>)>) {
        for table in std::mem::take(&mut self.passed) {
            match compat.get(&table) {
                Some((changes, None)) => self.report.attempted += changes,
                Some((changes, Some(reason))) => self.report.skipped_tables.push(SkippedTable {
                    table,
                    reason: reason.clone(),
                    changes: *changes,
                }),
                None => {}
            }
        }
    }

    fn fail(&mut self, error: Error) -> Verdict {
        self.failure.get_or_insert(error);
        Verdict::Abort
    }
}

impl ApplyHooks for Hooks {
    fn filter(&mut self, table: &str) -> bool {
        if let Some(filter) = self.filter.as_mut()
            && !filter(table)
        {
            if !self.report.filtered_tables.iter().any(|t| t == table) {
                self.report.filtered_tables.push(table.to_owned());
            }
            return false;
        }
        match self.tables.get(table) {
            Some((changes, None)) => {
                if self.counted.insert(table.to_owned()) {
                    self.report.attempted += changes;
                }
                true
            }
            Some((changes, Some(reason))) => {
                if self.counted.insert(table.to_owned()) {
                    self.report.skipped_tables.push(SkippedTable {
                        table: table.to_owned(),
                        reason: reason.clone(),
                        changes: *changes,
                    });
                }
                false
            }
            // SQLite skips an incompatible table itself; `account_deferred` reports it.
            None if self.deferred => {
                if !self.passed.iter().any(|t| t == table) {
                    self.passed.push(table.to_owned());
                }
                true
            }
            // The survey saw every table of the blob; SQLite cannot name another.
            None => false,
        }
    }

    fn conflict(&mut self, kind: Option<RawConflict>, iter: IterRef<'_>) -> Verdict {
        let Some(kind) = kind.map(ConflictKind::from_raw) else {
            return self.fail(ffi::misuse("unknown conflict kind").into());
        };
        // The owned conflict, decoded before the handler for `on_conflict`, and otherwise only
        // when the outcome needs it (an error, or the conflict log).
        let mut decoded = None;
        let action = match self.handler.as_mut() {
            Some(Handler::Owned(handler)) => {
                match read_conflict(kind, &iter, &mut self.table_cache) {
                    Ok(conflict) => handler(decoded.insert(conflict)),
                    Err(err) => return self.fail(err),
                }
            }
            Some(Handler::Lazy(handler)) => handler(&ConflictRef { kind, iter: &iter }),
            None => ConflictAction::Abort,
        };
        let needs_owned = self.log
            || matches!(action, ConflictAction::Abort)
            || (matches!(action, ConflictAction::Replace) && !kind.allows_replace());
        let conflict = match decoded {
            Some(conflict) => Some(conflict),
            None if needs_owned => match read_conflict(kind, &iter, &mut self.table_cache) {
                Ok(conflict) => Some(conflict),
                Err(err) => return self.fail(err),
            },
            None => None,
        };
        let counts = self.report.conflicts.entry(kind).or_default();
        counts.seen += 1;
        let code = match action {
            ConflictAction::Omit => {
                counts.omitted += 1;
                if kind != ConflictKind::ForeignKey {
                    self.report.omitted += 1;
                }
                Verdict::Omit
            }
            ConflictAction::Replace if kind.allows_replace() => {
                counts.replaced += 1;
                self.report.replaced += 1;
                Verdict::Replace
            }
            ConflictAction::Replace => {
                return match conflict {
                    Some(conflict) => self.fail(Error::IllegalReplace {
                        conflict: Box::new(conflict),
                    }),
                    None => Verdict::Abort,
                };
            }
            ConflictAction::Abort => {
                return match conflict {
                    Some(conflict) => self.fail(Error::Aborted {
                        conflict: Box::new(conflict),
                    }),
                    None => Verdict::Abort,
                };
            }
        };
        if let Some(conflict) = conflict.filter(|_| self.log) {
            self.report.conflict_log.push((conflict, action));
        }
        code
    }

    fn should_stop(&self) -> bool {
        self.failure.is_some() || self.cancel.load(Ordering::Relaxed)
    }

    fn panicked(&mut self, callback: &'static str, payload: Box<dyn std::any::Any + Send>) {
        let message = ffi::panic_message(payload.as_ref());
        self.failure
            .get_or_insert(Error::CallbackPanicked { callback, message });
    }
}
