//! The change log on a connection lent by another driver (Diesel, say, through
//! `liteorm-diesel`): the log table created, and an entry appended inside the driver's own
//! transaction, by the same code as [`ChangeLog::record`](crate::ChangeLog::record). Reading,
//! reverting and replicating go through a [`ChangeLog`](crate::ChangeLog) on a liteorm session
//! of the same database file.

use liteorm_changeset::Changeset;
use liteorm_changeset::driver::{Handle, RawConnection};
use liteorm_core::{Row, ValueRef};

use crate::log::{CREATE_LOG, EntryWriter, append as append_entry, has_hash, upgrade_in};
use crate::{EntryKind, LogEntry, Meta, Result};

/// Creates the log table on the lent connection's database if it does not exist yet, and
/// upgrades a log created before tamper evidence as [`ChangeLog::open`](crate::ChangeLog::open)
/// does: in a transaction of its own that takes the write lock (`BEGIN IMMEDIATE`, which may
/// wait up to the connection's busy timeout), or in a savepoint of the driver's open
/// transaction; nothing changes if it fails.
pub fn create_log(conn: &mut impl RawConnection) -> Result<()> {
    conn.with_handle(|mut db| {
        db.execute_batch(CREATE_LOG)?;
        // Every statement of a lent handle runs synchronously: the futures are ready at once.
        if futures::executor::block_on(has_hash(&mut db))? {
            return Ok(());
        }
        let (begin, commit, rollback) = if db.autocommit() {
            ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
        } else {
            (
                "SAVEPOINT liteorm_chain_upgrade",
                "RELEASE liteorm_chain_upgrade",
                "ROLLBACK TO liteorm_chain_upgrade; RELEASE liteorm_chain_upgrade",
            )
        };
        db.execute_batch(begin)?;
        let upgraded = futures::executor::block_on(upgrade_in(&mut db))
            .and_then(|()| Ok(db.execute_batch(commit)?));
        if upgraded.is_err() {
            // Fails only if SQLite already rolled the transaction back.
            let _ = db.execute_batch(rollback);
        }
        upgraded
    })
}

/// Appends `changeset` as a [`EntryKind::Change`] entry, on the calling thread. Call it inside
/// the transaction that made the changes, after their capture ended and before the commit, so
/// that data and log entry commit together (or neither does).
pub fn append(conn: &mut impl RawConnection, meta: Meta, changeset: Changeset) -> Result<LogEntry> {
    conn.with_handle(|mut db| {
        // Every statement of a lent handle runs synchronously: the future is ready at once.
        futures::executor::block_on(append_entry(
            &mut db,
            meta,
            EntryKind::Change,
            changeset,
            None,
        ))
    })
}

impl EntryWriter for Handle<'_> {
    async fn query(&mut self, sql: &str, params: &[ValueRef<'_>]) -> Result<Vec<Row>> {
        Ok(Handle::query_refs(*self, sql, params)?)
    }

    async fn execute(&mut self, sql: &str, params: &[ValueRef<'_>]) -> Result<u64> {
        Handle::query_refs(*self, sql, params)?;
        let changes = Handle::query(*self, "SELECT changes()", &[])?;
        Ok(changes
            .first()
            .map_or(Ok(0), |row| row.try_get::<i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))?)
    }
}
