//! What an apply did: counts per conflict kind, skipped tables, the conflict log.

use std::collections::BTreeMap;
use std::fmt;

use crate::RebaseBuffer;
use crate::conflict::{Conflict, ConflictAction, ConflictKind};

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
    /// Changes the change filter ([`Apply::filter_change`](super::Apply::filter_change))
    /// excluded; they are not in `attempted`.
    pub filtered_changes: usize,
    /// Tables skipped because the target schema is not compatible.
    pub skipped_tables: Vec<SkippedTable>,
    /// Every conflict with its verdict, in order, when
    /// [`Apply::log_conflicts`](super::Apply::log_conflicts) was set.
    pub conflict_log: Vec<(Conflict, ConflictAction)>,
    /// How the conflicts were resolved, for a [`Rebaser`](crate::Rebaser) of local changes,
    /// when [`Apply::rebase_buffer`](super::Apply::rebase_buffer) was set (empty otherwise,
    /// when no conflict was resolved with `Omit` or `Replace`, and for patchsets).
    pub rebase: RebaseBuffer,
}
