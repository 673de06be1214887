//! Typed changes: what one entry of a changeset or patchset says.

use std::sync::Arc;

use liteorm_core::Value;

use crate::ffi::{RawChange, RawOp};

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

impl From<RawChange> for Change {
    fn from(raw: RawChange) -> Self {
        Change {
            table: raw.table,
            op: match raw.op {
                RawOp::Insert => ChangeOp::Insert,
                RawOp::Update => ChangeOp::Update,
                RawOp::Delete => ChangeOp::Delete,
            },
            indirect: raw.indirect,
            pk: raw.pk,
            old: raw.old,
            new: raw.new,
        }
    }
}
