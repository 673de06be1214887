//! The audit log from a Diesel app: each unit of work recorded with its log entry in the same
//! Diesel transaction.

use diesel::SqliteConnection;
use liteorm_changeset::CaptureOptions;
use liteorm_replication::{LogEntry, Meta, lent};

use crate::capture::record;
use crate::ffi::Lent;
use crate::{Error, Result};

/// The change log (`liteorm_changes`) of a Diesel app's database, for recording: each
/// [`ChangeLog::record`] runs a closure of Diesel writes as one unit of work, captures its
/// changeset and appends it to the log before the commit, both or neither (as
/// [`liteorm_replication::ChangeLog::record`] does for a liteorm session).
///
/// The log is the same table, in the same format: read it, revert entries and feed replicas
/// with [`liteorm_replication::ChangeLog`] and [`LogTableSource`](liteorm_replication::LogTableSource)
/// on a liteorm session of the same file.
///
/// ```
/// use diesel::prelude::*;
/// use liteorm_replication::Meta;
///
/// # fn main() -> Result<(), liteorm_diesel::Error> {
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// diesel::sql_query("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
///     .execute(&mut conn)?;
/// let log = liteorm_diesel::ChangeLog::open(&mut conn)?;
/// let seq = log.record(&mut conn, Meta::actor("ada").reason("sign up"), |conn| {
///     diesel::sql_query("INSERT INTO users VALUES (1, 'ada')").execute(conn)?;
///     Ok::<_, liteorm_diesel::Error>(())
/// })?;
/// assert_eq!(seq, Some(1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ChangeLog {
    tables: Option<Vec<String>>,
}

impl ChangeLog {
    /// The log of `conn`'s database, creating the log table if needed. A log created before
    /// tamper evidence (without chain hashes) is upgraded as
    /// [`liteorm_replication::ChangeLog::open`] upgrades it, in a transaction of its own or, inside
    /// a Diesel transaction, in a savepoint of it.
    pub fn open(conn: &mut SqliteConnection) -> Result<Self> {
        lent::create_log(&mut Lent(conn))?;
        Ok(ChangeLog::default())
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

    /// Runs `f` as one unit of work, as [`crate::capture`] runs it (a Diesel transaction,
    /// `BEGIN IMMEDIATE` or a savepoint; errors and panics roll back), and appends its
    /// changeset to the log before the commit. Returns the new entry's seq, or `None` if
    /// nothing recorded changed (nothing is logged then).
    pub fn record<F, E>(
        &self,
        conn: &mut SqliteConnection,
        meta: Meta,
        f: F,
    ) -> Result<Option<u64>, E>
    where
        F: FnOnce(&mut SqliteConnection) -> Result<(), E>,
        E: From<Error>,
    {
        let ((), entry) = self.record_entry(conn, meta, f)?;
        Ok(entry.map(|e| e.seq))
    }

    /// [`ChangeLog::record`] for a closure that returns a value; returns it and the logged
    /// entry (`None` if nothing recorded changed).
    pub fn record_entry<F, T, E>(
        &self,
        conn: &mut SqliteConnection,
        meta: Meta,
        f: F,
    ) -> Result<(T, Option<LogEntry>), E>
    where
        F: FnOnce(&mut SqliteConnection) -> Result<T, E>,
        E: From<Error>,
    {
        let mut options = CaptureOptions::new();
        if let Some(tables) = &self.tables {
            options = options.tables(tables.iter().cloned());
        }
        record(conn, options, f, |recording, conn| {
            let changes = recording.changeset(conn)?;
            if changes.is_empty() {
                return Ok(None);
            }
            Ok(Some(lent::append(conn, meta, changes)?))
        })
    }
}
