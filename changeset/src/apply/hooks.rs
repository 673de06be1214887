//! The callbacks of one apply (table filter, change filter, conflict handler) and what they
//! count.

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use liteorm_core::Value;

use crate::Error;
use crate::change::Change;
use crate::conflict::{Conflict, ConflictAction, ConflictKind};
use crate::ffi::{self, ApplyHooks, IterRef, RawConflict, Verdict};

use super::report::{ApplyReport, ConflictCounts, SkipReason, SkippedTable};

/// One conflict as a borrowed view that decodes values only when asked, for
/// [`Apply::on_conflict_ref`](super::Apply::on_conflict_ref): a handler that decides on
/// [`ConflictRef::kind`] or [`ConflictRef::table`] alone costs no decoding. It lives only during the handler call;
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

/// The conflict handler: on an owned, decoded [`Conflict`], or on a lazy [`ConflictRef`].
pub(super) enum Handler {
    Owned(Box<dyn FnMut(&Conflict) -> ConflictAction + Send>),
    Lazy(Box<dyn for<'c> FnMut(&ConflictRef<'c>) -> ConflictAction + Send>),
}
pub(super) type Filter = Box<dyn FnMut(&str) -> bool + Send>;
pub(super) type ChangeFilter = Box<dyn FnMut(&Change) -> bool + Send>;

/// The callbacks of one apply and what they have counted.
pub(super) struct Hooks {
    pub(super) handler: Option<Handler>,
    pub(super) filter: Option<Filter>,
    pub(super) change_filter: Option<ChangeFilter>,
    pub(super) log: bool,
    pub(super) cancel: Arc<AtomicBool>,
    /// Per table: change count and why it must be skipped, if it must.
    pub(super) tables: HashMap<String, (usize, Option<SkipReason>)>,
    /// The filter's decision per table, made (and counted in the report) once: SQLite asks
    /// once per run of a table, and a table can have several (e.g. changesets concatenated
    /// byte for byte), or once per change with a change filter.
    pub(super) decided: HashMap<String, bool>,
    pub(super) report: ApplyReport,
    /// Conflicts per kind (indexed by [`ConflictKind::index`]), moved into the report's map at
    /// the end: a lookup in the map per conflict costs more than the rest of the counting.
    pub(super) conflict_counts: [ConflictCounts; ConflictKind::ALL.len()],
    pub(super) failure: Option<Error>,
    pub(super) table_cache: Option<Arc<str>>,
    /// Whether the input's tables are checked only after SQLite applied it (a stream, or a
    /// large blob listed meanwhile): SQLite skips incompatible tables itself then.
    pub(super) deferred: bool,
    /// When deferred: the tables the filter let through, in order.
    pub(super) passed: Vec<String>,
}

impl Hooks {
    pub(super) fn new(
        handler: Option<Handler>,
        filter: Option<Filter>,
        log: bool,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        Hooks {
            handler,
            filter,
            change_filter: None,
            log,
            cancel,
            tables: HashMap::new(),
            decided: HashMap::new(),
            report: ApplyReport::default(),
            conflict_counts: [ConflictCounts::default(); ConflictKind::ALL.len()],
            failure: None,
            table_cache: None,
            deferred: false,
            passed: Vec::new(),
        }
    }

    /// After a deferred apply: counts the changes of the tables the filter let through, now
    /// that the input's tables and their compatibility are known.
    pub(super) fn account_deferred(
        &mut self,
        compat: &HashMap<String, (usize, Option<SkipReason>)>,
    ) {
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
        self.account_unasked(compat);
    }

    /// After an apply: reports the incompatible tables SQLite skipped without asking the filter
    /// (its per-change filter is only asked once a table's schema matched), by name.
    pub(super) fn account_unasked(
        &mut self,
        compat: &HashMap<String, (usize, Option<SkipReason>)>,
    ) {
        let mut unasked: Vec<SkippedTable> = compat
            .iter()
            .filter(|(table, _)| !self.decided.contains_key(*table))
            .filter_map(|(table, (changes, reason))| {
                Some(SkippedTable {
                    table: table.clone(),
                    reason: reason.clone()?,
                    changes: *changes,
                })
            })
            .collect();
        unasked.sort_by(|a, b| a.table.cmp(&b.table));
        self.report.skipped_tables.extend(unasked);
    }

    /// The report, with the conflicts counted per kind (the kinds that occurred).
    pub(super) fn into_report(self) -> ApplyReport {
        let mut report = self.report;
        report.conflicts = ConflictKind::ALL
            .into_iter()
            .zip(self.conflict_counts)
            .filter(|(_, counts)| counts.seen > 0)
            .collect();
        report
    }

    fn fail(&mut self, error: Error) -> Verdict {
        self.failure.get_or_insert(error);
        Verdict::Abort
    }

