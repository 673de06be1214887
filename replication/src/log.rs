//! The change log: recording units of work with their changesets, querying them, reverting.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use liteorm_changeset::{ApplyReport, Capability, Capture, Changeset, SchemaChangegroup, apply};
use liteorm_core::{Row, Session, Value, ValueRef};
use liteorm_sqlite::raw::DataVersion;
use liteorm_sqlite::{PinnedGuard, SqliteSession};
use tokio::sync::mpsc;

use crate::chain::{self, EntryHash, Fields};
use crate::{ChainBreak, ConflictPolicy, Error, Result};

/// The log table. It is written after each capture ends, so it is never recorded itself. (No
/// comment after the column before `hash`: `ALTER TABLE ... DROP COLUMN hash`, how the tests
/// make an old log, would leave it unterminated.)
pub(crate) const CREATE_LOG: &str = "CREATE TABLE IF NOT EXISTS liteorm_changes(
    seq INTEGER PRIMARY KEY,      -- horizon + 1, + 2, ... without gaps (only pruning deletes)
    committed_at INTEGER NOT NULL, -- Unix time in milliseconds
    actor TEXT,
    reason TEXT,
    tables TEXT NOT NULL,         -- ',a,b,': the tables the entry touches
    kind TEXT NOT NULL,           -- 'change' | 'revert' | 'rollback' | 'schema' (blob: its SQL)
    ref_seq INTEGER,              -- the entry a revert undoes / the seq a rollback returns to
    blob BLOB NOT NULL,
    hash BLOB                     -- chain::link(previous hash, this entry): tamper evidence
)";

/// Where a pruned log starts: the last pruned entry's seq and chain hash (one row at most).
pub(crate) const CREATE_HORIZON: &str = "CREATE TABLE IF NOT EXISTS liteorm_log_horizon(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,         -- every entry up to here was pruned
    hash BLOB NOT NULL,           -- the chain hash of entry seq: the next entry links to it
    pruned_at INTEGER NOT NULL    -- Unix time in milliseconds
)";

pub(crate) const SELECT_ENTRY: &str = "SELECT seq, committed_at, actor, reason, tables, kind, ref_seq, blob, hash FROM liteorm_changes";

/// The replica cursors reported to the primary (see `retention`).
pub(crate) const CREATE_CURSORS: &str = "CREATE TABLE IF NOT EXISTS liteorm_replica_cursors(
    name TEXT PRIMARY KEY,
    applied_seq INTEGER NOT NULL, -- the replica has applied every entry up to here
    reported_at INTEGER NOT NULL  -- Unix time in milliseconds
)";

/// Who made a change and why; stored with the log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// The user or service that made the change.
    pub actor: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

impl Meta {
    /// Metadata naming the actor.
    pub fn actor(actor: impl Into<String>) -> Self {
        Meta {
            actor: Some(actor.into()),
            reason: None,
        }
    }

    /// Adds a reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// What produced a log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A unit of work run through [`ChangeLog::record`].
    Change,
    /// [`ChangeLog::revert`] of the entry with this seq.
    Revert(u64),
    /// [`ChangeLog::rollback_to`] this seq.
    Rollback(u64),
    /// A schema migration run through [`ChangeLog::migrate`]: the entry carries its SQL
    /// ([`LogEntry::ddl`]), which every replica runs at this point of the log, not a changeset.
    Schema,
}

