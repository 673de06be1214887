//! Applying a changeset or patchset to a database: conflict handler, table filter, report.

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_int;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use liteorm_core::{Session, Value};
use liteorm_sqlite::ffi as sys;

use crate::ffi::{self, ApplyHooks, ChangesetIter, IterRef};
use crate::iter::Change;
use crate::{Error, gate};

pub(crate) mod sealed {
    use std::sync::Arc;

    /// Implemented by [`Changeset`](crate::Changeset) and [`Patchset`](crate::Patchset).
    pub trait Changes {
        /// The blob, shared.
        fn blob(&self) -> Arc<[u8]>;
        /// `"changeset"` or `"patchset"`.
        const KIND: &'static str;
    }
}

/// Blobs up to this size are applied on the calling task; larger ones on a blocking thread so
/// that the executor keeps running other tasks.
const INLINE_APPLY_MAX: usize = 16 * 1024;

/// Why applying a change conflicted with the target database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConflictKind {
    /// The row exists but its values differ from the change's old values (UPDATE, DELETE).
    Data,
    /// No row with the change's primary key exists (UPDATE, DELETE).
    NotFound,
    /// A row with the inserted primary key already exists (INSERT).
    Conflict,
    /// The change would violate a constraint (NOT NULL, UNIQUE, CHECK, ...).
    Constraint,
    /// The applied changes leave foreign key violations; reported once, at the end.
    ForeignKey,
}

impl ConflictKind {
    fn from_code(code: c_int) -> Option<Self> {
        Some(match code {
            sys::SQLITE_CHANGESET_DATA => ConflictKind::Data,
            sys::SQLITE_CHANGESET_NOTFOUND => ConflictKind::NotFound,
            sys::SQLITE_CHANGESET_CONFLICT => ConflictKind::Conflict,
            sys::SQLITE_CHANGESET_CONSTRAINT => ConflictKind::Constraint,
            sys::SQLITE_CHANGESET_FOREIGN_KEY => ConflictKind::ForeignKey,
            _ => return None,
        })
    }

    /// Whether [`ConflictAction::Replace`] is a legal answer (only `Data` and `Conflict`).
    pub fn allows_replace(self) -> bool {
        matches!(self, ConflictKind::Data | ConflictKind::Conflict)
    }
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A conflict handler's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConflictAction {
    /// Skip this change (for `ForeignKey`: commit the apply despite the violations).
    Omit,
    /// Overwrite the target row with the change (only for `Data` and `Conflict`; anything else
    /// aborts the apply with [`Error::IllegalReplace`]).
    Replace,
    /// Abort the whole apply: nothing is applied.
    Abort,
}

/// One conflict, as the handler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// Why the change conflicted.
    pub kind: ConflictKind,
    /// The change being applied; `None` only for [`ConflictKind::ForeignKey`], which is about the
    /// apply as a whole.
    pub change: Option<Change>,
    /// The row in the target database that conflicts (for `Data` and `Conflict`).
    pub conflicting_row: Option<Vec<Value>>,
    /// How many foreign key constraints are violated (for `ForeignKey`; otherwise 0).
    pub foreign_key_violations: usize,
}

impl Conflict {
    /// The table of the conflicting change.
    pub fn table(&self) -> Option<&str> {
        self.change.as_ref().map(|c| &*c.table)
    }
}

/// Per conflict kind: how often it occurred and what the handler answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// A table whose changes were not applied because the target schema is not compatible (SQLite
/// skips such tables without an error; liteorm reports them).
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

type Handler = Box<dyn FnMut(&Conflict) -> ConflictAction + Send>;
type Filter = Box<dyn FnMut(&str) -> bool + Send>;

/// An apply being configured; `.await` it to run. Made by [`apply`].
#[must_use = "an Apply does nothing until it is awaited"]
pub struct Apply<'a> {
    session: &'a dyn Session,
    blob: Arc<[u8]>,
    kind: &'static str,
    handler: Option<Handler>,
    filter: Option<Filter>,
    log: bool,
}

/// Applies `changes` (a [`Changeset`](crate::Changeset) or [`Patchset`](crate::Patchset)) to the
/// `main` database of `session`, atomically.
///
/// Without [`Apply::on_conflict`], any conflict aborts the apply and nothing is applied
/// ([`Error::Aborted`] names the conflict). Inside a transaction (a pinned session) the apply
/// joins it. Large blobs are applied on a blocking thread with the connection moved there, so the
/// executor keeps running; dropping the future interrupts the apply, which then rolls back.
pub fn apply<'a, C: sealed::Changes>(session: &'a dyn Session, changes: &C) -> Apply<'a> {
    Apply {
        session,
        blob: changes.blob(),
        kind: C::KIND,
        handler: None,
        filter: None,
        log: false,
    }
}