    /// Counts a conflict of `kind` answered with `action`; the verdict for SQLite if `action`
    /// is one (`None` for `Abort`, and for a `Replace` that `kind` does not allow).
    fn tally(&mut self, kind: ConflictKind, action: ConflictAction) -> Option<Verdict> {
        let counts = &mut self.conflict_counts[kind.index()];
        counts.seen += 1;
        match action {
            ConflictAction::Omit => {
                counts.omitted += 1;
                if kind != ConflictKind::ForeignKey {
                    self.report.omitted += 1;
                }
                Some(Verdict::Omit)
            }
            ConflictAction::Replace if kind.allows_replace() => {
                counts.replaced += 1;
                self.report.replaced += 1;
                Some(Verdict::Replace)
            }
            ConflictAction::Replace | ConflictAction::Abort => None,
        }
    }

    /// The outcome of `action` on a conflict of `kind`, counted with `verdict` (see
    /// [`Hooks::tally`]), that needs the owned conflict (`decoded`, or decoded from `iter` now):
    /// one to log, or one that fails the apply.
    #[inline(never)]
    fn resolve(
        &mut self,
        kind: ConflictKind,
        action: ConflictAction,
        verdict: Option<Verdict>,
        decoded: Option<Conflict>,
        iter: &IterRef<'_>,
    ) -> Verdict {
        let conflict = match decoded {
            Some(conflict) => conflict,
            None => match read_conflict(kind, iter, &mut self.table_cache) {
                Ok(conflict) => conflict,
                Err(err) => return self.fail(err),
            },
        };
        match verdict {
            Some(verdict) => {
                if self.log {
                    self.report.conflict_log.push((conflict, action));
                }
                verdict
            }
            None if action == ConflictAction::Abort => self.fail(Error::Aborted {
                conflict: Box::new(conflict),
            }),
            None => self.fail(Error::IllegalReplace {
                conflict: Box::new(conflict),
            }),
        }
    }
}

impl Hooks {
    /// The table filter's decision for `table`, counted in the report (the first time only).
    fn decide(&mut self, table: &str) -> bool {
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
            // SQLite skips an incompatible table itself; `account_deferred` reports it.
            None if self.deferred => {
                self.passed.push(table.to_owned());
                true
            }
            // The survey saw every table of the blob; SQLite cannot name another.
            None => false,
        }
    }

    /// Whether the change filter keeps `change` (of a table the table filter kept). A panic in
    /// it is recorded and rejects the change; the apply then stops.
    pub(super) fn offer(&mut self, change: &Change) -> bool {
        let Some(filter) = self.change_filter.as_mut() else {
            return true;
        };
        match catch_unwind(AssertUnwindSafe(|| filter(change))) {
            Ok(true) => true,
            Ok(false) => {
                self.report.filtered_changes += 1;
                false
            }
            Err(payload) => {
                self.panicked("change filter", payload);
                false
            }
        }
    }
}

impl ApplyHooks for Hooks {
    fn filter(&mut self, table: &str) -> bool {
        if let Some(&keep) = self.decided.get(table) {
            return keep;
        }
        let keep = self.decide(table);
        self.decided.insert(table.to_owned(), keep);
        keep
    }

    #[cfg(sqlite_has_apply_v3)]
    fn filters_changes(&self) -> bool {
        self.change_filter.is_some()
    }

    #[cfg(sqlite_has_apply_v3)]
    fn filter_change(&mut self, iter: IterRef<'_>) -> bool {
        let change = match iter.change(&mut self.table_cache) {
            Ok(change) => Change::from(change),
            Err(err) => {
                self.fail(err.into());
                return false;
            }
        };
        self.filter(&change.table) && self.offer(&change)
    }

    fn conflict(&mut self, kind: Option<RawConflict>, iter: IterRef<'_>) -> Verdict {
        let Some(kind) = kind.map(ConflictKind::from_raw) else {
            return self.fail(ffi::misuse("unknown conflict kind").into());
        };
        let action = match self.handler.as_mut() {
            Some(Handler::Lazy(handler)) => handler(&ConflictRef { kind, iter: &iter }),
            // The owned conflict, decoded before the handler.
            Some(Handler::Owned(handler)) => {
                return match read_conflict(kind, &iter, &mut self.table_cache) {
                    Ok(conflict) => {
                        let action = handler(&conflict);
                        let verdict = self.tally(kind, action);
                        self.resolve(kind, action, verdict, Some(conflict), &iter)
                    }
                    Err(err) => self.fail(err),
                };
            }
            None => ConflictAction::Abort,
        };
        // The usual outcome of a lazy handler needs no decoding: counted, and answered.
        match self.tally(kind, action) {
            Some(verdict) if !self.log => verdict,
            verdict => self.resolve(kind, action, verdict, None, &iter),
        }
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
