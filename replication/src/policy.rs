//! A conflict policy per conflict kind, for reverts and replicas.

use liteorm_changeset::{Capability, Change, ChangeOp, Conflict, ConflictAction, ConflictKind};
use liteorm_core::Value;

/// What to do for each kind of conflict. The default aborts on every kind, which stops a replica
/// (or fails a revert) with an error naming the entry and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictPolicy {
    actions: [ConflictAction; 5],
}

impl Default for ConflictPolicy {
    fn default() -> Self {
        ConflictPolicy {
            actions: [ConflictAction::Abort; 5],
        }
    }
}

/// Where the action for `kind` is kept; `None` for a kind newer than this policy, which
/// always aborts.
fn index(kind: ConflictKind) -> Option<usize> {
    match kind {
        ConflictKind::Data => Some(0),
        ConflictKind::NotFound => Some(1),
        ConflictKind::Conflict => Some(2),
        ConflictKind::Constraint => Some(3),
        ConflictKind::ForeignKey => Some(4),
        _ => None,
    }
}

impl ConflictPolicy {
    /// Aborts on every conflict.
    pub fn abort() -> Self {
        Self::default()
    }

    /// Sets the action for one kind. `Replace` for a kind that does not allow it
    /// ([`ConflictKind::allows_replace`]) makes the apply fail with `IllegalReplace` when such a
    /// conflict happens.
    pub fn on(mut self, kind: ConflictKind, action: ConflictAction) -> Self {
        if let Some(i) = index(kind) {
            self.actions[i] = action;
        }
        self
    }

    /// The action for `kind`.
    pub fn action(&self, kind: ConflictKind) -> ConflictAction {
        index(kind).map_or(ConflictAction::Abort, |i| self.actions[i])
    }

    /// The policy as a conflict handler for applying logged entries.
    ///
    /// Where SQLite cannot turn the target's foreign key actions off for the apply (before
    /// 3.44, see [`crate::log::apply_logged`]), they run again, and a change they made on the
    /// source (recorded as indirect) finds its row already as it should be: a cascaded delete's
    /// row is gone, a cascaded `SET NULL` is already null. Such a conflict is omitted, whatever
    /// the policy; any other goes to the policy.
    pub(crate) fn handler(self) -> impl FnMut(&Conflict) -> ConflictAction + Send + 'static {
        let actions_run_again = !Capability::FkNoAction.is_available();
        move |conflict| {
            if actions_run_again
                && already_made(
                    conflict.kind,
                    conflict.change.as_ref(),
                    conflict.conflicting_row.as_deref(),
                )
            {
                return ConflictAction::Omit;
            }
            self.action(conflict.kind)
        }
    }
}

/// Whether a conflict of `kind` on `change`, with `row` the target's conflicting row, is an
/// indirect change whose effect the target already shows: a `DELETE` of a row that is not
/// there, or an `UPDATE` of a row that already holds the values the update leads to (its key
/// and changed columns as recorded, every other column as it was).
fn already_made(kind: ConflictKind, change: Option<&Change>, row: Option<&[Value]>) -> bool {
    let Some(change) = change.filter(|c| c.indirect) else {
        return false;
    };
    match (kind, change.op) {
        (ConflictKind::NotFound, ChangeOp::Delete) => true,
        (ConflictKind::Data, ChangeOp::Update) => {
            let Some(row) = row else {
                return false;
            };
            row.len() == change.old.len()
                && row.iter().enumerate().all(|(i, current)| {
                    let wanted = change.new.get(i).cloned().flatten();
                    match wanted.or_else(|| change.old.get(i).cloned().flatten()) {
                        Some(wanted) => wanted == *current,
                        // Neither changed nor a key: any value is the one it keeps.
                        None => true,
                    }
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// `child(id PRIMARY KEY, parent, note)`: the cascaded `SET NULL` of row 20's parent.
    fn set_null(indirect: bool) -> Change {
        Change {
            table: Arc::from("child"),
            op: ChangeOp::Update,
            indirect,
            pk: vec![1, 0, 0],
            old: vec![Some(Value::Integer(20)), Some(Value::Integer(2)), None],
            new: vec![None, Some(Value::Null), None],
        }
    }

    fn delete(indirect: bool) -> Change {
        Change {
            table: Arc::from("child"),
            op: ChangeOp::Delete,
            indirect,
            pk: vec![1, 0, 0],
            old: vec![
                Some(Value::Integer(20)),
                Some(Value::Integer(2)),
                Some(Value::Null),
            ],
            new: Vec::new(),
        }
    }

    #[test]
    fn only_indirect_changes_the_target_already_shows_count_as_made() {
        let gone = |indirect| already_made(ConflictKind::NotFound, Some(&delete(indirect)), None);
        assert!(gone(true));
        assert!(!gone(false), "a direct change is the policy's");

        let row = |parent: Value| vec![Value::Integer(20), parent, Value::Text("x".into())];
        let nulled = |indirect, parent| {
            already_made(
                ConflictKind::Data,
                Some(&set_null(indirect)),
                Some(&row(parent)),
            )
        };
        assert!(nulled(true, Value::Null));
        assert!(!nulled(true, Value::Integer(3)), "another value");
        assert!(!nulled(false, Value::Null));
        assert!(
            !already_made(ConflictKind::Data, Some(&set_null(true)), None),
            "no row to compare"
        );
        // A NotFound update, a conflict without a change, or any other kind: the policy's.
        assert!(!already_made(
            ConflictKind::NotFound,
            Some(&set_null(true)),
            None
        ));
        assert!(!already_made(ConflictKind::ForeignKey, None, None));
        assert!(!already_made(
            ConflictKind::Constraint,
            Some(&delete(true)),
            None
        ));
    }
}
