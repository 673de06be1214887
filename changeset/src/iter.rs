//! Typed changes: what one entry of a changeset or patchset says.

use std::sync::Arc;

use liteorm_core::Value;

use crate::Error;
use crate::ffi::ChangesetIter;

/// What a change does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeOp {
    /// A new row.
    Insert,
    /// Changed columns of an existing row.
    Update,
    /// A removed row.
    Delete,
}

/// One change of a changeset or patchset.
///
/// `old` and `new` have one entry per column (or none when the op has no such side: `old` is
/// empty for an insert, `new` for a delete). An entry is `None` when the change does not record
/// that column (e.g. an unchanged column of an update, or a non-key column of a patchset delete)
/// and `Some(Value::Null)` when it records SQL NULL.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The table.
    pub table: Arc<str>,
    /// Insert, update or delete.
    pub op: ChangeOp,
    /// Whether the change was recorded as indirect (made by a trigger or FK action, or while the
    /// session's indirect flag was set).
    pub indirect: bool,
    /// Per column: its position in the primary key (1-based), or 0 if it is not a key column.
    pub pk: Vec<u8>,
    /// The values before the change.
    pub old: Vec<Option<Value>>,
    /// The values after the change.
    pub new: Vec<Option<Value>>,
}

impl Change {
    /// How many columns the change records for its table.
    pub fn column_count(&self) -> usize {
        self.pk.len()
    }

    /// The primary key values of the row (from `old`, or `new` for an insert).
    pub fn primary_key(&self) -> Vec<Value> {
        let side = if self.op == ChangeOp::Insert {
            &self.new
        } else {
            &self.old
        };
        self.pk
            .iter()
            .zip(side)
            .filter(|(pk, _)| **pk != 0)
            .map(|(_, v)| v.clone().unwrap_or(Value::Null))
            .collect()
    }
}

/// An iterator over the changes of a [`Changeset`](crate::Changeset) or
/// [`Patchset`](crate::Patchset) that decodes one change at a time (see
/// [`Changeset::iter`](crate::Changeset::iter)), so inspecting a large blob does not hold every
/// decoded change in memory. After an error it ends.
pub struct ChangeIter<'a> {
    state: IterState<'a>,
    kind: &'static str,
    entry: usize,
    table: Option<Arc<str>>,
}

enum IterState<'a> {
    Running(ChangesetIter<'a>),
    Failed(Error),
    Done,
}

impl<'a> ChangeIter<'a> {
    /// Iterates a validated blob.
    pub(crate) fn new(blob: &'a [u8], kind: &'static str) -> Self {
        let state = match ChangesetIter::start(blob) {
            Ok(iter) => IterState::Running(iter),
            Err(err) => IterState::Failed(invalid(kind, 0, &err)),
        };
        ChangeIter {
            state,
            kind,
            entry: 0,
            table: None,
        }
    }
}

impl Iterator for ChangeIter<'_> {
    type Item = Result<Change, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut iter = match std::mem::replace(&mut self.state, IterState::Done) {
            IterState::Running(iter) => iter,
            IterState::Failed(err) => return Some(Err(err)),
            IterState::Done => return None,
        };
        let next = match iter.advance() {
            Ok(true) => iter.current().change(&mut self.table),
            Ok(false) => return None,
            Err(err) => Err(err),
        };
        let entry = self.entry;
        self.entry += 1;
        match next {
            Ok(change) => {
                self.state = IterState::Running(iter);
                Some(Ok(change))
            }
            Err(err) => Some(Err(invalid(self.kind, entry, &err))),
        }
    }
}

impl std::iter::FusedIterator for ChangeIter<'_> {}

impl std::fmt::Debug for ChangeIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeIter")
            .field("kind", &self.kind)
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// An error at change `entry` of a blob of `kind`.
pub(crate) fn invalid(kind: &'static str, entry: usize, err: &Error) -> Error {
    Error::Invalid {
        kind,
        entry,
        offset: None,
        reason: err.to_string(),
    }
}

/// Decodes every change of `blob`.
pub(crate) fn decode(blob: &[u8], kind: &'static str) -> Result<Vec<Change>, Error> {
    ChangeIter::new(blob, kind).collect()
}
