//! The error type shared by every dialect.

use crate::session::Dialect;

/// Result alias used throughout liteorm.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors a [`Session`](crate::Session) can return.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database rejected a statement.
    #[error("{dialect} error{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Database {
        /// The dialect that reported the error.
        dialect: Dialect,
        /// The dialect's error code (for SQLite, the extended result code as text), if any.
        code: Option<String>,
        /// The database's message.
        message: String,
    },
    /// A capability was requested from a dialect that does not provide it.
    #[error("{capability} is not supported by the {dialect} dialect")]
    Unsupported {
        /// What was asked for, e.g. `"changesets"`.
        capability: &'static str,
        /// The dialect of the session it was asked of.
        dialect: Dialect,
    },
    /// A row did not have the requested column.
    #[error("no column {0} in row")]
    ColumnNotFound(String),
    /// A value could not be converted to the requested Rust type.
    #[error("column {column}: cannot read {found} as {expected}")]
    Decode {
        /// The column name or index.
        column: String,
        /// The type of the stored value.
        found: &'static str,
        /// The Rust type asked for.
        expected: &'static str,
    },
    /// The session (or the pinned connection behind it) can no longer be used.
    #[error("session closed: {0}")]
    Closed(&'static str),
    /// A transaction was misused (e.g. committed twice).
    #[error("transaction error: {0}")]
    Transaction(String),
    /// Any other failure of the underlying driver (I/O, pool timeout, worker crash).
    #[error(transparent)]
    Driver(Box<dyn std::error::Error + Send + Sync + 'static>),
}