/// What a log entry carries, by kind (see [`LogEntry::payload`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Payload<'a> {
    /// Row changes: a [`EntryKind::Change`], [`EntryKind::Revert`] or [`EntryKind::Rollback`].
    Changes(&'a Changeset),
    /// The SQL of a [`EntryKind::Schema`] entry.
    Schema(&'a str),
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Its position in the log: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub committed_at_ms: i64,
    /// Who made it.
    pub actor: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// What produced it.
    pub kind: EntryKind,
    /// The tables it touches: those its changeset changes, or for a schema entry those whose
    /// definition (or an index or trigger on them) the migration created, changed or dropped.
    pub tables: Vec<String>,
    /// The changes (empty for a [`EntryKind::Schema`] entry).
    pub changeset: Changeset,
    /// The SQL a [`EntryKind::Schema`] entry ran; `None` for every other kind.
    pub ddl: Option<String>,
    /// Chains this entry to the one before it (see [`ChangeLog::verify`]): a hash of the
    /// previous entry's hash and every field above.
    pub hash: EntryHash,
}

impl LogEntry {
    /// What the entry carries: the SQL of a schema entry, the changeset of any other.
    pub fn payload(&self) -> Payload<'_> {
        match (self.kind, &self.ddl) {
            (EntryKind::Schema, Some(sql)) => Payload::Schema(sql),
            (EntryKind::Schema, None) => Payload::Schema(""),
            _ => Payload::Changes(&self.changeset),
        }
    }

    /// The fields the chain hash covers.
    pub(crate) fn fields(&self) -> Fields<'_> {
        Fields {
            seq: self.seq,
            committed_at_ms: self.committed_at_ms,
            actor: self.actor.as_deref(),
            reason: self.reason.as_deref(),
            kind: self.kind,
            tables: &self.tables,
            payload: match self.payload() {
                Payload::Changes(changeset) => changeset.as_bytes(),
                Payload::Schema(sql) => sql.as_bytes(),
            },
        }
    }

    /// Makes this the entry after `head` (its seq and chain hash): sets the seq and the hash.
    fn link_to(&mut self, (seq, hash): (u64, EntryHash)) {
        self.seq = seq + 1;
        self.hash = chain::link(&hash, &self.fields());
    }

    /// Whether this entry's hash is the link after `prev`: false when any field, the entry's
    /// position, or the previous entry differs from what was hashed when it was logged.
    pub fn follows(&self, prev: &EntryHash) -> bool {
        chain::link(prev, &self.fields()) == self.hash
    }

    /// Decodes one row of the log table (the only decoder of that format).
    pub(crate) fn from_row(row: &Row) -> Result<Self> {
        let stored = row.try_get::<i64>("seq")?;
        let seq = seq_of(stored);
        let corrupt = |reason: String| Error::CorruptEntry { seq, reason };
        // Seqs start at 1; a damaged row must not pass for an entry 0 (found by the `log_row`
        // fuzz target).
        if seq == 0 {
            return Err(corrupt(format!("seq {stored} is not positive")));
        }
        let ref_seq = match row.try_get::<Option<i64>>("ref_seq")? {
            Some(stored) if stored < 0 => {
                return Err(corrupt(format!("ref_seq {stored} is not positive")));
            }
            other => other.map(seq_of),
        };
        // A rollback to 0 returns to before the first entry; a revert undoes an entry (seq >= 1).
        let kind = match (row.try_get::<String>("kind")?.as_str(), ref_seq) {
            ("change", _) => EntryKind::Change,
            ("revert", Some(0)) => {
                return Err(corrupt("ref_seq 0 is not positive for a revert".into()));
            }
            ("revert", Some(of)) => EntryKind::Revert(of),
            ("rollback", Some(to)) => EntryKind::Rollback(to),
            ("schema", _) => EntryKind::Schema,
            (other, _) => return Err(corrupt(format!("unknown kind {other:?}"))),
        };
        let blob: Vec<u8> = row.try_get("blob")?;
        let (changeset, ddl) = if kind == EntryKind::Schema {
            let sql = String::from_utf8(blob)
                .map_err(|_| corrupt("the SQL of a schema entry is not UTF-8".into()))?;
            (Changeset::default(), Some(sql))
        } else {
            let changeset = Changeset::from_bytes(blob).map_err(|e| corrupt(e.to_string()))?;
            (changeset, None)
        };
        let tables: String = row.try_get("tables")?;
        let hash = row
            .try_get::<Option<Vec<u8>>>("hash")?
            .ok_or_else(|| corrupt("no chain hash".into()))?;
        let hash = EntryHash::from_slice(&hash)
            .ok_or_else(|| corrupt(format!("a chain hash of {} bytes, not 32", hash.len())))?;
        Ok(LogEntry {
            seq,
            committed_at_ms: row.try_get("committed_at")?,
            actor: row.try_get("actor")?,
            reason: row.try_get("reason")?,
            kind,
            tables: tables
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            changeset,
            ddl,
            hash,
        })
    }
}

/// Seqs are stored as SQLite integers and are always positive.
fn seq_of(stored: i64) -> u64 {
    u64::try_from(stored).unwrap_or(0)
}

fn stored(seq: u64) -> Value {
    Value::Integer(stored_int(seq))
}

