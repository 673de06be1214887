//! The same on diesel-async's `SyncConnectionWrapper<SqliteConnection>` (or a pooled one from
//! its deadpool or bb8 integration, through `&mut *pooled`): each call runs as one task on the
//! wrapper's blocking thread, so the executor keeps running.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use diesel::SqliteConnection;
use diesel_async::sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper};
use liteorm_changeset::driver::{BlockingConnection, Handle, RawConnection};
use liteorm_changeset::{Apply, CaptureOptions, Changes, Changeset, Patchset};
use liteorm_replication::Meta;

use crate::ffi::Lent;
use crate::{ChangeLog, Error};

/// diesel-async's connection to SQLite.
pub type AsyncSqliteConnection<S> = SyncConnectionWrapper<SqliteConnection, S>;

/// [`crate::capture`] on diesel-async's connection: the whole capture (transaction, session
/// object, `f`, changeset, commit) runs as one task on the wrapper's blocking thread, where `f`
/// gets the inner `SqliteConnection` and writes through Diesel's (synchronous) DSL. The task
/// runs to its end even if this future is dropped, so a capture is never left half done. A
/// panic in `f` rolls back and resumes on the awaiting task.
///
/// ```
/// use diesel::prelude::*;
/// use diesel::sql_query;
/// use diesel_async::AsyncConnection;
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), liteorm_diesel::Error> {
/// let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(":memory:").await?;
/// let changes = liteorm_diesel::async_conn::capture(&mut conn, &[], |conn| {
///     sql_query("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(conn)?;
///     sql_query("INSERT INTO users VALUES (1, 'ada')").execute(conn)?;
///     Ok::<_, liteorm_diesel::Error>(())
/// })
/// .await?;
/// // A table created during the capture is recorded (none listed: every table with a key).
/// assert_eq!(changes.changes()?.len(), 1);
/// # Ok(())
/// # }
/// ```
pub async fn capture<F, E, S>(
    conn: &mut AsyncSqliteConnection<S>,
    tables: &[&str],
    f: F,
) -> Result<Changeset, E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<(), E> + Send + 'static,
    E: From<Error> + Send + 'static,
    S: SpawnBlocking,
{
    let options = CaptureOptions::new().tables(tables.iter().copied());
    capture_with(conn, options, f)
        .await
        .map(|((), changes)| changes)
}

/// [`capture`] returning a [`Patchset`].
pub async fn patchset<F, E, S>(
    conn: &mut AsyncSqliteConnection<S>,
    tables: &[&str],
    f: F,
) -> Result<Patchset, E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<(), E> + Send + 'static,
    E: From<Error> + Send + 'static,
    S: SpawnBlocking,
{
    let options = CaptureOptions::new().tables(tables.iter().copied());
    patchset_with(conn, options, f)
        .await
        .map(|((), changes)| changes)
}

/// [`crate::capture_with`] on diesel-async's connection (see [`capture`]).
pub async fn capture_with<F, T, E, S>(
    conn: &mut AsyncSqliteConnection<S>,
    options: CaptureOptions,
    f: F,
) -> Result<(T, Changeset), E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    S: SpawnBlocking,
{
    blocking(conn, move |conn| crate::capture_with(conn, options, f)).await
}

/// [`crate::patchset_with`] on diesel-async's connection (see [`capture`]).
pub async fn patchset_with<F, T, E, S>(
    conn: &mut AsyncSqliteConnection<S>,
    options: CaptureOptions,
    f: F,
) -> Result<(T, Patchset), E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    S: SpawnBlocking,
{
    blocking(conn, move |conn| crate::patchset_with(conn, options, f)).await
}

/// [`ChangeLog::open`] on diesel-async's connection.
pub async fn open_log<S: SpawnBlocking>(
    conn: &mut AsyncSqliteConnection<S>,
) -> Result<ChangeLog, Error> {
    blocking(conn, ChangeLog::open).await
}

/// [`ChangeLog::record`] on diesel-async's connection: the unit of work and its log entry run
/// as one task on the wrapper's blocking thread (see [`capture`]).
pub async fn record<F, E, S>(
    log: &ChangeLog,
    conn: &mut AsyncSqliteConnection<S>,
    meta: Meta,
    f: F,
) -> Result<Option<u64>, E>
where
    F: FnOnce(&mut SqliteConnection) -> Result<(), E> + Send + 'static,
    E: From<Error> + Send + 'static,
    S: SpawnBlocking,
{
    let log = log.clone();
    blocking(conn, move |conn| log.record(conn, meta, f)).await
}

/// [`crate::apply`] on diesel-async's connection: the same builder; `.await` it, and the apply
/// runs on the wrapper's blocking thread (to its end, even if the future is dropped).
///
/// ```
/// # use diesel::prelude::*;
/// # use diesel_async::AsyncConnection;
/// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// # async fn demo(changes: liteorm_changeset::Changeset) -> Result<(), liteorm_diesel::Error> {
/// let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish("replica.db").await?;
/// let report = liteorm_diesel::async_conn::apply(&mut conn, &changes)
///     .on_conflict(|_| liteorm_changeset::ConflictAction::Omit)
///     .await?;
/// # let _ = report;
/// # Ok(())
/// # }
/// ```
pub fn apply<'c, C: Changes, S>(
    conn: &'c mut AsyncSqliteConnection<S>,
    changes: &C,
) -> Apply<'c, LentAsync<'c, S>>
where
    S: SpawnBlocking + Send,
{
    Apply::on(LentAsync(conn), changes)
}

/// diesel-async's connection, lent to the changeset engine on its blocking thread. Made by
/// [`apply`].
pub struct LentAsync<'c, S>(&'c mut AsyncSqliteConnection<S>);

impl<S> std::fmt::Debug for LentAsync<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LentAsync(SyncConnectionWrapper<SqliteConnection>)")
    }
}

impl<S: SpawnBlocking + Send> BlockingConnection for LentAsync<'_, S> {
    fn with_handle_blocking<R: Send + 'static>(
        self,
        f: impl FnOnce(Handle<'_>) -> liteorm_changeset::Result<R> + Send + 'static,
    ) -> impl Future<Output = liteorm_changeset::Result<R>> + Send {
        let task = self
            .0
            .spawn_blocking(move |conn| Ok(Lent(conn).with_handle(f)));
        async move {
            task.await
                .map_err(|err| liteorm_changeset::Error::TaskFailed {
                    task: "diesel-async blocking task",
                    message: err.to_string(),
                })?
        }
    }
}

/// Runs `work` on the wrapper's blocking thread; a panic in it resumes here.
async fn blocking<T, E, S>(
    conn: &mut AsyncSqliteConnection<S>,
    work: impl FnOnce(&mut SqliteConnection) -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    S: SpawnBlocking,
{
    let outcome = conn
        .spawn_blocking(move |conn| Ok(catch_unwind(AssertUnwindSafe(|| work(conn)))))
        .await
        .map_err(Error::from)?;
    match outcome {
        Ok(result) => result,
        Err(panic) => resume_unwind(panic),
    }
}
