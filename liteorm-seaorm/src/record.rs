//! Entry points: a liteorm session from a SeaORM `DatabaseConnection`, and capture / record
//! whose closure gets a [`SeaSession`] on the recording connection.

use std::future::Future;

use liteorm_changeset::{Capture, Changeset, Patchset};
use liteorm_core::Session;
use liteorm_replication::{ChangeLog, Meta};
use liteorm_sqlite::SqliteSession;
use sea_orm::{DatabaseConnection, DatabaseConnectionType};

use crate::{Error, SeaSession};

/// A liteorm session on the pool of `db` (the same connections SeaORM uses).
///
/// Build it once and keep it (it reads facts about SQLite when built, and keeps a connection
/// for a few milliseconds after each operation, see [`SqliteSession::linger`]).
/// [`Error::NotSqlite`] if `db` is not a sqlx SQLite pool; this never panics, unlike
/// `DatabaseConnection::get_sqlite_connection_pool`.
pub async fn sqlite_session(db: &DatabaseConnection) -> Result<SqliteSession, Error> {
    let pool = match &db.inner {
        DatabaseConnectionType::SqlxSqlitePoolConnection(_) => db.get_sqlite_connection_pool(),
        DatabaseConnectionType::Disconnected => {
            return Err(Error::NotSqlite("a disconnected connection".into()));
        }
        // Not `Disconnected`: the backend can be asked without a panic. Reachable when the app
        // enables more sea-orm backends (mock, proxy, rusqlite, postgres, mysql).
        #[allow(unreachable_patterns)]
        _ => {
            return Err(Error::NotSqlite(format!(
                "a {:?} connection",
                db.get_database_backend()
            )));
        }
    };
    Ok(SqliteSession::from_pool(pool.clone()).await?)
}

/// The closure's error, or the capture's own, until it is converted into the caller's error
/// type (which need only convert from [`Error`]).
enum Lifted<E> {
    Closure(E),
    Liteorm(Error),
}

impl<E> From<liteorm_changeset::Error> for Lifted<E> {
    fn from(err: liteorm_changeset::Error) -> Self {
        Lifted::Liteorm(Error::Changeset(err))
    }
}

impl<E> From<liteorm_replication::Error> for Lifted<E> {
    fn from(err: liteorm_replication::Error) -> Self {
        Lifted::Liteorm(Error::Replication(err))
    }
}

impl<E> Lifted<E> {
    fn lower(self) -> E
    where
        E: From<Error>,
    {
        match self {
            Lifted::Closure(err) => err,
            Lifted::Liteorm(err) => E::from(err),
        }
    }
}

/// Runs `f` on the recording connection (as a [`SeaSession`]) and returns what it changed in
/// `tables` (none listed: every table with a primary key) as a [`Changeset`].
///
/// `f`'s SeaORM statements, liteorm statements and sqlx queries on the session it gets are
/// all recorded, in capture's one transaction. As for [`liteorm_changeset::Capture`]: `Ok`
/// commits the changes with their changeset; `Err` rolls back and is returned as it is;
/// dropping the future rolls back; a panic in `f` propagates as it would from
/// `Capture::changeset` (the transaction is rolled back as the future unwinds). `E` is the
/// closure's error: SeaORM's `DbErr` or this crate's [`Error`] (both convert from [`Error`]).
pub async fn capture<F, Fut, E>(
    session: &dyn Session,
    tables: &[&str],
    f: F,
) -> Result<Changeset, E>
where
    F: FnOnce(SeaSession) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send,
    E: From<Error>,
{
    changeset(Capture::new(session).tables(tables.iter().copied()), f).await
}

/// [`capture`] with a configured [`Capture`] (tables, filter, indirect, ...).
pub async fn changeset<F, Fut, E>(capture: Capture<'_>, f: F) -> Result<Changeset, E>
where
    F: FnOnce(SeaSession) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send,
    E: From<Error>,
{
    capture
        .changeset(|s| {
            let work = f(SeaSession::new(s));
            async move { work.await.map_err(Lifted::Closure) }
        })
        .await
        .map_err(Lifted::lower)
}

/// [`changeset`], returning a [`Patchset`].
pub async fn patchset<F, Fut, E>(capture: Capture<'_>, f: F) -> Result<Patchset, E>
where
    F: FnOnce(SeaSession) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send,
    E: From<Error>,
{
    capture
        .patchset(|s| {
            let work = f(SeaSession::new(s));
            async move { work.await.map_err(Lifted::Closure) }
        })
        .await
        .map_err(Lifted::lower)
}

/// [`ChangeLog::record`] for SeaORM: runs `f` on the recording connection as one unit of
/// work, and appends what it changed to the log with `meta`. Returns the entry's seq, or `None`
/// if nothing recorded changed. If `f` fails, nothing is written, data or log.
pub async fn record<F, Fut, E>(log: &ChangeLog, meta: Meta, f: F) -> Result<Option<u64>, E>
where
    F: FnOnce(SeaSession) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send,
    E: From<Error>,
{
    log.record(meta, |s| {
        let work = f(SeaSession::new(s));
        async move { work.await.map_err(Lifted::Closure) }
    })
    .await
    .map_err(Lifted::lower)
}
