//! The change log on a connection lent by another driver (Diesel, say, through
//! `liteorm-diesel`): the log table created, and an entry appended inside the driver's own
//! transaction, by the same code as [`ChangeLog::record`](crate::ChangeLog::record). Reading,
//! reverting and replicating go through a [`ChangeLog`](crate::ChangeLog) on a liteorm session
//! of the same database file.

use liteorm_changeset::Changeset;
use liteorm_changeset::driver::{Handle, RawConnection};
use liteorm_core::{Row, Value};

use crate::log::{CREATE_LOG, EntryWriter, append as append_entry};
use crate::{EntryKind, LogEntry, Meta, Result};

/// Creates the log table on the lent connection's database if it does not exist yet.
pub fn create_log(conn: &mut impl RawConnection) -> Result<()> {
    conn.with_handle(|db| Ok(db.execute_batch(CREATE_LOG)?))
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
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        Ok(Handle::query(*self, sql, params)?)
    }

    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        Handle::query(*self, sql, params)?;
        let changes = Handle::query(*self, "SELECT changes()", &[])?;
        Ok(changes
            .first()
            .map_or(Ok(0), |row| row.try_get::<i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))?)
    }
}
