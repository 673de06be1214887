//! The replica side: applying log entries in seq order, exactly once.

use liteorm_changeset::Changeset;
use liteorm_core::{Session, Value};
use liteorm_sqlite::{SqliteSession, SqliteTransaction};

use crate::log::{apply_logged, sqlite};
use crate::{
    ChainBreak, ChangeSource, ConflictPolicy, EntryHash, Error, LogEntry, Payload, Result,
};

/// The most changeset bytes joined into one apply ([`Replica::apply_run`]): the joined copy
/// is extra memory for the batch, and past a few megabytes the statements SQLite prepares once
/// per run are a negligible part of the apply.
const RUN_MAX_BYTES: usize = 4 << 20;

/// Undoes a run applied as one changeset ([`Replica::apply_run`]).
const UNDO_RUN: &str = "ROLLBACK TO liteorm_replica_run; RELEASE liteorm_replica_run";

const CREATE_STATE: &str = "CREATE TABLE IF NOT EXISTS liteorm_replica(
    name TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    last_hash BLOB              -- the chain hash of entry last_seq (NULL: not known)
)";

/// How far a [`Replica::catch_up`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Entries applied by this call.
    pub applied: u64,
    /// The last applied seq afterwards.
    pub last_seq: u64,
}

/// A database that follows a primary's change log.
///
/// The last applied seq is stored in the replica database (table `liteorm_replica`) and updated
/// in the same transaction as the entries it covers: after a crash at any point, the replica
/// resumes right after the last committed entry, so no entry is lost or applied twice.
///
/// **Schema entries** ([`ChangeLog::migrate`](crate::ChangeLog::migrate)) are run, in seq
/// order, in that same transaction: the replica's schema changes exactly when the primary's
/// did, between the entries recorded before and after. A migration the replica cannot run
/// stops it with [`Error::MigrationFailed`] naming the seq, cursor and schema unchanged.
///
/// **Chain check.** The replica also stores the chain hash of its last applied entry and
/// applies an entry only if its hash links to that one ([`LogEntry::follows`]); otherwise it
/// stops before it with [`Error::ChainBroken`] naming its seq, whatever source delivered it. So
/// an entry edited in the primary's log table, in a message stream or in transit, or a history
/// rewritten after the replica saw it, is never applied. A replica state from before tamper
/// evidence (a cursor without a hash) takes the hash of the first entry it applies as given
/// and checks every later one.
#[derive(Clone)]
pub struct Replica {
    db: SqliteSession,
    name: String,
    policy: ConflictPolicy,
    batch: usize,
}

impl Replica {
    /// Opens the replica state of `session`'s database (creating it at seq 0).
    pub async fn open(session: &dyn Session) -> Result<Self> {
        Self::open_named(session, "default").await
    }

    /// Like [`Replica::open`], for a database that follows several primaries (one state row each).
    pub async fn open_named(session: &dyn Session, name: &str) -> Result<Self> {
        let db = sqlite(session)?;
        db.execute_batch(CREATE_STATE).await?;
        let has_hash = db
            .query(
                "SELECT 1 FROM pragma_table_info('liteorm_replica') WHERE name = 'last_hash'",
                &[],
            )
            .await?;
        if has_hash.is_empty() {
            // A state table from before tamper evidence; concurrent openers may race here.
            if let Err(err) = db
                .execute_batch("ALTER TABLE liteorm_replica ADD COLUMN last_hash BLOB")
                .await
                && !err.to_string().contains("duplicate column")
            {
                return Err(err.into());
            }
        }
        db.execute(
            "INSERT INTO liteorm_replica(name, last_seq) VALUES (?, 0) ON CONFLICT(name) DO NOTHING",
            &[name.into()],
        )
        .await?;
        Ok(Replica {
            db,
            name: name.to_owned(),
            policy: ConflictPolicy::default(),
            batch: 256,
        })
    }

