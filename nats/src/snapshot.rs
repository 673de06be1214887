//! Bootstrap: a new replica database made from a consistent snapshot of the primary.

use std::path::Path;

use liteorm_core::{Session, Value};
use liteorm_replication::{ChangeLog, Replica};
use liteorm_sqlite::SqliteSession;

use crate::{Error, Result};

/// Writes a snapshot of `primary` to the new file `path`, ready to be opened as the replica
/// `"default"` (see [`Replica::open`]); returns the seq it is tagged with.
///
/// See [`snapshot_named`].
pub async fn snapshot(primary: &dyn Session, path: &Path) -> Result<u64> {
    snapshot_named(primary, path, "default").await
}

/// Writes a snapshot of `primary` to the new file `path` and tags it with the seq it contains,
/// as the cursor of replica `name` ([`Replica::open_named`]); returns that seq.
///
/// The copy is `VACUUM INTO`, which reads the primary in one read transaction while writers go
/// on. The seq is read from the copy's own change log table afterwards: entries commit together
/// with their data, so the newest entry in the copy is exactly the state of its data. (SQLite
/// refuses `VACUUM INTO` inside an explicit transaction, so reading the seq from the primary
/// "in the same transaction" is not possible; reading it from the copy is the same guarantee.)
/// The copy then drops the change log, outbox, horizon and replica cursor tables (a replica
/// does not need the primary's history, and must not look like a publisher), records the cursor
/// and is compacted. A snapshot is also how a replica behind the pruned horizon
/// ([`ChangeLog::prune`]) comes back: every later entry, schema migrations included, is still in
/// the log (or stream).
///
/// Move the file to the replica's machine, open it, and follow the stream: the follower starts
/// at seq + 1. The primary must be a database file (an in-memory one is refused).
pub async fn snapshot_named(primary: &dyn Session, path: &Path, name: &str) -> Result<u64> {
    let failed = |reason: String| Error::Snapshot {
        path: path.display().to_string(),
        reason,
    };
    let primary =
        liteorm_changeset::gate(primary, "snapshots").map_err(liteorm_replication::Error::from)?;
    let target = path
        .to_str()
        .ok_or_else(|| failed("the path is not valid UTF-8".into()))?;
    if path.exists() {
        return Err(failed("the file already exists".into()));
    }
    primary
        .execute("VACUUM INTO ?", &[Value::Text(target.to_owned())])
        .await?;
    if !path.exists() {
        // SQLite opens the output with the source connection's flags: from an in-memory
        // database (sqlx opens those with SQLITE_OPEN_MEMORY) the "copy" is in memory too, and
        // the statement succeeds without writing anything.
        return Err(failed(
            "VACUUM INTO wrote no file; is the primary an in-memory database? Snapshot a file"
                .into(),
        ));
    }
    let copy = SqliteSession::open(target).await?;
    let result = tag(&copy, name).await;
    // Checkpoints and removes the WAL so that the file alone is the snapshot.
    copy.close().await;
    match result {
        Ok(Some(seq)) => Ok(seq),
        Ok(None) => Err(failed(
            "the primary has no change log (open it with ChangeLog::open first)".into(),
        )),
        Err(err) => Err(err),
    }
}

/// Reads the copy's seq, drops the primary-only tables and writes the replica cursor.
async fn tag(copy: &SqliteSession, name: &str) -> Result<Option<u64>> {
    let has_log = copy
        .query(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'liteorm_changes'",
            &[],
        )
        .await?;
    if has_log.is_empty() {
        return Ok(None);
    }
    // The newest entry, or where a log pruned to nothing starts again.
    let log = ChangeLog::open(copy).await?;
    let seq = i64::try_from(log.last_seq().await?).unwrap_or(i64::MAX);
    // The replica's own API creates its state table; only the cursor value is set here, with
    // the chain hash of that entry, against which the replica checks the next one.
    Replica::open_named(copy, name).await?;
    copy.execute(
        "UPDATE liteorm_replica SET last_seq = ?, last_hash = coalesce(\
         (SELECT hash FROM liteorm_changes WHERE seq = ?), \
         (SELECT hash FROM liteorm_log_horizon WHERE seq = ?)) WHERE name = ?",
        &[
            Value::Integer(seq),
            Value::Integer(seq),
            Value::Integer(seq),
            name.into(),
        ],
    )
    .await?;
    copy.execute_batch(
        "DROP TABLE liteorm_changes; DROP TABLE IF EXISTS liteorm_outbox; \
         DROP TABLE IF EXISTS liteorm_log_horizon; DROP TABLE IF EXISTS liteorm_replica_cursors",
    )
    .await?;
    copy.execute_batch("VACUUM").await?;
    Ok(Some(u64::try_from(seq).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_memory_primary_is_refused_with_a_clear_error() {
        let primary = SqliteSession::open_in_memory().await.unwrap();
        liteorm_replication::ChangeLog::open(&primary)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = snapshot(&primary, &dir.path().join("s.db"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Snapshot { reason, .. } if reason.contains("in-memory")),
            "{err}"
        );
    }
}
