//! The error type of liteorm-diesel.

/// Errors from capturing, applying and logging changesets on a Diesel connection.
///
/// Converts from Diesel's error, so `?` works on Diesel queries in a capture's closure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The changeset engine failed (a conflict abort, an invalid blob, a missing table, ...).
    #[error(transparent)]
    Changeset(#[from] liteorm_changeset::Error),
    /// A Diesel query or transaction failed.
    #[error(transparent)]
    Diesel(#[from] diesel::result::Error),
    /// Opening a Diesel connection failed.
    #[error(transparent)]
    Connection(#[from] diesel::ConnectionError),
    /// The change log or a replica failed.
    #[error(transparent)]
    Replication(#[from] liteorm_replication::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
