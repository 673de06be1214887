//! Retention: pruning the log up to a seq without cutting off a known replica, and the
//! replica cursors that say how far each one is.
//!
//! Replicas report their cursor into the primary database, table `liteorm_replica_cursors`
//! (name, applied seq, when): a [`LogTableSource`](crate::LogTableSource) made with
//! [`report_as`](crate::LogTableSource::report_as) writes it whenever it fetches, and
//! liteorm-nats's publisher copies each durable consumer's ack floor there (as
//! `nats:<consumer>`). A NATS publisher's own cursor (`liteorm_outbox`) counts too: an entry it
//! has not published yet is never pruned without force. Pruning keeps the chain verifiable: the
//! last pruned seq and its hash are recorded as the horizon ([`ChangeLog::verify`] starts from
//! it, and the next entry links to it).

use liteorm_core::{Session, Value};

use crate::log::{CREATE_CURSORS, horizon, now_ms};
use crate::{ChainBreak, ChangeLog, EntryHash, Error, Result};

/// What [`ChangeLog::prune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pruned {
    /// Entries deleted by this call.
    pub entries: u64,
    /// The horizon afterwards: every entry up to this seq is gone.
    pub horizon: u64,
}

/// A replica's cursor as reported to the primary ([`ChangeLog::replica_cursors`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaCursor {
    /// The replica's name (`nats:<consumer>` for a NATS follower, `publisher:<stream>` for a
    /// NATS publisher's outbox).
    pub name: String,
    /// Every entry up to this seq is applied (published, for a publisher).
    pub applied_seq: u64,
    /// When it was reported, Unix milliseconds (`None` for a publisher's outbox).
    pub reported_at_ms: Option<i64>,
}

impl ChangeLog {
    /// Deletes every entry up to `up_to`, unless a known replica ([`ChangeLog::replica_cursors`])
    /// has not applied them yet: then it fails with [`Error::PruneBlocked`] naming the replica
    /// furthest behind, and deletes nothing.
    ///
    /// The chain is verified first ([`ChangeLog::verify`]); the pruned horizon (`up_to` and its
    /// hash) is recorded in the same transaction as the deletion, so the rest of the log stays
    /// verifiable and new entries go on from the same chain. A replica whose cursor is below the
    /// horizon can no longer catch up from the log: it stops with [`Error::BehindHorizon`] and
    /// must be bootstrapped again from a snapshot. Reverting a pruned entry fails with
    /// [`Error::NoSuchEntry`]; `rollback_to` a seq below the horizon too.
    pub async fn prune(&self, up_to: u64) -> Result<Pruned> {
        self.prune_inner(up_to, false).await
    }

    /// Like [`ChangeLog::prune`], without looking at replica cursors: replicas behind `up_to`
    /// will need a new snapshot.
    pub async fn force_prune(&self, up_to: u64) -> Result<Pruned> {
        self.prune_inner(up_to, true).await
    }

    /// Every replica cursor reported to this primary, furthest behind first, a NATS
    /// publisher's outbox cursor included.
    pub async fn replica_cursors(&self) -> Result<Vec<ReplicaCursor>> {
        let db = self.session();
        let mut cursors: Vec<ReplicaCursor> = db
            .query(
                "SELECT name, applied_seq, reported_at FROM liteorm_replica_cursors",
                &[],
            )
            .await?
            .iter()
            .map(|row| {
                Ok(ReplicaCursor {
                    name: row.try_get(0)?,
                    applied_seq: u64::try_from(row.try_get::<i64>(1)?).unwrap_or(0),
                    reported_at_ms: Some(row.try_get(2)?),
                })
            })
            .collect::<Result<_>>()?;
        let has_outbox = db
            .query(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'liteorm_outbox'",
                &[],
            )
            .await?;
        if !has_outbox.is_empty() {
            for row in db
                .query("SELECT stream, published_seq FROM liteorm_outbox", &[])
                .await?
            {
                cursors.push(ReplicaCursor {
                    name: format!("publisher:{}", row.try_get::<String>(0)?),
                    applied_seq: u64::try_from(row.try_get::<i64>(1)?).unwrap_or(0),
                    reported_at_ms: None,
                });
            }
        }
        cursors.sort_by(|a, b| (a.applied_seq, &a.name).cmp(&(b.applied_seq, &b.name)));
        Ok(cursors)
    }

    /// Records that replica `name` has applied every entry up to `applied_seq` (what
    /// [`LogTableSource`](crate::LogTableSource) and the NATS publisher do).
    pub async fn report_cursor(&self, name: &str, applied_seq: u64) -> Result<()> {
        report_cursor(self.session(), name, applied_seq).await
    }

    /// Forgets replica `name` (decommissioned), so that it no longer holds back pruning.
    /// Returns whether it was known.
    pub async fn forget_replica(&self, name: &str) -> Result<bool> {
        let db = self.session();
        let deleted = db
            .execute(
                "DELETE FROM liteorm_replica_cursors WHERE name = ?",
                &[name.into()],
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn prune_inner(&self, up_to: u64, force: bool) -> Result<Pruned> {
        self.verify().await?;
        let cursors = if force {
            Vec::new()
        } else {
            self.replica_cursors().await?
        };
        let db = self.session();
        let tx = db.begin_immediate().await?;
        let s = tx.session();
        let current = horizon(&mut &*s).await?.map_or(0, |(seq, _)| seq);
        if up_to <= current {
            return Ok(Pruned {
                entries: 0,
                horizon: current,
            });
        }
        let rows = s
            .query(
                "SELECT hash FROM liteorm_changes WHERE seq = ?",
                &[stored(up_to)],
            )
            .await?;
        let row = rows.first().ok_or(Error::NoSuchEntry(up_to))?;
        let hash = row
            .try_get::<Option<Vec<u8>>>(0)?
            .as_deref()
            .and_then(EntryHash::from_slice)
            .ok_or(Error::ChainBroken {
                seq: up_to,
                reason: ChainBreak::Unreadable("no valid chain hash".into()),
            })?;
        if let Some(behind) = cursors.iter().find(|c| c.applied_seq < up_to) {
            return Err(Error::PruneBlocked {
                up_to,
                replica: behind.name.clone(),
                applied: behind.applied_seq,
            });
        }
        let entries = s
            .execute(
                "DELETE FROM liteorm_changes WHERE seq <= ?",
                &[stored(up_to)],
            )
            .await?;
        s.execute(
            "INSERT INTO liteorm_log_horizon(id, seq, hash, pruned_at) VALUES (1, ?, ?, ?) \
             ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
             pruned_at = excluded.pruned_at",
            &[
                stored(up_to),
                hash.as_bytes().as_slice().into(),
                now_ms().into(),
            ],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(entries, horizon = up_to, force, "change log pruned");
        Ok(Pruned {
            entries,
            horizon: up_to,
        })
    }
}

/// Upserts replica `name`'s cursor in the primary database behind `db`.
pub(crate) async fn report_cursor(
    db: &liteorm_sqlite::SqliteSession,
    name: &str,
    applied_seq: u64,
) -> Result<()> {
    db.execute_batch(CREATE_CURSORS).await?;
    db.execute(
        "INSERT INTO liteorm_replica_cursors(name, applied_seq, reported_at) VALUES (?, ?, ?) \
         ON CONFLICT(name) DO UPDATE SET applied_seq = excluded.applied_seq, \
         reported_at = excluded.reported_at",
        &[name.into(), stored(applied_seq), now_ms().into()],
    )
    .await?;
    Ok(())
}

fn stored(seq: u64) -> Value {
    Value::Integer(i64::try_from(seq).unwrap_or(i64::MAX))
}
