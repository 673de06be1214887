//! Applying a changeset or patchset to a database: the `Apply` builder and the orchestration
//! around SQLite's apply (transaction, blocking thread, cancellation). Split by concern: the
//! callbacks (`hooks`), the report (`report`), the run on the locked connection (`job`) and the
//! tables of the input against the target schema (`schema`).

mod hooks;
mod job;
mod prefilter;
mod report;
mod schema;

use std::future::{Future, IntoFuture};
use std::io::Read;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::channel::oneshot;
use liteorm_core::Session;
use liteorm_sqlite::{PinnedGuard, blocking};

use crate::change::Change;
use crate::conflict::{Conflict, ConflictAction};
use crate::driver::{BlockingConnection, RawConnection};
use crate::ffi::{self, ApplyFlags, Handle};
use crate::{Capability, Error, gate};

use crate::changeset::{BlobKind, Changes, sealed};

pub use hooks::ConflictRef;
pub use report::{ApplyReport, ConflictCounts, SkipReason, SkippedTable};
pub(crate) use schema::survey;
pub(crate) use schema::table_compatibility;

use hooks::{ChangeFilter, Filter, Handler, Hooks};
use job::{Job, Tables};
use schema::{compatibility, compatibility_cached};

/// Blobs up to this size are applied on the calling task; larger ones on a blocking thread so
/// that the executor keeps running other tasks.
const INLINE_APPLY_MAX: usize = 16 * 1024;

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
///
/// On a connection lent by another driver (see [`driver`](crate::driver)), the same builder
/// runs synchronously with [`Apply::run`], or on a blocking thread when awaited.
#[must_use = "an Apply does nothing until it is awaited (or run)"]
pub struct Apply<'a, T = &'a dyn Session> {
    target: T,
    plan: Plan,
    _target: PhantomData<&'a ()>,
}

/// Everything an apply needs but the connection: what the builder sets.
struct Plan {
    source: Source,
    /// The blob's kind; `None` for a stream (its table headers tell).
    kind: Option<BlobKind>,
    handler: Option<Handler>,
    filter: Option<Filter>,
    change_filter: Option<ChangeFilter>,
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
    /// An apply of the changeset or patchset `input` reads, checked as SQLite pulls from it.
    pub(crate) fn from_stream(session: &'a dyn Session, input: Box<dyn Read + Send>) -> Self {
        Apply::new(session, Source::Stream(input), None)
    }
}

impl<'a, T> Apply<'a, T> {
    fn new(target: T, source: Source, kind: Option<BlobKind>) -> Self {
        Apply {
            target,
            plan: Plan {
                source,
                kind,
                handler: None,
                filter: None,
                change_filter: None,
                log: false,
                rebase: false,
                flags: Flags::default(),
            },
            _target: PhantomData,
        }
    }

    /// An apply of `changes` to the connection `target` lends (see
    /// [`driver`](crate::driver)); a driver's own `apply` function wraps this.
    pub fn on<C: Changes>(target: T, changes: &C) -> Self {
        Apply::new(target, Source::Blob(changes.blob()), Some(C::KIND))
    }

    /// Applies the inverse of the changeset, as [`Changeset::invert`](crate::Changeset::invert)
    /// would give it, without building it (`SQLITE_CHANGESETAPPLY_INVERT`). The conflict handler
    /// sees the inverted changes. A patchset cannot be inverted ([`Error::Misuse`]).
    pub fn invert(mut self) -> Self {
        self.plan.flags.invert = true;
        self
    }

    /// Applies changes that would change nothing without calling the conflict handler
    /// (`SQLITE_CHANGESETAPPLY_IGNORENOOP`): deleting a row that is already gone, an update whose
    /// new values are already there, an insert of a row that exists with the same values.
    /// Needs SQLite 3.42 ([`Capability::IgnoreNoop`]); older ones fail the apply with
    /// [`Error::Unsupported`].
    pub fn ignore_noop(mut self) -> Self {
        self.plan.flags.ignore_noop = true;
        self
    }

    /// Makes every foreign key of the target behave as `ON UPDATE NO ACTION ON DELETE NO
    /// ACTION` during the apply (`SQLITE_CHANGESETAPPLY_FKNOACTION`): a cascade that already
    /// happened where the changes were captured is in the changeset itself and must not happen
    /// twice. Needs SQLite 3.44 ([`Capability::FkNoAction`]); older ones fail the apply with
    /// [`Error::Unsupported`].
    pub fn fk_no_action(mut self) -> Self {
        self.plan.flags.fk_no_action = true;
        self
    }

