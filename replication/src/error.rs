//! Errors of the audit and replication layer.

/// Errors from recording, auditing and replicating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement failed.
    #[error(transparent)]
    Session(#[from] liteorm_core::Error),
    /// Capturing or applying a changeset failed.
    #[error(transparent)]
    Changeset(#[from] liteorm_changeset::Error),
    /// No log entry has this seq.
    #[error("no change log entry with seq {0}")]
    NoSuchEntry(u64),
    /// The next entry a replica received is not the one after its last applied seq.
    #[error("replication gap: expected seq {expected}, got {got}")]
    Gap {
        /// The seq the replica needs next.
        expected: u64,
        /// The seq it was given.
        got: u64,
    },
    /// Applying an entry failed (a conflict under the policy, or a schema problem); the replica
    /// stopped before it, with everything earlier committed.
    #[error("replica stopped at seq {seq}: {source}")]
    Stopped {
        /// The entry that could not be applied.
        seq: u64,
        /// Why.
        source: Box<liteorm_changeset::Error>,
    },
    /// An entry touches tables the replica does not have in a compatible form (missing, fewer
    /// columns, another primary key); the replica stopped before it.
    #[error("replica stopped at seq {seq}: incompatible tables {}", describe(.tables))]
    SchemaMismatch {
        /// The entry that could not be applied.
        seq: u64,
        /// The tables and why each is incompatible.
        tables: Vec<liteorm_changeset::SkippedTable>,
    },
    /// A stored log entry is malformed.
    #[error("corrupt change log entry {seq}: {reason}")]
    CorruptEntry {
        /// The entry.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The hash chain of the change log is broken at `seq`: that entry (or the one before it)
    /// was changed, deleted, inserted or moved after it was logged. Found by
    /// [`ChangeLog::verify`](crate::ChangeLog::verify), before a revert, or by a replica, which
    /// stops before the entry.
    #[error("change log chain broken at seq {seq}: {reason}")]
    ChainBroken {
        /// The first entry that does not verify.
        seq: u64,
        /// How it fails.
        reason: ChainBreak,
    },
    /// The change source failed or went away.
    #[error("change source: {0}")]
    Source(String),
    /// A replica could not run the schema migration of entry `seq` (its schema differs from
    /// the primary's at that point, say); it stopped before it, with the cursor unchanged.
    #[error("replica stopped at seq {seq}: the schema migration failed: {source}")]
    MigrationFailed {
        /// The schema entry.
        seq: u64,
        /// SQLite's error.
        source: Box<liteorm_core::Error>,
    },
    /// [`ChangeLog::migrate`](crate::ChangeLog::migrate) refused the SQL before running it, or
    /// rolled it back: nothing was changed or logged.
    #[error("migration refused: {0}")]
    InvalidMigration(String),
    /// A revert or rollback would have to undo entry `seq`, which it cannot: a schema
    /// migration, or changes the current schema can no longer take (their table was dropped,
    /// renamed or lost columns since). Nothing was applied.
    #[error("cannot undo entry {seq}: {reason}")]
    NotRevertible {
        /// The entry.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// [`ChangeLog::prune`](crate::ChangeLog::prune) refused to drop entries a known replica
    /// has not applied yet. Nothing was pruned.
    #[error(
        "not pruning up to seq {up_to}: replica {replica:?} has applied only up to seq \
         {applied}; wait for it, forget it, or force the prune"
    )]
    PruneBlocked {
        /// The seq asked for.
        up_to: u64,
        /// The replica furthest behind.
        replica: String,
        /// Its last applied seq.
        applied: u64,
    },
    /// The replica needs entries that were pruned from the log (or dropped by the stream's
    /// limits): it cannot catch up from this source any more.
    #[error(
        "replica at seq {applied} is behind the pruned horizon (entries up to seq {horizon} are \
         gone): bootstrap it again from a snapshot of the primary"
    )]
    BehindHorizon {
        /// The replica's last applied seq.
        applied: u64,
        /// Entries up to this seq are gone.
        horizon: u64,
    },
}

/// How a change log's hash chain is broken (see [`Error::ChainBroken`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBreak {
    /// The entry's hash is not the link of the previous hash and its fields: its content or
    /// metadata was edited, it was moved or inserted, or the entry before it was replaced.
    #[error("its hash does not match its content, metadata and the previous entry")]
    HashMismatch,
    /// The entry is missing (deleted): the log goes on at `next`.
    #[error("the entry is missing; the log continues at seq {next}")]
    Missing {
        /// The seq found instead.
        next: u64,
    },
    /// The entry cannot be read (no or a malformed hash, an unknown kind, an invalid changeset).
    #[error("unreadable entry: {0}")]
    Unreadable(String),
}

fn describe(tables: &[liteorm_changeset::SkippedTable]) -> String {
    let each: Vec<String> = tables
        .iter()
        .map(|t| format!("{} ({:?})", t.table, t.reason))
        .collect();
    each.join(", ")
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    /// So that `?` works on the app's own sqlx queries inside [`ChangeLog::record`]'s closure: a
    /// database error keeps SQLite's code and message ([`liteorm_sqlite::from_sqlx_error`]).
    ///
    /// [`ChangeLog::record`]: crate::ChangeLog::record
    fn from(err: sqlx::Error) -> Self {
        Error::Session(liteorm_sqlite::from_sqlx_error(err))
    }
}
