//! A conflict policy per conflict kind, for reverts and replicas.

use liteorm_changeset::{Conflict, ConflictAction, ConflictKind};

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

    /// The policy as a conflict handler.
    pub(crate) fn handler(self) -> impl FnMut(&Conflict) -> ConflictAction + Send + 'static {
        move |conflict| self.action(conflict.kind)
    }
}