    /// Resolves each conflict. The handler is a plain (synchronous) closure that runs on the
    /// thread applying the changeset, between SQLite's own steps: keep it quick and do not block
    /// on async work in it. A panic in it aborts the apply ([`Error::CallbackPanicked`]).
    pub fn on_conflict(
        mut self,
        handler: impl FnMut(&Conflict) -> ConflictAction + Send + 'static,
    ) -> Self {
        self.plan.handler = Some(Handler::Owned(Box::new(handler)));
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
        self.plan.handler = Some(Handler::Lazy(Box::new(handler)));
        self
    }

    /// Applies only the tables for which `filter` returns `true`. A panic in it aborts the apply.
    pub fn filter(mut self, filter: impl FnMut(&str) -> bool + Send + 'static) -> Self {
        self.plan.filter = Some(Box::new(filter));
        self
    }

    /// Applies only the changes for which `filter` returns `true` (after the table
    /// [`filter`](Self::filter), and only for tables whose schema matches). Skipped changes are
    /// counted in [`ApplyReport::filtered_changes`]. A panic in it aborts the apply
    /// ([`Error::CallbackPanicked`]).
    ///
    /// With SQLite 3.51 or later the filter runs inside SQLite's apply
    /// (`sqlite3changeset_apply_v3`, see [`Capability::ChangeFilter`]); on an older SQLite,
    /// liteorm offers the changes to it before SQLite applies the ones kept, which gives the
    /// same result but holds the input in memory (a stream is read to its end first). When the
    /// apply [`invert`](Self::invert)s, the filter sees the inverted changes.
    ///
    /// ```
    /// use liteorm_changeset::{ChangeOp, apply};
    /// # async fn demo(db: &dyn liteorm_core::Session, cs: &liteorm_changeset::Changeset) -> Result<(), liteorm_changeset::Error> {
    /// // Replay everything but deletes.
    /// let report = apply(db, cs).filter_change(|c| c.op != ChangeOp::Delete).await?;
    /// println!("{} deletes left out", report.filtered_changes);
    /// # Ok(())
    /// # }
    /// ```
    pub fn filter_change(mut self, filter: impl FnMut(&Change) -> bool + Send + 'static) -> Self {
        self.plan.change_filter = Some(Box::new(filter));
        self
    }

    /// Records every conflict and its verdict in [`ApplyReport::conflict_log`].
    pub fn log_conflicts(mut self) -> Self {
        self.plan.log = true;
        self
    }

    /// Asks SQLite for the rebase buffer: how each conflict was resolved with `Omit` or
    /// `Replace`, in [`ApplyReport::rebase`], for a [`Rebaser`](crate::Rebaser) of local
    /// changes. SQLite then copies every such change into the buffer, which costs time and
    /// memory on conflict-heavy applies (about 7 % of an apply where half the changes are
    /// omitted), so it is off unless asked for. A patchset has no rebase buffer.
    pub fn rebase_buffer(mut self) -> Self {
        self.plan.rebase = true;
        self
    }
}

impl<C: RawConnection> Apply<'_, C> {
    /// Runs the apply on the calling thread, on the connection the target lends: the same
    /// steps, report and guarantees as awaiting an apply on a liteorm session. Inside the
    /// connection's transaction the apply joins it (in a savepoint); outside one it runs in its
    /// own `BEGIN IMMEDIATE` transaction, committed if it succeeds and rolled back otherwise.
    pub fn run(mut self) -> Result<ApplyReport, Error> {
        let plan = self.plan;
        self.target.with_handle(|db| plan.run_on(db))
    }
}

impl<'a, C: BlockingConnection + 'a> IntoFuture for Apply<'a, C> {
    type Output = Result<ApplyReport, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    /// Runs the apply as [`Apply::run`] does, on the blocking thread the target lends its
    /// connection on.
    fn into_future(self) -> Self::IntoFuture {
        let plan = self.plan;
        Box::pin(self.target.with_handle_blocking(move |db| plan.run_on(db)))
    }
}

impl Plan {
    /// The apply on a lent connection, on the calling thread: [`Job::run`] inside the
    /// connection's transaction, or inside one of its own.
    fn run_on(self, db: Handle<'_>) -> Result<ApplyReport, Error> {
        let flags = self.flags.checked(self.kind)?;
        let in_transaction = ffi::in_transaction(db);
        if !in_transaction {
            ffi::exec(db, c"BEGIN IMMEDIATE", "starting the apply")?;
        }
        let result = self
            .job(db, flags, in_transaction)
            .and_then(|job| job.run(db));
        if in_transaction {
            return result;
        }
        let ended = match &result {
            // A COMMIT that fails (a deferred foreign key, say) leaves the transaction open.
            Ok(_) => ffi::exec(db, c"COMMIT", "committing the apply")
                .or_else(|err| ffi::exec(db, c"ROLLBACK", "rolling back the apply").and(Err(err))),
            Err(_) => ffi::exec(db, c"ROLLBACK", "rolling back the apply"),
        };
        let report = result?;
        ended?;
        Ok(report)
    }