fn stored_int(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Where a log entry is written: the connection of the unit of work's transaction, a liteorm
/// session there or a connection lent by another driver ([`crate::lent`]).
///
/// Parameters are borrowed: an entry's changeset is bound where it is, not copied.
pub(crate) trait EntryWriter {
    /// Runs one statement with positional parameters and returns its rows.
    fn query(
        &mut self,
        sql: &str,
        params: &[ValueRef<'_>],
    ) -> impl Future<Output = Result<Vec<Row>>>;

    /// Runs one statement with positional parameters and returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[ValueRef<'_>]) -> impl Future<Output = Result<u64>>;
}

impl EntryWriter for &SqliteSession {
    async fn query(&mut self, sql: &str, params: &[ValueRef<'_>]) -> Result<Vec<Row>> {
        // The inherent method: its future is not boxed.
        Ok(SqliteSession::query_refs(self, sql, params).await?)
    }

    async fn execute(&mut self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64> {
        Ok(SqliteSession::execute_refs(self, sql, params).await?)
    }
}

impl EntryWriter for PinnedGuard {
    async fn query(&mut self, sql: &str, params: &[ValueRef<'_>]) -> Result<Vec<Row>> {
        Ok(self.query_refs(sql, params).await?)
    }

    async fn execute(&mut self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64> {
        Ok(self.execute_refs(sql, params).await?)
    }
}

/// Which entries [`ChangeLog::entries`] returns; all conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    seq_from: Option<u64>,
    seq_to: Option<u64>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    table: Option<String>,
    actor: Option<String>,
    limit: Option<u64>,
}

impl LogFilter {
    /// Every entry.
    pub fn all() -> Self {
        Self::default()
    }
    /// Entries with `from <= seq <= to`.
    pub fn seqs(mut self, from: u64, to: u64) -> Self {
        (self.seq_from, self.seq_to) = (Some(from), Some(to));
        self
    }
    /// Entries committed at or after `ms` (Unix milliseconds).
    pub fn since_ms(mut self, ms: i64) -> Self {
        self.since_ms = Some(ms);
        self
    }
    /// Entries committed at or before `ms` (Unix milliseconds).
    pub fn until_ms(mut self, ms: i64) -> Self {
        self.until_ms = Some(ms);
        self
    }
    /// Entries that touch `table`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }
    /// Entries made by `actor`.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }
    /// At most `n` entries: the first `n` that match, in seq order (page on with
    /// [`LogFilter::seqs`] from the last seq returned + 1).
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    fn to_sql(&self) -> (String, Vec<Value>) {
        let mut sql = format!("{SELECT_ENTRY} WHERE 1");
        let mut params = Vec::new();
        let mut cond = |clause: &str, value: Value| {
            sql.push_str(clause);
            params.push(value);
        };
        if let Some(from) = self.seq_from {
            cond(" AND seq >= ?", stored(from));
        }
        if let Some(to) = self.seq_to {
            cond(" AND seq <= ?", stored(to));
        }
        if let Some(ms) = self.since_ms {
            cond(" AND committed_at >= ?", ms.into());
        }
        if let Some(ms) = self.until_ms {
            cond(" AND committed_at <= ?", ms.into());
        }
        if let Some(table) = &self.table {
            cond(" AND instr(tables, ?) > 0", format!(",{table},").into());
        }
        if let Some(actor) = &self.actor {
            cond(" AND actor = ?", actor.clone().into());
        }
        sql.push_str(" ORDER BY seq");
        if let Some(n) = self.limit {
            sql.push_str(" LIMIT ?");
            params.push(stored(n));
        }
        (sql, params)
    }
}

/// What a revert or rollback did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevertOutcome {
    /// The log entry that records the revert (`None` if it changed nothing).
    pub logged_as: Option<u64>,
    /// What applying the inverse(s) did, entry by entry (newest first for a rollback), each
    /// conflict with the action taken in [`ApplyReport::conflict_log`].
    pub reports: Vec<(u64, ApplyReport)>,
}

/// What [`ChangeLog::verify`] found: an intact chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedChain {
    /// Entries checked (seqs `pruned_through + 1` to `pruned_through + entries`).
    pub entries: u64,
    /// The newest entry's hash ([`EntryHash::GENESIS`] for an empty log). Kept elsewhere, it
    /// also proves later that no entry up to there was removed from the end.
    pub head: EntryHash,
    /// Entries up to this seq were chained when an older log was upgraded
    /// ([`ChangeLog::open`]), not when they were committed.
    pub upgraded_through: Option<u64>,
    /// Entries up to this seq were pruned ([`ChangeLog::prune`]); the check starts from the
    /// hash recorded for that seq when it was pruned (0: nothing pruned).
    pub pruned_through: u64,
}

/// The change log of one SQLite database: the primary side of the audit log and of replication.
#[derive(Clone)]
pub struct ChangeLog {
    db: SqliteSession,
    tables: Option<Vec<String>>,
    publish: Option<mpsc::Sender<LogEntry>>,
    head: HeadHint,
}

impl ChangeLog {
    /// Opens the log of `session`'s database, creating the log table if needed.
    ///
    /// A log created before tamper evidence (a table without the `hash` column) is upgraded
    /// once, in one transaction: the column is added, every existing entry is chained in seq
    /// order, and the upgrade is recorded in `liteorm_chain_upgrade` (time and last seq). The
    /// chain then proves those entries did not change *after* the upgrade; what happened to them
    /// before it cannot be proven, and [`ChangeLog::verify`] reports that boundary.
    pub async fn open(session: &dyn Session) -> Result<Self> {
        let db = sqlite(session)?;
        db.execute_batch(CREATE_LOG).await?;
        db.execute_batch(CREATE_HORIZON).await?;
        db.execute_batch(CREATE_CURSORS).await?;
        upgrade(&db).await?;
        Ok(ChangeLog {
            db,
            tables: None,
            publish: None,
            head: HeadHint::default(),
        })
    }

    /// Records only these tables (default: every table with a primary key). Writes to other
    /// tables still commit with the unit of work; they are just not in its changeset.
    pub fn tables<I, T>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tables = Some(tables.into_iter().map(Into::into).collect());
        self
    }

    /// Also sends every committed entry to `sender` (e.g. for a
    /// [`ChannelSource`](crate::ChannelSource) replica in the same process). The log table stays
    /// the record of truth: if the receiver is gone, entries are only logged.
    pub fn publish_to(mut self, sender: mpsc::Sender<LogEntry>) -> Self {
        self.publish = Some(sender);
        self
    }

    /// Runs `f` as one unit of work: in one transaction, captures its changes and appends them
    /// to the log. Returns the new entry's seq, or `None` if nothing recorded changed (nothing
    /// is logged then). If `f` fails, nothing is written, data or log.
    pub async fn record<F, Fut, E>(&self, meta: Meta, f: F) -> Result<Option<u64>, E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error> + From<liteorm_changeset::Error>,
    {
        let ((), seq) = self.record_as(meta, EntryKind::Change, f).await?;
        Ok(seq)
    }

    /// Records what `f` changes as an entry of `kind`; returns `f`'s value and the entry's seq.
    async fn record_as<F, Fut, T, E>(
        &self,
        meta: Meta,
        kind: EntryKind,
        f: F,
    ) -> Result<(T, Option<u64>), E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send,
        E: From<Error> + From<liteorm_changeset::Error>,
    {
        let mut capture = Capture::new(&self.db);
        if let Some(tables) = &self.tables {
            capture = capture.tables(tables.iter().cloned());
        }
        let hint = self.head.get();
        // The entry is appended in capture's transaction, on the connection it still holds.
        let (value, appended) = capture
            .changeset_then(f, |mut guard, changes| async move {
                if changes.is_empty() {
                    return Ok((guard, None));
                }
                // Without it (unreadable), the insert checks the hint, and the next is not proven.
                let version = guard.data_version().await.ok();
                let head = hint.map(|hint| hint.head(version));
                let entry = append(&mut guard, meta, kind, changes, head).await?;
                // Only the outermost transaction's commit makes the entry the head for good.
                let version = version.filter(|_| guard.transaction_depth() == 1);
                Ok((guard, Some((entry, version))))
            })
            .await?;
        let Some((entry, version)) = appended else {
            return Ok((value, None));
        };
        self.head.set(entry.seq, entry.hash, version);
        let seq = entry.seq;
        self.published(entry).await;
        Ok((value, Some(seq)))
    }

    /// The entries that match `filter`, in seq order.
    pub async fn entries(&self, filter: &LogFilter) -> Result<Vec<LogEntry>> {
        let (sql, params) = filter.to_sql();
        self.db
            .query(&sql, &params)
            .await?
            .iter()
            .map(LogEntry::from_row)
            .collect()
    }

    /// The entry with `seq`.
    pub async fn entry(&self, seq: u64) -> Result<LogEntry> {
        let rows = self
            .db
            .query(&format!("{SELECT_ENTRY} WHERE seq = ?"), &[stored(seq)])
            .await?;
        rows.first()
            .map(LogEntry::from_row)
            .ok_or(Error::NoSuchEntry(seq))?
    }

    /// The newest seq (0 when the log never had an entry; the pruned horizon when every entry
    /// was pruned).
    pub async fn last_seq(&self) -> Result<u64> {
        Ok(head(&mut &self.db).await?.0)
    }

    /// The pruned horizon: every entry up to this seq was pruned ([`ChangeLog::prune`]); 0
    /// when none was.
    pub async fn horizon(&self) -> Result<u64> {
        Ok(horizon(&mut &self.db).await?.map_or(0, |(seq, _)| seq))
    }

    /// The session of the log's database.
    pub(crate) fn session(&self) -> &SqliteSession {
        &self.db
    }

    /// The sender of committed entries, if any ([`ChangeLog::publish_to`]).
    pub(crate) async fn published(&self, entry: LogEntry) {
        let seq = entry.seq;
        if let Some(sender) = &self.publish
            && sender.send(entry).await.is_err()
        {
            tracing::warn!(
                seq,
                "change log subscriber is gone; the entry is only in the log table"
            );
        }
    }

    /// Undoes entry `seq` by applying its inverse under `policy`, as a new logged unit of work.
    /// A row that a later entry changed again conflicts (with the default policy the revert fails
    /// and changes nothing). The log is verified first ([`ChangeLog::verify`]): a broken chain
    /// fails the revert with [`Error::ChainBroken`] before anything is applied.
    ///
    /// An entry recorded before a migration of its tables is conformed to the current schema
    /// first (columns added since take their default values; needs SQLite 3.44). A schema
    /// entry, or changes to a table since dropped, renamed or narrowed, fail with
    /// [`Error::NotRevertible`] naming the entry, and nothing is applied.
    pub async fn revert(
        &self,
        seq: u64,
        policy: ConflictPolicy,
        meta: Meta,
    ) -> Result<RevertOutcome> {
        self.verify().await?;
        let entry = self.entry(seq).await?;
        self.undo(vec![entry], policy, meta, EntryKind::Revert(seq))
            .await
    }

    /// Returns the database to its state right after entry `seq` (0: before the first entry) by
    /// applying the inverses of every later entry, newest first, as one logged unit of work.
    /// Like [`ChangeLog::revert`], it verifies the log first.
    pub async fn rollback_to(
        &self,
        seq: u64,
        policy: ConflictPolicy,
        meta: Meta,
    ) -> Result<RevertOutcome> {
        self.verify().await?;
        let mut later = self
            .entries(&LogFilter::all().seqs(seq.saturating_add(1), u64::MAX))
            .await?;
        later.reverse();
        self.undo(later, policy, meta, EntryKind::Rollback(seq))
            .await
    }

    /// Checks the hash chain of the whole log, in seq order: seqs run 1, 2, 3, ... without
    /// gaps, every entry is readable, and every entry's hash is the link of the previous
    /// entry's hash and its own fields ([`LogEntry::follows`]).
    ///
    /// Returns the number of entries and the head hash, or [`Error::ChainBroken`] naming the
    /// first seq whose content, metadata or position was changed, or that was deleted or
    /// inserted. Someone who can write the table *and* recompute every later hash can rewrite
    /// the log undetected by this check alone, and deleting the newest entries leaves a valid,
    /// shorter chain: compare the head with a copy kept elsewhere (a replica checks every entry
    /// it receives against the hash of the one before, so a rewritten history stops it).
    pub async fn verify(&self) -> Result<VerifiedChain> {
        let below = self
            .db
            .query("SELECT min(seq) FROM liteorm_changes WHERE seq < 1", &[])
            .await?;
        if let Some(raw) = below
            .first()
            .map(|r| r.try_get::<Option<i64>>(0))
            .transpose()?
            .flatten()
        {
            return Err(Error::ChainBroken {
                seq: 0,
                reason: ChainBreak::Unreadable(format!("an entry with seq {raw}, below 1")),
            });
        }
        let (mut last, mut prev) = horizon(&mut &self.db)
            .await?
            .unwrap_or((0, EntryHash::GENESIS));
        let pruned_through = last;
        loop {
            let page = self
                .db
                .query(
                    &format!("{SELECT_ENTRY} WHERE seq > ? ORDER BY seq LIMIT {VERIFY_PAGE}"),
                    &[stored(last)],
                )
                .await?;
            if page.is_empty() {
                break;
            }
            for row in &page {
                let seq = seq_of(row.try_get::<i64>("seq")?);
                let broken = |reason| Error::ChainBroken { seq, reason };
                if seq != last + 1 {
                    return Err(Error::ChainBroken {
                        seq: last + 1,
                        reason: ChainBreak::Missing { next: seq },
                    });
                }
                let entry = LogEntry::from_row(row).map_err(|err| match err {
                    Error::CorruptEntry { reason, .. } => broken(ChainBreak::Unreadable(reason)),
                    other => other,
                })?;
                if !entry.follows(&prev) {
                    return Err(broken(ChainBreak::HashMismatch));
                }
                (prev, last) = (entry.hash, seq);
            }
        }
        let upgraded = self
            .db
            .query("SELECT max(through_seq) FROM liteorm_chain_upgrade", &[])
            .await;
        // The table exists only in upgraded logs.
        let upgraded_through = match upgraded {
            Ok(rows) => rows
                .first()
                .map(|r| r.try_get::<Option<i64>>(0))
                .transpose()?
                .flatten()
                .map(seq_of),
            Err(_) => None,
        };
        Ok(VerifiedChain {
            entries: last - pruned_through,
            head: prev,
            upgraded_through,
            pruned_through,
        })
    }

    async fn undo(
        &self,
        entries: Vec<LogEntry>,
        policy: ConflictPolicy,
        meta: Meta,
        kind: EntryKind,
    ) -> Result<RevertOutcome> {
        let mut inverses = Vec::with_capacity(entries.len());
        for entry in &entries {
            inverses.push((entry.seq, self.inverse_now(entry).await?));
        }
        let (reports, logged_as) = self
            .record_as(meta, kind, move |s| async move {
                let mut reports = Vec::with_capacity(inverses.len());
                for (seq, inverse) in inverses {
                    let report = apply_logged(&s, &inverse, policy).log_conflicts().await?;
                    reports.push((seq, report));
                }
                Ok::<_, Error>(reports)
            })
            .await?;
        Ok(RevertOutcome { logged_as, reports })
    }
}

impl ChangeLog {
    /// The inverse of `entry`'s changes for the schema the database has now: conformed to it
    /// (new columns at their defaults) when a later migration changed one of its tables.
    async fn inverse_now(&self, entry: &LogEntry) -> Result<Changeset> {
        let not_revertible = |reason: String| Error::NotRevertible {
            seq: entry.seq,
            reason,
        };
        let changeset = match entry.payload() {
            Payload::Changes(changeset) => changeset,
            Payload::Schema(_) => {
                return Err(not_revertible(
                    "it is a schema migration; undo it with a migration that reverses it".into(),
                ));
            }
        };
        if !self.migrated_since(entry).await? {
            return Ok(changeset.invert()?);
        }
        if !Capability::ChangegroupSchema.is_available() {
            return Err(not_revertible(
                "a later migration changed its tables, and conforming its changes to the \
                 current schema needs SQLite 3.44 or later"
                    .into(),
            ));
        }
        let conformed = {
            let mut group = SchemaChangegroup::<Changeset>::new(&self.db).await?;
            group.add(changeset).await.map_err(|err| {
                not_revertible(format!("a later migration changed its tables: {err}"))
            })?;
            group.output()?
        };
        Ok(conformed.invert()?)
    }

    /// Whether a schema entry after `entry` touched one of its tables.
    async fn migrated_since(&self, entry: &LogEntry) -> Result<bool> {
        if entry.tables.is_empty() {
            return Ok(false);
        }
        let mut sql =
            String::from("SELECT 1 FROM liteorm_changes WHERE kind = 'schema' AND seq > ? AND (0");
        let mut params = vec![stored(entry.seq)];
        for table in &entry.tables {
            sql.push_str(" OR instr(tables, ?) > 0");
            params.push(format!(",{table},").into());
        }
        sql.push_str(") LIMIT 1");
        Ok(!self.db.query(&sql, &params).await?.is_empty())
    }
}

/// The time now in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How many log rows [`ChangeLog::verify`] and the upgrade read per query.
const VERIFY_PAGE: usize = 512;

/// Appends one entry, chained to the newest one, through `db`, in the caller's immediate
/// transaction (so no other writer appends in between): the only INSERT into the log table, for
/// every way of recording (a liteorm session, or a connection lent by another driver through
/// [`crate::lent`]). `hint`: the head the caller believes the log has (see [`HeadHint`]).
pub(crate) async fn append(
    db: &mut impl EntryWriter,
    meta: Meta,
    kind: EntryKind,
    changeset: Changeset,
    hint: Option<Head>,
) -> Result<LogEntry> {
    let tables = changeset.tables()?;
    append_entry(db, meta, kind, tables, changeset, None, hint).await
}

/// Appends a [`EntryKind::Schema`] entry for `sql`, which touched `tables` (see [`append`]).
pub(crate) async fn append_schema(
    db: &mut impl EntryWriter,
    meta: Meta,
    tables: Vec<String>,
    sql: String,
) -> Result<LogEntry> {
    append_entry(
        db,
        meta,
        EntryKind::Schema,
        tables,
        Changeset::default(),
        Some(sql),
        None,
    )
    .await
}

/// Appends the entry; with `hint`, the head the log is believed to have (see [`HeadHint`]),
/// tried first without reading the head back.
async fn append_entry(
    db: &mut impl EntryWriter,
    meta: Meta,
    kind: EntryKind,
    tables: Vec<String>,
    changeset: Changeset,
    ddl: Option<String>,
    hint: Option<Head>,
) -> Result<LogEntry> {
    let mut entry = LogEntry {
        seq: 0,
        committed_at_ms: now_ms(),
        actor: meta.actor,
        reason: meta.reason,
        kind,
        tables,
        changeset,
        ddl,
        hash: EntryHash::GENESIS,
    };
    if let Some(hint) = hint {
        entry.link_to((hint.seq, hint.hash));
        let on = if hint.proven {
            Expected::Proven
        } else {
            Expected::Head(hint.seq, hint.hash)
        };
        if insert_entry(db, &entry, on).await? {
            return Ok(entry);
        }
    }
    entry.link_to(head(db).await?);
    insert_entry(db, &entry, Expected::Read).await?;
    Ok(entry)
}

/// What [`insert_entry`] knows of the newest entry before it inserts.
#[derive(Clone, Copy)]
enum Expected {
    /// Just read in this transaction: the insert fails on a conflict.
    Read,
    /// Proven from the last append through this connection (see [`HeadHint`]); an insert
    /// that finds its seq taken anyway (by an uncommitted write of the transaction it is
    /// nested in) inserts nothing.
    Proven,
    /// Believed to be this seq and hash, checked by the insert, which inserts nothing if not.
    Head(u64, EntryHash),
}

/// Inserts `entry` as [`Expected`] says; returns whether it inserted.
async fn insert_entry(
    db: &mut impl EntryWriter,
    entry: &LogEntry,
    expected: Expected,
) -> Result<bool> {
    /// The log row's INSERT: `$or` after `INSERT`, and `$blob` as the last value.
    macro_rules! insert {
        ($or:literal, $blob:literal) => {
            concat!(
                "INSERT ",
                $or,
                "INTO liteorm_changes(seq, committed_at, actor, reason, tables, kind, ref_seq, \
                 hash, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ",
                $blob,
                ")"
            )
        };
    }
    const INSERT: &str = insert!("", "?");
    const INSERT_NEW: &str = insert!("OR IGNORE ", "?");
    // One statement reads the head and inserts: the blob is NULL, so the row is not inserted
    // (OR IGNORE), unless the newest row is the expected one (`ORDER BY seq DESC LIMIT 1` is
    // one seek to the last rowid). An INSERT ... SELECT ... WHERE would copy its source
    // through a temporary table, as it reads the table it inserts into.
    const INSERT_ON_HEAD: &str = insert!(
        "OR IGNORE ",
        "CASE WHEN (SELECT seq = ? AND hash = ? FROM liteorm_changes ORDER BY seq DESC LIMIT 1) \
         THEN ? END"
    );
    let (kind_name, ref_seq) = chain::kind_parts(entry.kind);
    // `,a,b,` (`,,` for none), as `LogFilter` matches it.
    let mut tables =
        String::with_capacity(entry.tables.iter().map(|t| t.len() + 1).sum::<usize>() + 2);
    tables.push(',');
    for table in &entry.tables {
        tables.push_str(table);
        tables.push(',');
    }
    if entry.tables.is_empty() {
        tables.push(',');
    }
    // The row's values, borrowed, in an array: nothing is copied, the changeset included.
    let [seq, at, actor, reason, tables, kind, ref_seq, hash] = [
        ValueRef::Integer(stored_int(entry.seq)),
        ValueRef::Integer(entry.committed_at_ms),
        optional_text(entry.actor.as_deref()),
        optional_text(entry.reason.as_deref()),
        ValueRef::Text(&tables),
        ValueRef::Text(kind_name),
        ref_seq.map_or(ValueRef::Null, |seq| ValueRef::Integer(stored_int(seq))),
        ValueRef::Blob(entry.hash.as_bytes()),
    ];
    let payload = ValueRef::Blob(entry.fields().payload);
    let row = [seq, at, actor, reason, tables, kind, ref_seq, hash, payload];
    match expected {
        Expected::Read => {
            db.query(INSERT, &row).await?;
            Ok(true)
        }
        Expected::Proven => Ok(db.execute(INSERT_NEW, &row).await? == 1),
        Expected::Head(head_seq, head_hash) => {
            let params = [
                seq,
                at,
                actor,
                reason,
                tables,
                kind,
                ref_seq,
                hash,
                ValueRef::Integer(stored_int(head_seq)),
                ValueRef::Blob(head_hash.as_bytes()),
                payload,
            ];
            Ok(db.execute(INSERT_ON_HEAD, &params).await? == 1)
        }
    }
}

/// `text` as a parameter, NULL for none.
fn optional_text(text: Option<&str>) -> ValueRef<'_> {
    text.map_or(ValueRef::Null, ValueRef::Text)
}

/// The newest entry a [`ChangeLog`] appended, its seq and chain hash, shared by its clones.
/// The next append tries to go on top of it without reading the head back first; the
/// insert checks that the head is still exactly that entry (another writer, a prune of every
/// entry or a restored file make it fall back to reading the head). So a stale hint costs
/// one statement, never a wrong link.
///
/// The check itself (a read of the newest row inside the insert) costs about a tenth of a
/// one-row unit of work, so it is skipped when the hint is proven: the hint keeps the
/// [`DataVersion`] that the connection read in the transaction of that append, and SQLite moves
/// it by one for that commit and by at least one more for any other commit to the database,
/// through any connection. So if the next append, on the same connection, reads it exactly one
/// move later, nothing but that commit happened in between: the newest committed entry is the
/// hint. (What the transaction it is in wrote itself, uncommitted, is the caller's own: an
/// entry appended there takes the seq, and the insert then falls back; an entry deleted there
/// shows as missing in [`ChangeLog::verify`], as it is.)
#[derive(Clone, Default)]
struct HeadHint(Arc<Mutex<Option<Hint>>>);

#[derive(Clone, Copy)]
struct Hint {
    seq: u64,
    hash: EntryHash,
    /// Read in the transaction that appended the entry, before its commit (`None`: that commit
    /// was not the outermost, or the version could not be read).
    version: Option<DataVersion>,
}

impl Hint {
    /// The head to append on, proven or not by the connection's data version `now`.
    fn head(self, now: Option<DataVersion>) -> Head {
        let moves = now
            .zip(self.version)
            .and_then(|(now, then)| now.moves_since(&then));
        Head {
            seq: self.seq,
            hash: self.hash,
            proven: moves == Some(1),
        }
    }
}

/// The head an append expects: its seq and hash, and whether that is proven (see [`HeadHint`]).
#[derive(Clone, Copy)]
pub(crate) struct Head {
    seq: u64,
    hash: EntryHash,
    proven: bool,
}

impl HeadHint {
    fn get(&self) -> Option<Hint> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the entry `seq`, hashed `hash`, was committed, the data version read in its
    /// transaction (a later entry is kept).
    fn set(&self, seq: u64, hash: EntryHash, version: Option<DataVersion>) {
        let mut head = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if head.is_none_or(|known| known.seq < seq) {
            *head = Some(Hint { seq, hash, version });
        }
    }
}

/// The newest entry's seq and hash: of the pruned horizon when the log is empty after
/// pruning, 0 and [`EntryHash::GENESIS`] for a log that never had an entry.
async fn head(db: &mut impl EntryWriter) -> Result<(u64, EntryHash)> {
    let rows = db
        .query(
            "SELECT seq, hash FROM liteorm_changes ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(horizon(db).await?.unwrap_or((0, EntryHash::GENESIS)));
    };
    let seq = seq_of(row.try_get::<i64>(0)?);
    let hash = row.try_get::<Option<Vec<u8>>>(1)?;
    let hash = hash
        .as_deref()
        .and_then(EntryHash::from_slice)
        .ok_or(Error::ChainBroken {
            seq,
            reason: ChainBreak::Unreadable("the newest entry has no valid chain hash".into()),
        })?;
    Ok((seq, hash))
}

/// The pruned horizon: the last pruned seq and its chain hash (`None`: never pruned). The
/// table exists only once the log was pruned, or opened by a version that knows pruning.
pub(crate) async fn horizon(db: &mut impl EntryWriter) -> Result<Option<(u64, EntryHash)>> {
    let exists = db
        .query(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'liteorm_log_horizon'",
            &[],
        )
        .await?;
    if exists.is_empty() {
        return Ok(None);
    }
    let rows = db
        .query(
            "SELECT seq, hash FROM liteorm_log_horizon WHERE id = 1",
            &[],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let seq = seq_of(row.try_get::<i64>(0)?);
    let hash = row.try_get::<Vec<u8>>(1)?;
    let hash = EntryHash::from_slice(&hash).ok_or(Error::ChainBroken {
        seq: seq + 1,
        reason: ChainBreak::Unreadable("the pruned horizon has no valid chain hash".into()),
    })?;
    Ok(Some((seq, hash)))
}

/// Whether the log table has the hash column (logs created before tamper evidence do not).
pub(crate) async fn has_hash(db: &mut impl EntryWriter) -> Result<bool> {
    const HAS_HASH: &str = "SELECT 1 FROM pragma_table_info('liteorm_changes') WHERE name = 'hash'";
    Ok(!db.query(HAS_HASH, &[]).await?.is_empty())
}

/// Adds the hash column to a log created before tamper evidence and chains its entries (see
/// [`ChangeLog::open`]). Idempotent; concurrent openers serialize on the immediate transaction.
async fn upgrade(db: &SqliteSession) -> Result<()> {
    if has_hash(&mut &*db).await? {
        return Ok(());
    }
    let tx = db.begin_immediate().await?;
    upgrade_in(&mut tx.session()).await?;
    tx.commit().await?;
    Ok(())
}

/// The work of [`upgrade`], inside a transaction that the caller opened with the write lock (so
/// that the check that the hash column is missing still holds when it is added) and commits.
pub(crate) async fn upgrade_in(db: &mut impl EntryWriter) -> Result<()> {
    if has_hash(db).await? {
        return Ok(());
    }
    // A placeholder first, so that the one row decoder reads the old rows.
    for sql in [
        "ALTER TABLE liteorm_changes ADD COLUMN hash BLOB",
        "UPDATE liteorm_changes SET hash = zeroblob(32)",
        "CREATE TABLE IF NOT EXISTS liteorm_chain_upgrade(
             upgraded_at INTEGER NOT NULL, -- Unix time in milliseconds
             through_seq INTEGER NOT NULL  -- entries up to here were chained by the upgrade
         )",
    ] {
        db.execute(sql, &[]).await?;
    }
    let (mut prev, mut last) = (EntryHash::GENESIS, i64::MIN);
    loop {
        let page = db
            .query(
                &format!("{SELECT_ENTRY} WHERE seq > ? ORDER BY seq LIMIT {VERIFY_PAGE}"),
                &[ValueRef::Integer(last)],
            )
            .await?;
        if page.is_empty() {
            break;
        }
        for row in &page {
            let entry = LogEntry::from_row(row)?;
            prev = chain::link(&prev, &entry.fields());
            last = row.try_get("seq")?;
            db.execute(
                "UPDATE liteorm_changes SET hash = ? WHERE seq = ?",
                &[ValueRef::Blob(prev.as_bytes()), ValueRef::Integer(last)],
            )
            .await?;
        }
    }
    let through = last.max(0);
    db.execute(
        "INSERT INTO liteorm_chain_upgrade(upgraded_at, through_seq) VALUES (?, ?)",
        &[ValueRef::Integer(now_ms()), ValueRef::Integer(through)],
    )
    .await?;
    tracing::warn!(
        through_seq = through,
        "change log upgraded to a hash chain; entries up to through_seq were chained now, not \
         when they were committed"
    );
    Ok(())
}

/// The apply of a logged changeset under `policy`: with the target's foreign key actions off
/// (`ON DELETE CASCADE` and the like act as `NO ACTION`; constraints are still checked) where
/// SQLite can (3.44+, [`Capability::FkNoAction`]), and otherwise with the policy's handler
/// omitting what the actions, run again, already made ([`ConflictPolicy::handler`]). A logged
/// changeset already holds every row its actions changed (as indirect changes), so running them
/// again would change those rows twice (a cascaded delete then finds its row gone: a `NotFound`
/// conflict).
pub(crate) fn apply_logged<'a>(
    session: &'a SqliteSession,
    changeset: &Changeset,
    policy: ConflictPolicy,
) -> liteorm_changeset::Apply<'a> {
    let apply = apply(session, changeset).on_conflict(policy.handler());
    if Capability::FkNoAction.is_available() {
        apply.fk_no_action()
    } else {
        apply
    }
}

/// The SQLite session behind `session`, or the typed capability error (the changeset crate's
/// gate).
pub(crate) fn sqlite(session: &dyn Session) -> Result<SqliteSession> {
    Ok(liteorm_changeset::gate(session, "change logs and replication")?.clone())
}
