//! The error type shared by every dialect.

use crate::session::Dialect;

/// Result alias used throughout liteorm.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors a [`Session`](crate::Session) can return.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database rejected a statement.
    #[error("{dialect} error{}: {message}", code.map(|c| format!(" {c}")).unwrap_or_default())]
    Database {
        /// The dialect that reported the error.
        dialect: Dialect,
        /// SQLite's extended result code, if the database reported one.
        code: Option<SqliteCode>,
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

/// A SQLite result code, extended as SQLite reports it (`SQLITE_CONSTRAINT_PRIMARYKEY` is 1555):
/// the one numeric code type of every liteorm layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SqliteCode(pub i32);

impl SqliteCode {
    /// `SQLITE_ERROR`.
    pub const ERROR: SqliteCode = SqliteCode(1);
    /// `SQLITE_ABORT`.
    pub const ABORT: SqliteCode = SqliteCode(4);
    /// `SQLITE_BUSY`.
    pub const BUSY: SqliteCode = SqliteCode(5);
    /// `SQLITE_LOCKED`.
    pub const LOCKED: SqliteCode = SqliteCode(6);
    /// `SQLITE_NOMEM`.
    pub const NOMEM: SqliteCode = SqliteCode(7);
    /// `SQLITE_CORRUPT`.
    pub const CORRUPT: SqliteCode = SqliteCode(11);
    /// `SQLITE_CANTOPEN`.
    pub const CANTOPEN: SqliteCode = SqliteCode(14);
    /// `SQLITE_SCHEMA`.
    pub const SCHEMA: SqliteCode = SqliteCode(17);
    /// `SQLITE_CONSTRAINT`.
    pub const CONSTRAINT: SqliteCode = SqliteCode(19);
    /// `SQLITE_MISUSE`.
    pub const MISUSE: SqliteCode = SqliteCode(21);
    /// `SQLITE_NOTADB`.
    pub const NOTADB: SqliteCode = SqliteCode(26);

    /// The primary code (the low byte): `SQLITE_CONSTRAINT` for `SQLITE_CONSTRAINT_PRIMARYKEY`.
    pub const fn primary(self) -> SqliteCode {
        SqliteCode(self.0 & 0xff)
    }

    /// Whether the database was locked by another connection (`SQLITE_BUSY` or
    /// `SQLITE_LOCKED`, in any extended form): trying again later may succeed.
    pub const fn is_busy(self) -> bool {
        matches!(self.primary(), SqliteCode::BUSY | SqliteCode::LOCKED)
    }
}

impl std::fmt::Display for SqliteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl From<i32> for SqliteCode {
    fn from(code: i32) -> Self {
        SqliteCode(code)
    }
}