    /// The job for a blob or stream on `db`, its tables checked against the schema now (a blob)
    /// or as SQLite reads them (a stream).
    fn job(self, db: Handle<'_>, flags: ApplyFlags, savepoint: bool) -> Result<Job, Error> {
        let cancel = Arc::new(AtomicBool::new(false));
        let mut hooks = Hooks::new(self.handler, self.filter, self.log, cancel);
        hooks.change_filter = self.change_filter;
        let tables = match &self.source {
            Source::Blob(blob) => {
                let tables = survey(blob, self.kind.unwrap_or(BlobKind::Changeset))?;
                hooks.tables = compatibility(db, &tables)?;
                Tables::Checked(tables)
            }
            Source::Stream(_) => Tables::Streamed,
        };
        Ok(Job {
            source: self.source,
            kind: self.kind,
            flags,
            savepoint,
            rebase: self.rebase,
            tables,
            hooks,
        })
    }
}

impl Apply<'_> {
    async fn run(self) -> Result<ApplyReport, Error> {
        let Apply {
            target: session,
            plan: this,
            ..
        } = self;
        let sqlite = gate::gate(session, "applying a changeset")?;
        let flags = this.flags.checked(this.kind)?;
        let inline = matches!(&this.source, Source::Blob(blob) if blob.len() <= INLINE_APPLY_MAX);
        // A large blob is listed on another thread while SQLite applies it: the listing reads
        // every byte (about 1 ms per 4 MB), and only the report needs it. It starts after the
        // apply, so that the apply gets the thread the last apply ran on (see `blocking`).
        let (list, listing) = match &this.source {
            Source::Blob(blob) if !inline => {
                let (blob, kind) = (Arc::clone(blob), this.kind.unwrap_or(BlobKind::Changeset));
                let (listed, listing) = oneshot::channel();
                let list = move || {
                    // The apply may have failed and gone: then nobody wants the listing.
                    let _ = listed.send(survey(&blob, kind));
                };
                (Some(list), Some(listing))
            }
            _ => (None, None),
        };
        let pinned = sqlite.pin().await?;
        let mut guard = pinned.lock().await?;
        // Outside a transaction, take the write lock before applying: waiting for it (up to the
        // busy timeout) then happens on sqlx's worker thread, not on an executor thread inside
        // the FFI call, where it could starve the task that holds the lock. (A deferred
        // transaction would also fail at once with SQLITE_BUSY_SNAPSHOT in WAL mode when
        // another connection writes between SQLite's schema reads and its first write.)
        let in_transaction = guard.with_raw_same_settings(ffi::in_transaction).await?;
        if !in_transaction {
            guard.begin_immediate().await?;
        }
        let mut guard = OwnTransaction {
            guard,
            open: !in_transaction,
        };
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let mut hooks = Hooks::new(this.handler, this.filter, this.log, Arc::clone(&cancel.0));
        hooks.change_filter = this.change_filter;
        // A small blob's tables are listed and checked against the schema now; a large blob's
        // and a stream's once SQLite has applied it.
        let tables = match (&this.source, listing) {
            (_, Some(listing)) => Tables::Listing(listing),
            (Source::Blob(blob), None) => {
                Tables::Checked(survey(blob, this.kind.unwrap_or(BlobKind::Changeset))?)
            }
            (Source::Stream(_), None) => Tables::Streamed,
        };
        if let Tables::Checked(tables) = &tables {
            hooks.tables = compatibility_cached(&mut guard.guard, tables).await?;
        }
        let job = Job {
            source: this.source,
            kind: this.kind,
            flags,
            savepoint: in_transaction,
            rebase: this.rebase,
            tables,
            hooks,
        };
        if inline {
            // An apply changes no schema, so the key layouts kept on the connection stay valid.
            let result = guard.guard.with_raw_same_schema(|db| job.run(db)).await?;
            return guard.end(result).await;
        }
        let task = blocking::spawn(move || {
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
        if let Some(list) = list {
            // The listing runs to its end without its task: the apply receives it.
            drop(blocking::spawn(list));
        }
        match task.await {
            Ok(result) => result,
            Err(panic) => Err(Error::task_failed("apply task", panic)),
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
