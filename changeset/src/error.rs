//! The error type of liteorm-changeset.

use liteorm_core::{Dialect, SqliteCode};

use crate::conflict::Conflict;
use crate::ffi::{RawError, StreamError};

/// Errors from capturing, inspecting, transforming or applying changesets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The session is not SQLite (the capability gate), or the SQLite build lacks something.
    #[error("{capability} is not supported by the {dialect} dialect")]
    Unsupported {
        /// What was asked for.
        capability: &'static str,
        /// The dialect of the session it was asked of.
        dialect: Dialect,
    },
    /// A statement run through the session failed. (The session's
    /// [`liteorm_core::Error::Unsupported`] arrives as [`Error::Unsupported`], never here.)
    #[error(transparent)]
    Session(liteorm_core::Error),
    /// A session-extension call failed.
    #[error("{context}: {message} (SQLite code {code})")]
    Sqlite {
        /// SQLite's (extended) result code.
        code: SqliteCode,
        /// SQLite's message.
        message: String,
        /// The call that failed.
        context: &'static str,
    },
    /// The bytes are not a valid changeset (or patchset).
    #[error("invalid {kind}: {reason} (at change #{entry}{})", offset.map(|o| format!(", byte {o}")).unwrap_or_default())]
    Invalid {
        /// `"changeset"` or `"patchset"`.
        kind: &'static str,
        /// The index of the change where decoding failed (0-based).
        entry: usize,
        /// The byte offset of the problem, when the structural check found it.
        offset: Option<usize>,
        /// What was wrong.
        reason: String,
    },
    /// The blob is larger than SQLite's in-memory API accepts (2 GiB).
    #[error("a blob of {len} bytes is larger than SQLite's in-memory changeset API accepts")]
    TooLarge {
        /// The blob's length.
        len: usize,
    },
    /// A table name contains a NUL byte.
    #[error("invalid table name {0:?}")]
    InvalidName(String),
    /// A table to capture does not exist in the `main` database.
    #[error("no table {0:?} in the main database")]
    NoSuchTable(String),
    /// A table to capture has no PRIMARY KEY, so the session extension cannot record it.
    #[error(
        "table {0:?} has no PRIMARY KEY; SQLite's session extension does not record such tables"
    )]
    NoPrimaryKey(String),
    /// The capture closure committed or rolled back the capture's own transaction.
    #[error("the capture closure ended the transaction that capture opened")]
    TransactionEnded,
    /// A conflict ended the apply with ABORT (the handler's verdict, or no handler); nothing was
    /// applied.
    #[error("apply aborted by a {} conflict{}; nothing was applied", .conflict.kind, on_table(.conflict))]
    Aborted {
        /// The conflict that aborted the apply.
        conflict: Box<Conflict>,
    },
    /// The handler returned `Replace` for a conflict kind where SQLite forbids it; nothing was
    /// applied.
    #[error("conflict handler returned Replace for a {} conflict{} (only Data and Conflict allow it); nothing was applied", .conflict.kind, on_table(.conflict))]
    IllegalReplace {
        /// The conflict the handler answered.
        conflict: Box<Conflict>,
    },
    /// A user callback panicked; the operation was rolled back.
    #[error("the {callback} panicked: {message}; nothing was applied")]
    CallbackPanicked {
        /// Which callback.
        callback: &'static str,
        /// The panic message.
        message: String,
    },
    /// A background task of the operation (the blocking thread an apply, capture, diff, merge
    /// or stream runs on) panicked, or no thread could be started; nothing was applied.
    #[error("the {task} failed: {message}; nothing was applied")]
    TaskFailed {
        /// Which task.
        task: &'static str,
        /// The panic message, or why the task did not finish.
        message: String,
    },
    /// An apply was cancelled before it finished; nothing was applied.
    #[error("the apply was cancelled; nothing was applied")]
    Cancelled,
    /// Reading or writing a changeset stream failed.
    #[error("changeset stream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A table's schema differs between the databases (or changesets) an operation compares.
    #[error("table {table:?} does not match: {detail}")]
    SchemaMismatch {
        /// The table.
        table: String,
        /// What differs.
        detail: String,
    },
    /// No database of that name is attached to the connection.
    #[error("no database named {0:?} is attached to the connection")]
    NoSuchSchema(String),
    /// An API was used in a way it does not allow; the message says which.
    #[error("{0}")]
    Misuse(&'static str),
}

fn on_table(conflict: &Conflict) -> String {
    conflict
        .change
        .as_ref()
        .map(|c| format!(" on table {:?} ({:?})", c.table, c.op))
        .unwrap_or_default()
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<RawError> for Error {
    fn from(err: RawError) -> Self {
        match err {
            RawError::Sqlite {
                code,
                message,
                context,
            } => Error::Sqlite {
                code: SqliteCode(code),
                message,
                context,
            },
            RawError::TooLarge { len } => Error::TooLarge { len },
            RawError::InvalidName(name) => Error::InvalidName(name),
            RawError::Stream(err) => err.into(),
        }
    }
}

impl From<StreamError> for Error {
    /// A reader's structure error (an `InvalidData` error wrapping the checker's finding)
    /// becomes [`Error::Invalid`], other I/O errors [`Error::Io`].
    fn from(err: StreamError) -> Self {
        match err {
            StreamError::Io(err) => {
                if err.kind() == std::io::ErrorKind::InvalidData
                    && let Some(found) = err
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<crate::format::Malformed>())
                {
                    return Error::Invalid {
                        kind: "changeset stream",
                        entry: found.entry,
                        offset: Some(found.offset),
                        reason: found.reason.clone(),
                    };
                }
                Error::Io(err)
            }
            StreamError::Panicked(message) => Error::CallbackPanicked {
                callback: "stream reader or writer",
                message,
            },
        }
    }
}

impl From<sqlx::Error> for Error {
    /// So that `?` works on the app's own sqlx queries inside a capture's closure: a database
    /// error keeps SQLite's code and message ([`liteorm_sqlite::from_sqlx_error`]).
    fn from(err: sqlx::Error) -> Self {
        liteorm_sqlite::from_sqlx_error(err).into()
    }
}

impl From<liteorm_core::Error> for Error {
    /// Keeps one shape for "unsupported": the session's [`liteorm_core::Error::Unsupported`]
    /// becomes [`Error::Unsupported`].
    fn from(err: liteorm_core::Error) -> Self {
        match err {
            liteorm_core::Error::Unsupported {
                capability,
                dialect,
            } => Error::Unsupported {
                capability,
                dialect,
            },
            other => Error::Session(other),
        }
    }
}

impl Error {
    /// The failure of a background task (see [`Error::TaskFailed`]).
    pub(crate) fn task_failed(task: &'static str, panic: Box<dyn std::any::Any + Send>) -> Self {
        let message = crate::ffi::panic_message(panic.as_ref());
        Error::TaskFailed { task, message }
    }
}
