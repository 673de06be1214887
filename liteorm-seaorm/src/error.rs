//! The error of the SeaORM adapter, and its conversion to SeaORM's `DbErr`.

use std::sync::Arc;

use sea_orm::{DbErr, RuntimeErr};

/// What can go wrong recording SeaORM work with liteorm.
///
/// A closure given to [`crate::capture`] or [`crate::record`] may return this error (`?` works
/// on SeaORM's [`DbErr`]) or [`DbErr`] itself (this error converts into it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A SeaORM operation failed.
    #[error(transparent)]
    Db(#[from] DbErr),
    /// A liteorm statement or transaction failed.
    #[error(transparent)]
    Session(#[from] liteorm_core::Error),
    /// Capturing (or applying) a changeset failed.
    #[error(transparent)]
    Changeset(#[from] liteorm_changeset::Error),
    /// Recording to, or replaying from, the change log failed.
    #[error(transparent)]
    Replication(#[from] liteorm_replication::Error),
    /// The `DatabaseConnection` is not a sqlx SQLite pool (another backend, a mock or proxy
    /// connection, or a disconnected one).
    #[error("liteorm needs a sqlx SQLite DatabaseConnection, not {0}")]
    NotSqlite(String),
}

impl From<sqlx::Error> for Error {
    /// So that `?` works on sqlx queries run on [`crate::SeaSession::session`]: as SeaORM's own
    /// SQLite driver reports a failed statement ([`DbErr::sql_err`] still classifies it).
    fn from(err: sqlx::Error) -> Self {
        Error::Db(exec_err(err))
    }
}

impl From<Error> for DbErr {
    /// A SeaORM error as it was; a sqlx error that liteorm met as SeaORM reports sqlx errors
    /// (so that `DbErr::sql_err` still classifies constraint violations); anything else as
    /// [`DbErr::Custom`] with the message.
    fn from(err: Error) -> DbErr {
        match err {
            Error::Db(db) => db,
            Error::Session(session) => liteorm_err(session),
            other => DbErr::Custom(other.to_string()),
        }
    }
}

/// SeaORM's error for a failed statement (as sea-orm's own SQLite driver reports it).
pub(crate) fn exec_err(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
}

/// SeaORM's error for a failed query (as sea-orm's own SQLite driver reports it).
pub(crate) fn query_err(err: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(err)))
}

/// SeaORM's error for a liteorm error (transaction control, taking the connection).
pub(crate) fn liteorm_err(err: liteorm_core::Error) -> DbErr {
    match err {
        liteorm_core::Error::Driver(inner) => match inner.downcast::<sqlx::Error>() {
            Ok(sqlx) => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(*sqlx))),
            Err(other) => DbErr::Conn(RuntimeErr::Internal(other.to_string())),
        },
        other => DbErr::Conn(RuntimeErr::Internal(other.to_string())),
    }
}