    /// The conflict policy (default: abort, which stops the replica with [`Error::Stopped`]).
    pub fn policy(mut self, policy: ConflictPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How many entries to apply per transaction (default 256; at least 1).
    pub fn batch_size(mut self, entries: usize) -> Self {
        self.batch = entries.max(1);
        self
    }

    /// The last applied seq.
    pub async fn last_applied(&self) -> Result<u64> {
        Ok(read_cursor(&self.db, &self.name).await?.0)
    }

    /// Applies `entries` (in seq order) in one transaction together with the cursor. Entries at
    /// or below the cursor are skipped (already applied); an entry beyond `cursor + 1` is a gap.
    /// On failure, the entries before the failing one are committed and the error names it.
    /// Returns the last applied seq.
    ///
    /// Consecutive change entries go to SQLite as one joined changeset ([`Changeset::join`],
    /// up to 4 MiB a run), so SQLite prepares its statements once per table and run instead of
    /// once per entry; a run that fails or skips a table is undone and applied entry by entry.
    /// On a replica that has already diverged, SQLite then retries a change that failed on a
    /// constraint at the end of the run of its table, and checks foreign keys at the end of the
    /// run, rather than at the end of its entry.
    pub async fn apply_entries(&self, entries: &[LogEntry]) -> Result<u64> {
        let tx = self.db.begin_immediate().await?;
        match self.apply_in(&tx, entries).await {
            Ok(last) => {
                tx.commit().await?;
                Ok(last)
            }
            Err((failed_at, err)) => {
                // Undo the whole batch, then redo the part that went through, so that the
                // failing entry leaves no trace however far it got. On some errors (a full
                // disk, an I/O error) SQLite has rolled the whole transaction back already, so
                // the ROLLBACK finds none: then nothing is left to undo, the cursor did not
                // move, and the error to report is the apply's.
                if tx.rollback().await.is_err() {
                    return Err(err);
                }
                if failed_at > 0 {
                    Box::pin(self.apply_entries(&entries[..failed_at])).await?;
                }
                Err(err)
            }
        }
    }

    /// Applies what it can; on error, returns the index of the failing entry. Every entry is
    /// checked (seq, chain) in order; consecutive change entries are applied together as one
    /// run ([`Self::apply_run`]), a schema entry between two runs.
    async fn apply_in(
        &self,
        tx: &SqliteTransaction,
        entries: &[LogEntry],
    ) -> Result<u64, (usize, Error)> {
        let session = tx.session();
        let (mut last, mut last_hash) =
            read_cursor(session, &self.name).await.map_err(|e| (0, e))?;
        // Checked change entries not applied yet (indices into `entries`), and their bytes.
        let (mut run, mut run_bytes) = (Vec::new(), 0);
        for (i, entry) in entries.iter().enumerate() {
            if entry.seq <= last {
                continue;
            }
            if entry.seq != last + 1 {
                return Err((
                    i,
                    Error::Gap {
                        expected: last + 1,
                        got: entry.seq,
                    },
                ));
            }
            let prev = match last_hash {
                Some(hash) => Some(hash),
                None if last == 0 => Some(EntryHash::GENESIS),
                None => {
                    tracing::warn!(
                        replica = %self.name,
                        seq = entry.seq,
                        "the replica has no chain hash for its cursor; taking this entry's as given"
                    );
                    None
                }
            };
            if prev.is_some_and(|prev| !entry.follows(&prev)) {
                return Err((
                    i,
                    Error::ChainBroken {
                        seq: entry.seq,
                        reason: ChainBreak::HashMismatch,
                    },
                ));
            }
            match entry.payload() {
                Payload::Changes(changes) => {
                    if run_bytes + changes.len() > RUN_MAX_BYTES {
                        self.apply_run(session, entries, &run).await?;
                        (run, run_bytes) = (Vec::new(), 0);
                    }
                    run.push(i);
                    run_bytes += changes.len();
                }
                Payload::Schema(sql) => {
                    self.apply_run(session, entries, &run).await?;
                    (run, run_bytes) = (Vec::new(), 0);
                    // DDL is transactional in SQLite: it commits with the cursor, or not at all.
                    session.execute_batch(sql).await.map_err(|source| {
                        (
                            i,
                            Error::MigrationFailed {
                                seq: entry.seq,
                                source: Box::new(source),
                            },
                        )
                    })?;
                    tracing::info!(replica = %self.name, seq = entry.seq, "schema migration applied");
                }
            }
            last = entry.seq;
            last_hash = Some(entry.hash);
        }
        self.apply_run(session, entries, &run).await?;
        session
            .execute(
                "UPDATE liteorm_replica SET last_seq = ?, last_hash = ? WHERE name = ?",
                &[
                    Value::Integer(i64::try_from(last).unwrap_or(i64::MAX)),
                    last_hash.map_or(Value::Null, |h| h.as_bytes().as_slice().into()),
                    self.name.as_str().into(),
                ],
            )
            .await
            .map_err(|e| (entries.len(), e.into()))?;
        Ok(last)
    }

    /// Applies the change entries `entries[i]` for each `i` in `run` (checked, consecutive).
    /// Several are applied as one changeset ([`Changeset::join`]), so SQLite prepares its
    /// statements once per table for the whole run instead of once per entry. If that apply
    /// fails or skips a table, its effects are undone and the run is applied entry by entry,
    /// which names the entry at fault and stops right before it, as the policy decides.
    async fn apply_run(
        &self,
        session: &SqliteSession,
        entries: &[LogEntry],
        run: &[usize],
    ) -> Result<(), (usize, Error)> {
        // A single entry goes straight to `apply_one`.
        if let [_, _, ..] = run {
            let joined = Changeset::join(run.iter().map(|&i| &entries[i].changeset));
            // One statement each, so that they run inline on the connection: a batch goes
            // through sqlx's worker thread (a round trip, and the handle lock taken back after
            // it), which more than doubled the cost of a small batch. The rare undo keeps its
            // two statements in one batch.
            let exec = |sql: &'static str| async move {
                session
                    .execute(sql, &[])
                    .await
                    .map(drop)
                    .map_err(|e| (run[0], e.into()))
            };
            let undo = || async move {
                session
                    .execute_batch(UNDO_RUN)
                    .await
                    .map_err(|e| (run[0], e.into()))
            };
            exec("SAVEPOINT liteorm_replica_run").await?;
            let applied = apply_logged(session, &joined, self.policy).await;
            match applied {
                Ok(report) if report.skipped_tables.is_empty() => {
                    return exec("RELEASE liteorm_replica_run").await;
                }
                Ok(_) => undo().await?,
                // Some errors (a full disk) roll the whole transaction back: then there is
                // nothing to retry in it, and the apply's error is the one to report.
                Err(err) => undo().await.map_err(|_| {
                    let seq = entries[run[0]].seq;
                    (
                        run[0],
                        Error::Stopped {
                            seq,
                            source: Box::new(err),
                        },
                    )
                })?,
            }
        }
        for &i in run {
            self.apply_one(session, &entries[i])
                .await
                .map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Applies one change entry.
    async fn apply_one(&self, session: &SqliteSession, entry: &LogEntry) -> Result<()> {
        let report = apply_logged(session, &entry.changeset, self.policy)
            .await
            .map_err(|source| Error::Stopped {
                seq: entry.seq,
                source: Box::new(source),
            })?;
        if !report.skipped_tables.is_empty() {
            // SQLite skips incompatible tables silently; a replica must not diverge silently.
            return Err(Error::SchemaMismatch {
                seq: entry.seq,
                tables: report.skipped_tables,
            });
        }
        Ok(())
    }

    /// Applies every entry `source` has after the cursor, batch by batch, reporting progress as
    /// tracing events. Returns when the source has nothing more.
    pub async fn catch_up(&self, source: &mut dyn ChangeSource) -> Result<CatchUp> {
        let mut applied = 0;
        let mut last = self.last_applied().await?;
        loop {
            let batch = source.fetch(last, self.batch).await?;
            if batch.is_empty() {
                return Ok(CatchUp {
                    applied,
                    last_seq: last,
                });
            }
            let now = self.apply_entries(&batch).await?;
            applied += now - last;
            last = now;
            tracing::info!(replica = %self.name, last_seq = last, applied, "replica catch-up progress");
        }
    }

    /// Follows `source` for ever: catches up, then waits for more. Cancel it by dropping the
    /// future; every committed batch stays, an interrupted one rolls back.
    pub async fn follow(&self, source: &mut dyn ChangeSource) -> Result<std::convert::Infallible> {
        loop {
            let done = self.catch_up(source).await?;
            source.wait(done.last_seq).await?;
        }
    }
}

/// The last applied seq and its chain hash (`None`: unknown).
async fn read_cursor(session: &dyn Session, name: &str) -> Result<(u64, Option<EntryHash>)> {
    let rows = session
        .query(
            "SELECT last_seq, last_hash FROM liteorm_replica WHERE name = ?",
            &[name.into()],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok((0, None));
    };
    let last = u64::try_from(row.try_get::<i64>(0)?).unwrap_or(0);
    let hash = row.try_get::<Option<Vec<u8>>>(1)?;
    Ok((last, hash.as_deref().and_then(EntryHash::from_slice)))
}
