//! Errors of the NATS JetStream transport.

/// Errors from publishing, following and bootstrapping over NATS JetStream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The change log or the replica failed: among others [`Stopped`] (a conflict under the
    /// replica's policy, naming the seq), [`Gap`] and [`SchemaMismatch`].
    ///
    /// [`Stopped`]: liteorm_replication::Error::Stopped
    /// [`Gap`]: liteorm_replication::Error::Gap
    /// [`SchemaMismatch`]: liteorm_replication::Error::SchemaMismatch
    #[error(transparent)]
    Replication(#[from] liteorm_replication::Error),
    /// A statement on the primary or replica database failed.
    #[error(transparent)]
    Session(#[from] liteorm_core::Error),
    /// A database or consumer name that cannot be part of a NATS subject or stream name.
    #[error("invalid {what} {name:?}: use 1 to 64 ASCII letters, digits, `_` or `-`")]
    InvalidName {
        /// What the name is for.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// Talking to the NATS server failed (not reachable, timed out, refused the request). The
    /// publisher's and follower's `run` loops retry these ([`Error::is_transient`]).
    #[error("NATS {op}: {source}")]
    Nats {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A secret, credentials file or certificate cannot be read (missing file, unset variable,
    /// empty value). Names the file or variable, never a secret.
    #[error("NATS credentials: {reason}")]
    Credentials {
        /// What is wrong.
        reason: String,
    },
    /// The server refused the credentials (wrong password, token, NKey or creds file; or none
    /// given where the server needs them).
    #[error("NATS server {server} refused the credentials: {reason}")]
    Authentication {
        /// The server URL, any password in it redacted.
        server: String,
        /// The client's error.
        reason: String,
    },
    /// No trusted TLS session with the server (its certificate is not signed by a trusted CA or
    /// does not name the host, the server wants a client certificate, or it does not speak TLS).
    #[error("TLS with NATS server {server} failed: {reason}")]
    Tls {
        /// The server URL, any password in it redacted.
        server: String,
        /// The client's error.
        reason: String,
    },
    /// The server denied an operation: the user's permissions do not allow the subject or
    /// JetStream API it needs.
    #[error(
        "the NATS server denied an operation ({message}); grant the user publish/subscribe \
         permissions on the stream's subject and the $JS.API subjects it uses"
    )]
    PermissionDenied {
        /// The server's message (names the subject).
        message: String,
    },
    /// A message in the stream is not a well-formed change log entry (missing or bad headers, or
    /// a payload that is not a valid changeset). The follower stops before it.
    #[error("malformed message at stream sequence {stream_seq}: {reason}")]
    Malformed {
        /// Its position in the stream.
        stream_seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The stream holds something other than this database's change log, published in order,
    /// at the position where an entry was expected (another publisher writes to the subject).
    #[error(
        "stream {stream}: sequence {stream_seq} holds {}, not change log seq {expected}; \
         the stream must carry only this database's change log, written by one liteorm-nats publisher",
        describe(*.found)
    )]
    ForeignMessage {
        /// The stream.
        stream: String,
        /// The position that was checked.
        stream_seq: u64,
        /// The log seq expected there.
        expected: u64,
        /// The log seq found there (`None`: not a change log entry at all).
        found: Option<u64>,
    },
    /// The stream has entries the primary's change log does not have.
    #[error(
        "stream {stream} ends at change log seq {stream_last} but the primary's log ends at \
         {log_last}; was the primary database restored from an older copy? Replicas may have \
         applied entries the primary no longer has"
    )]
    StreamAhead {
        /// The stream.
        stream: String,
        /// The last seq in the stream.
        stream_last: u64,
        /// The last seq in the primary's log.
        log_last: u64,
    },
    /// A change log entry is larger than the server accepts in one message.
    #[error(
        "change log entry {seq} does not fit in one NATS message ({source}); raise the \
         server's max_payload"
    )]
    TooLarge {
        /// The entry.
        seq: u64,
        /// The client's error, with the sizes.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Making a bootstrap snapshot failed.
    #[error("snapshot {path}: {reason}")]
    Snapshot {
        /// The snapshot file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// SQLITE_BUSY or SQLITE_LOCKED, in any of their extended forms.
fn is_busy(err: &liteorm_core::Error) -> bool {
    match err {
        liteorm_core::Error::Database {
            code: Some(code), ..
        } => code.is_busy(),
        _ => false,
    }
}

fn describe(found: Option<u64>) -> String {
    match found {
        Some(seq) => format!("change log seq {seq}"),
        None => "a message that is not a change log entry".to_owned(),
    }
}

impl Error {
    /// Whether a retry may cure the error: a NATS transport failure, or a database that stayed
    /// locked by another writer for longer than its busy timeout. The `run` loops retry these
    /// with a backoff; everything else stops them.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Nats { .. } => true,
            Error::Session(err) | Error::Replication(liteorm_replication::Error::Session(err)) => {
                is_busy(err)
            }
            _ => false,
        }
    }

    pub(crate) fn nats<E>(op: &'static str) -> impl FnOnce(E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |source| Error::Nats {
            op,
            source: Box::new(source),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn db_error(code: &str) -> liteorm_core::Error {
        liteorm_core::Error::Database {
            dialect: liteorm_core::Dialect::SQLITE,
            code: code.parse().ok().map(liteorm_core::SqliteCode),
            message: "database is locked".into(),
        }
    }

    #[test]
    fn busy_and_locked_databases_are_transient_other_errors_are_not() {
        // SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT, SQLITE_LOCKED_SHAREDCACHE
        for code in ["5", "517", "262"] {
            assert!(Error::Session(db_error(code)).is_transient(), "{code}");
            let replica = liteorm_replication::Error::Session(db_error(code));
            assert!(Error::Replication(replica).is_transient(), "{code}");
        }
        // SQLITE_CONSTRAINT_PRIMARYKEY
        assert!(!Error::Session(db_error("1555")).is_transient());
        let gap = liteorm_replication::Error::Gap {
            expected: 2,
            got: 3,
        };
        assert!(!Error::Replication(gap).is_transient());
    }
}
