//! Conflicts of an apply: why a change conflicted, the owned conflict a handler sees, and the
//! handler's verdict.

use std::fmt;

use liteorm_core::Value;

use crate::change::Change;
use crate::ffi::RawConflict;

/// Why applying a change conflicted with the target database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
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
    /// Every kind, in order.
    pub(crate) const ALL: [ConflictKind; 5] = [
        ConflictKind::Data,
        ConflictKind::NotFound,
        ConflictKind::Conflict,
        ConflictKind::Constraint,
        ConflictKind::ForeignKey,
    ];

    /// The position of this kind in [`ConflictKind::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            ConflictKind::Data => 0,
            ConflictKind::NotFound => 1,
            ConflictKind::Conflict => 2,
            ConflictKind::Constraint => 3,
            ConflictKind::ForeignKey => 4,
        }
    }

    pub(crate) fn from_raw(raw: RawConflict) -> Self {
        match raw {
            RawConflict::Data => ConflictKind::Data,
            RawConflict::NotFound => ConflictKind::NotFound,
            RawConflict::Conflict => ConflictKind::Conflict,
            RawConflict::Constraint => ConflictKind::Constraint,
            RawConflict::ForeignKey => ConflictKind::ForeignKey,
        }
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
    /// aborts the apply with [`Error::IllegalReplace`](crate::Error::IllegalReplace)).
    Replace,
    /// Abort the whole apply: nothing is applied.
    Abort,
}

/// One conflict, as the handler sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_sits_at_its_index() {
        for (i, kind) in ConflictKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind}");
        }
    }
}
