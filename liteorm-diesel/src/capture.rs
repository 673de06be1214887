//! Capturing what a closure writes through a Diesel connection, in one Diesel transaction.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use diesel::SqliteConnection;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use liteorm_changeset::{CaptureOptions, Changeset, LentRecording, Patchset};

use crate::Error;
use crate::ffi::Lent;

/// Records every change `f` makes through `conn` to `tables` (none listed: every table with a
/// primary key) and returns them as a [`Changeset`].
///
/// `f` runs inside a Diesel transaction that capture opens: `BEGIN IMMEDIATE` (the write lock
/// from the start, as liteorm's async capture takes it), or a savepoint when `conn` is already
/// in a transaction. `conn.transaction(..)` inside `f` nests as savepoints; one rolled back is
/// not recorded.
///
/// - `Ok` from `f`: the writes are committed and returned as a changeset, together, or neither.
/// - `Err` from `f`: the transaction is rolled back and the error returned as is.
/// - A panic in `f`: the transaction is rolled back, then the panic resumes.
///
/// In every case the session object is deleted and `conn` can be used again. `f` must not end
/// capture's transaction itself (with a raw `COMMIT`): the capture then fails with
/// [`liteorm_changeset::Error::TransactionEnded`].
///
/// ```
/// use diesel::prelude::*;
/// use diesel::sql_query;
///
/// # fn main() -> Result<(), liteorm_diesel::Error> {
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// sql_query("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&mut conn)?;
/// let changes = liteorm_diesel::capture(&mut conn, &["users"], |conn| {
///     sql_query("INSERT INTO users VALUES (1, 'ada')").execute(conn)?;
///     Ok::<_, liteorm_diesel::Error>(())
/// })?;
/// assert_eq!(changes.changes()?.len(), 1);
/// # Ok(())
/// # }
/// ```
pub fn capture<F, E>(conn: &mut SqliteConnection, tables: &[&str], f: F) -> Result<Changeset, E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<(), E>,
    E: From<Error>,
{
    let options = CaptureOptions::new().tables(tables.iter().copied());
    capture_with(conn, options, f).map(|((), changes)| changes)
}

/// Like [`capture`], returning a [`Patchset`].
pub fn patchset<F, E>(conn: &mut SqliteConnection, tables: &[&str], f: F) -> Result<Patchset, E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<(), E>,
    E: From<Error>,
{
    let options = CaptureOptions::new().tables(tables.iter().copied());
    patchset_with(conn, options, f).map(|((), changes)| changes)
}

/// Like [`capture`], with every option of liteorm's capture ([`CaptureOptions`]: tables, a
/// table filter, indirect changes, tables without a primary key), for a closure that also
/// returns a value.
pub fn capture_with<F, T, E>(
    conn: &mut SqliteConnection,
    options: CaptureOptions,
    f: F,
) -> Result<(T, Changeset), E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<T, E>,
    E: From<Error>,
{
    record(conn, options, f, |recording, conn| {
        Ok(recording.changeset(conn)?)
    })
}

/// Like [`capture_with`], returning a [`Patchset`].
pub fn patchset_with<F, T, E>(
    conn: &mut SqliteConnection,
    options: CaptureOptions,
    f: F,
) -> Result<(T, Patchset), E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<T, E>,
    E: From<Error>,
{
    record(conn, options, f, |recording, conn| {
        Ok(recording.patchset(conn)?)
    })
}

/// Opens capture's transaction level, records `f` into a session object, ends the recording
/// with `end` (which may write more, a log entry say, in the same transaction) and commits; on
/// any failure (or panic) rolls back to where it started.
pub(crate) fn record<F, T, E, B>(
    conn: &mut SqliteConnection,
    options: CaptureOptions,
    f: F,
    end: impl FnOnce(LentRecording, &mut Lent<'_>) -> Result<B, Error>,
) -> Result<(T, B), E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<T, E>,
    E: From<Error>,
{
    let outer = depth(conn)?;
    if outer == 0 {
        AnsiTransactionManager::begin_transaction_sql(conn, "BEGIN IMMEDIATE")
    } else {
        AnsiTransactionManager::begin_transaction(conn)
    }
    .map_err(Error::from)?;
    let recording = match options.start(&mut Lent(conn)) {
        Ok(recording) => recording,
        Err(err) => {
            rollback_to(conn, outer);
            return Err(Error::from(err).into());
        }
    };
    let value = match catch_unwind(AssertUnwindSafe(|| f(conn))) {
        Ok(Ok(value)) => value,
        Ok(Err(err)) => {
            recording.discard(&mut Lent(conn));
            rollback_to(conn, outer);
            return Err(err);
        }
        Err(panic) => {
            recording.discard(&mut Lent(conn));
            rollback_to(conn, outer);
            resume_unwind(panic);
        }
    };
    let ended = match depth(conn) {
        // The closure left a level of its own open (or closed ours) through raw SQL.
        Ok(depth) if depth != outer + 1 => {
            recording.discard(&mut Lent(conn));
            Err(liteorm_changeset::Error::TransactionEnded.into())
        }
        Ok(_) => end(recording, &mut Lent(conn)),
        Err(err) => {
            recording.discard(&mut Lent(conn));
            Err(err)
        }
    };
    let committed = ended.and_then(|blob| {
        AnsiTransactionManager::commit_transaction(conn)
            .map(|()| blob)
            .map_err(Error::from)
    });
    match committed {
        Ok(blob) => Ok((value, blob)),
        Err(err) => {
            rollback_to(conn, outer);
            Err(err.into())
        }
    }
}

/// How many transaction levels Diesel has open on `conn`.
fn depth(conn: &mut SqliteConnection) -> Result<u32, Error> {
    let status = AnsiTransactionManager::transaction_manager_status_mut(conn);
    Ok(status.transaction_depth()?.map_or(0, |d| d.get()))
}

/// Rolls back every level above `depth` (capture's own and any the closure left open).
/// Failing here means the connection is broken; Diesel then reports that on its next use.
fn rollback_to(conn: &mut SqliteConnection, depth: u32) {
    while matches!(self::depth(conn), Ok(d) if d > depth) {
        if AnsiTransactionManager::rollback_transaction(conn).is_err() {
            break;
        }
    }
}
