//! What can go wrong, as one line for stderr and a distinct exit code.

use std::fmt;
use std::path::Path;

use liteorm_core::SqliteCode;

/// A failure of a command.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A file could not be read or written (exit 3).
    File(String),
    /// The bytes are not a valid changeset or patchset (exit 4).
    InvalidBlob(String),
    /// The database file is missing or not a SQLite database (exit 5).
    NotADatabase(String),
    /// The database is locked by another connection (exit 6).
    Locked(String),
    /// A conflict aborted the apply; the database is untouched (exit 7).
    Aborted(String),
    /// The SQL or the schema is wrong: missing table, syntax error, constraint (exit 8).
    Sql(String),
    /// The NATS server cannot be reached or refused a request (exit 9).
    Nats(String),
    /// The change log's hash chain is broken: an entry was edited, deleted, inserted or moved
    /// (exit 10).
    Tampered(String),
    /// The NATS server refused the credentials, or denied an operation (exit 11).
    NatsAuth(String),
    /// No trusted TLS session with the NATS server (exit 12).
    NatsTls(String),
    /// A NATS secret, credentials file or certificate cannot be read (exit 13).
    NatsCredentials(String),
    /// A replica is behind the change log's pruned horizon: re-bootstrap it from a snapshot
    /// (exit 14).
    BehindHorizon(String),
    /// Anything else (exit 1).
    Other(String),
}

impl Failure {
    /// The process exit code.
    pub(crate) fn code(&self) -> u8 {
        match self {
            Failure::Other(_) => 1,
            Failure::File(_) => 3,
            Failure::InvalidBlob(_) => 4,
            Failure::NotADatabase(_) => 5,
            Failure::Locked(_) => 6,
            Failure::Aborted(_) => 7,
            Failure::Sql(_) => 8,
            Failure::Nats(_) => 9,
            Failure::Tampered(_) => 10,
            Failure::NatsAuth(_) => 11,
            Failure::NatsTls(_) => 12,
            Failure::NatsCredentials(_) => 13,
            Failure::BehindHorizon(_) => 14,
        }
    }

    /// Reading or writing `path` failed.
    pub(crate) fn file(path: &Path, err: &std::io::Error) -> Self {
        Failure::File(format!("{}: {err}", path.display()))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::File(m)
            | Failure::InvalidBlob(m)
            | Failure::NotADatabase(m)
            | Failure::Locked(m)
            | Failure::Aborted(m)
            | Failure::Sql(m)
            | Failure::Nats(m)
            | Failure::Tampered(m)
            | Failure::NatsAuth(m)
            | Failure::NatsTls(m)
            | Failure::NatsCredentials(m)
            | Failure::BehindHorizon(m)
            | Failure::Other(m) => f.write_str(m),
        }
    }
}

/// The failure for SQLite result `code`: some primary codes get their own exit code.
fn by_sqlite_code(code: Option<SqliteCode>, message: String) -> Failure {
    match code.map(SqliteCode::primary) {
        Some(SqliteCode::BUSY | SqliteCode::LOCKED) => Failure::Locked(message),
        Some(SqliteCode::CANTOPEN | SqliteCode::NOTADB) => Failure::NotADatabase(message),
        _ => Failure::Sql(message),
    }
}

impl From<liteorm_core::Error> for Failure {
    fn from(err: liteorm_core::Error) -> Self {
        let code = match &err {
            liteorm_core::Error::Database { code, .. } => *code,
            _ => None,
        };
        match &err {
            liteorm_core::Error::Database { .. } => by_sqlite_code(code, err.to_string()),
            _ => Failure::Other(err.to_string()),
        }
    }
}

impl From<changeset::Error> for Failure {
    fn from(err: changeset::Error) -> Self {
        match err {
            changeset::Error::Session(inner) => inner.into(),
            changeset::Error::Invalid { .. } | changeset::Error::TooLarge { .. } => {
                Failure::InvalidBlob(err.to_string())
            }
            changeset::Error::Aborted { .. }
            | changeset::Error::IllegalReplace { .. }
            | changeset::Error::CallbackPanicked { .. }
            | changeset::Error::TaskFailed { .. } => Failure::Aborted(err.to_string()),
            changeset::Error::NoSuchTable(_)
            | changeset::Error::NoPrimaryKey(_)
            | changeset::Error::SchemaMismatch { .. } => Failure::Sql(err.to_string()),
            changeset::Error::Sqlite { code, .. } => by_sqlite_code(Some(code), err.to_string()),
            other => Failure::Other(other.to_string()),
        }
    }
}

impl From<liteorm_replication::Error> for Failure {
    fn from(err: liteorm_replication::Error) -> Self {
        use liteorm_replication::Error as E;
        match err {
            E::Session(inner) => inner.into(),
            E::Changeset(inner) => inner.into(),
            // A conflict under an abort policy: the replica stopped at that entry.
            E::Stopped { .. } => Failure::Aborted(err.to_string()),
            E::SchemaMismatch { .. } | E::InvalidMigration(_) | E::MigrationFailed { .. } => {
                Failure::Sql(err.to_string())
            }
            // Refused, nothing changed: like a conflict under an abort policy.
            E::PruneBlocked { .. } | E::NotRevertible { .. } => Failure::Aborted(err.to_string()),
            E::BehindHorizon { .. } => Failure::BehindHorizon(err.to_string()),
            E::CorruptEntry { .. } => Failure::InvalidBlob(err.to_string()),
            E::ChainBroken { .. } => Failure::Tampered(err.to_string()),
            other => Failure::Other(other.to_string()),
        }
    }
}

impl From<liteorm_nats::Error> for Failure {
    fn from(err: liteorm_nats::Error) -> Self {
        use liteorm_nats::Error as E;
        match err {
            E::Replication(inner) => inner.into(),
            E::Session(inner) => inner.into(),
            E::Nats { .. } => Failure::Nats(err.to_string()),
            E::Authentication { .. } | E::PermissionDenied { .. } => {
                Failure::NatsAuth(err.to_string())
            }
            E::Tls { .. } => Failure::NatsTls(err.to_string()),
            E::Credentials { .. } => Failure::NatsCredentials(err.to_string()),
            E::Malformed { .. } | E::TooLarge { .. } => Failure::InvalidBlob(err.to_string()),
            other => Failure::Other(other.to_string()),
        }
    }
}