impl<'a> Apply<'a> {
    /// Resolves each conflict. The handler is a plain (synchronous) closure that runs on the
    /// thread applying the changeset, between SQLite's own steps: keep it quick and do not block
    /// on async work in it. A panic in it aborts the apply ([`Error::CallbackPanicked`]).
    pub fn on_conflict(
        mut self,
        handler: impl FnMut(&Conflict) -> ConflictAction + Send + 'static,
    ) -> Self {
        self.handler = Some(Box::new(handler));
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

    async fn run(self) -> Result<ApplyReport, Error> {
        let sqlite = gate::sqlite(self.session, "applying a changeset")?;
        let pinned = sqlite.pin().await?;
        let mut guard = pinned.lock().await?;
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let mut job = Job {
            blob: self.blob,
            kind: self.kind,
            hooks: Hooks::new(self.handler, self.filter, self.log, Arc::clone(&cancel.0)),
        };
        if job.blob.len() <= INLINE_APPLY_MAX {
            return guard.with_raw(|db| job.run(db)).await?;
        }
        let task = tokio::task::spawn_blocking(move || {
            // The guard (and with it the connection) lives on this thread until the apply is
            // over, whatever happens to the future that spawned it.
            let result = guard.with_raw_blocking(|db| job.run(db));
            drop(guard);
            drop(pinned);
            result
        });
        match task.await {
            Ok(result) => result?,
            Err(join) => Err(Error::CallbackPanicked {
                callback: "apply task",
                message: join.to_string(),
            }),
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
    blob: Arc<[u8]>,
    kind: &'static str,
    hooks: Hooks,
}

/// Per table of the blob: its header and how many changes it has.
struct TableInfo {
    n_col: usize,
    pk: Vec<u8>,
    changes: usize,
}

impl Job {
    fn run(&mut self, db: NonNull<sys::sqlite3>) -> Result<ApplyReport, Error> {
        let tables = self.survey()?;
        // SAFETY: `db` comes from `with_raw*`, so it is valid and locked for this call.
        let compat = unsafe { compatibility(db, &tables)? };
        self.hooks.tables = compat;
        // An outer savepoint lets us undo everything when a callback fails after SQLite has
        // already committed its own savepoint (a filter panic, say).
        // SAFETY: as above.
        unsafe { ffi::exec(db, c"SAVEPOINT liteorm_apply", "starting the apply")? };
        // SAFETY: as above.
        let rc = unsafe { ffi::apply(db, &self.blob, 0, &mut self.hooks) };
        let failure = match rc {
            Err(err) => Some(err),
            Ok(_) if self.hooks.failure.is_some() => self.hooks.failure.take(),
            Ok(_) if self.hooks.cancel.load(Ordering::Relaxed) => Some(Error::Cancelled),
            Ok(rc) if rc != sys::SQLITE_OK => {
                // SAFETY: as above.
                Some(unsafe { ffi::db_error(db, rc, "sqlite3changeset_apply") })
            }
            Ok(_) => None,
        };
        let end: &std::ffi::CStr = if failure.is_some() {
            c"ROLLBACK TO liteorm_apply; RELEASE liteorm_apply"
        } else {
            c"RELEASE liteorm_apply"
        };
        // SAFETY: as above.
        let ended = unsafe { ffi::exec(db, end, "ending the apply") };
        if let Some(failure) = failure {
            return Err(failure);
        }
        ended?;
        let mut report = std::mem::take(&mut self.hooks.report);
        report.changes = tables.values().map(|t| t.changes).sum();
        report.applied = report.attempted - report.omitted.min(report.attempted);
        Ok(report)
    }

    /// Walks the blob once for its tables, their headers and change counts; a corrupt blob fails
    /// here, before anything is written.
    fn survey(&self) -> Result<HashMap<String, TableInfo>, Error> {
        let mut tables: HashMap<String, TableInfo> = HashMap::new();
        let mut iter = ChangesetIter::start(&self.blob)?;
        let mut entry = 0;
        // Changes come grouped by table: count a run, and look the table up when it ends.
        let mut run: Option<(String, TableInfo)> = None;
        while iter.advance().map_err(|e| invalid(self.kind, entry, &e))? {
            let current = iter.current();
            let (table, n_col, pk) = current
                .header()
                .map_err(|e| invalid(self.kind, entry, &e))?;
            match run.as_mut() {
                Some((name, info)) if name.as_bytes() == table.to_bytes() => info.changes += 1,
                _ => {
                    let info = TableInfo {
                        n_col,
                        pk: pk.to_vec(),
                        changes: 1,
                    };
                    if let Some((name, done)) =
                        run.replace((table.to_string_lossy().into_owned(), info))
                    {
                        merge(&mut tables, name, done);
                    }
                }
            }
            entry += 1;
        }
        if let Some((name, done)) = run {
            merge(&mut tables, name, done);
        }
        Ok(tables)
    }
}

fn merge(tables: &mut HashMap<String, TableInfo>, name: String, run: TableInfo) {
    tables
        .entry(name)
        .and_modify(|t| t.changes += run.changes)
        .or_insert(run);
}

fn invalid(kind: &'static str, entry: usize, err: &Error) -> Error {
    Error::Invalid {
        kind,
        entry,
        offset: None,
        reason: err.to_string(),
    }
}

/// Checks each table against the target schema as SQLite does (same name, at least as many
/// columns, same primary key columns), so skipped tables can be reported.
///
/// # Safety
/// `db` is valid and locked.
unsafe fn compatibility(
    db: NonNull<sys::sqlite3>,
    tables: &HashMap<String, TableInfo>,
) -> Result<HashMap<String, (usize, Option<SkipReason>)>, Error> {
    let mut out = HashMap::with_capacity(tables.len());
    for (name, info) in tables {
        // SAFETY: `db` is valid and locked (the caller's promise).
        let reason = match unsafe { ffi::table_pk(db, name)? } {
            None => Some(SkipReason::Missing),
            Some(pk) if pk.len() < info.n_col => Some(SkipReason::TooFewColumns {
                expected: info.n_col,
                found: pk.len(),
            }),
            Some(pk) if pk[..info.n_col] != info.pk[..] => Some(SkipReason::PrimaryKeyMismatch),
            Some(_) => None,
        };
        out.insert(name.clone(), (info.changes, reason));
    }
    Ok(out)
}

/// The callbacks of one apply and what they have counted.
struct Hooks {
    handler: Option<Handler>,
    filter: Option<Filter>,
    log: bool,
    cancel: Arc<AtomicBool>,
    /// Per table: change count and why it must be skipped, if it must.
    tables: HashMap<String, (usize, Option<SkipReason>)>,
    report: ApplyReport,
    failure: Option<Error>,
    table_cache: Option<Arc<str>>,
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
            report: ApplyReport::default(),
            failure: None,
            table_cache: None,
        }
    }

    fn fail(&mut self, error: Error) -> c_int {
        self.failure.get_or_insert(error);
        sys::SQLITE_CHANGESET_ABORT
    }

    fn read_conflict(&mut self, kind: ConflictKind, iter: &IterRef<'_>) -> Result<Conflict, Error> {
        if kind == ConflictKind::ForeignKey {
            return Ok(Conflict {
                kind,
                change: None,
                conflicting_row: None,
                foreign_key_violations: iter.fk_conflicts(),
            });
        }
        let change = iter.change(&mut self.table_cache)?;
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
}

impl ApplyHooks for Hooks {
    fn filter(&mut self, table: &str) -> bool {
        if let Some(filter) = self.filter.as_mut()
            && !filter(table)
        {
            self.report.filtered_tables.push(table.to_owned());
            return false;
        }
        match self.tables.get(table) {
            Some((changes, None)) => {
                self.report.attempted += changes;
                true
            }
            Some((changes, Some(reason))) => {
                self.report.skipped_tables.push(SkippedTable {
                    table: table.to_owned(),
                    reason: reason.clone(),
                    changes: *changes,
                });
                false
            }
            // The survey saw every table of the blob; SQLite cannot name another.
            None => false,
        }
    }

    fn conflict(&mut self, code: c_int, iter: IterRef<'_>) -> c_int {
        let Some(kind) = ConflictKind::from_code(code) else {
            return self.fail(ffi::code_error(sys::SQLITE_MISUSE, "unknown conflict kind"));
        };
        let conflict = match self.read_conflict(kind, &iter) {
            Ok(conflict) => conflict,
            Err(err) => return self.fail(err),
        };
        let action = match self.handler.as_mut() {
            Some(handler) => handler(&conflict),
            None => ConflictAction::Abort,
        };
        let counts = self.report.conflicts.entry(kind).or_default();
        counts.seen += 1;
        let code = match action {
            ConflictAction::Omit => {
                counts.omitted += 1;
                if kind != ConflictKind::ForeignKey {
                    self.report.omitted += 1;
                }
                sys::SQLITE_CHANGESET_OMIT
            }
            ConflictAction::Replace if kind.allows_replace() => {
                counts.replaced += 1;
                self.report.replaced += 1;
                sys::SQLITE_CHANGESET_REPLACE
            }
            ConflictAction::Replace => {
                return self.fail(Error::IllegalReplace {
                    conflict: Box::new(conflict),
                });
            }
            ConflictAction::Abort => {
                return self.fail(Error::Aborted {
                    conflict: Box::new(conflict),
                });
            }
        };
        if self.log {
            self.report.conflict_log.push((conflict, action));
        }
        code
    }

    fn should_stop(&self) -> bool {
        self.failure.is_some() || self.cancel.load(Ordering::Relaxed)
    }

    fn panicked(&mut self, callback: &'static str, payload: Box<dyn std::any::Any + Send>) {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        self.failure
            .get_or_insert(Error::CallbackPanicked { callback, message });
    }
}
