//! Where one database's change log lives in JetStream: stream name, subject and settings.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::wire;
use crate::{Error, Result};

/// The JetStream stream that carries one database's change log.
///
/// The stream `LITEORM_<db>` captures the single subject `liteorm.<db>.changes` and keeps its
/// messages in file storage. A [`Publisher`](crate::Publisher) writes entry `seq` at stream
/// sequence `seq` (it sends every entry with `Nats-Expected-Last-Sequence: seq - 1`, so the
/// server refuses anything else): the stream sequence and the log seq are the same number, which
/// is how a follower positions its consumer right after its replica's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeStream {
    db: String,
    name: String,
    subject: String,
    duplicate_window: Duration,
    max_age: Duration,
}

/// The default deduplication window (the server's own default).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl ChangeStream {
    /// The stream of database `db` (1 to 64 ASCII letters, digits, `_` or `-`).
    pub fn new(db: &str) -> Result<Self> {
        check_name("database name", db)?;
        Ok(ChangeStream {
            db: db.to_owned(),
            name: format!("LITEORM_{db}"),
            subject: format!("liteorm.{db}.changes"),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_age: Duration::ZERO,
        })
    }

    /// How long the server remembers a `Nats-Msg-Id` to drop a re-sent entry (default 2 min).
    ///
    /// A publisher that crashes after the server stored an entry but before it recorded that in
    /// the primary sends the entry again when it restarts; within the window the server answers
    /// "duplicate" and stores nothing. Past the window the entry is still not stored twice: the
    /// publisher's expected-last-sequence check refuses it and the publisher skips what the
    /// stream already has. So the window only makes re-sends cheap; it should cover a typical
    /// restart of the publisher. The server keeps every id of the window in memory.
    ///
    /// Applies when this call creates the stream; an existing stream keeps its settings.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Drops messages older than `max_age` (default: keep every message, like the log table).
    /// A replica that falls further behind must be bootstrapped again from a snapshot; it stops
    /// with a gap error otherwise.
    ///
    /// Applies when this call creates the stream; an existing stream keeps its settings.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The database name.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// The stream name, `LITEORM_<db>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subject, `liteorm.<db>.changes`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The stream configuration this crate creates.
    pub fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: vec![self.subject.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            description: Some(format!("liteorm change log of database {}", self.db)),
            ..Default::default()
        }
    }

    /// The stream, created with [`ChangeStream::config`] if it does not exist.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<stream::Stream> {
        js.get_or_create_stream(self.config())
            .await
            .map_err(Error::nats("get or create stream"))
    }

    /// The change log seq of the stream's last message (0 when it has none).
    ///
    /// Read from the message's header, not from the stream position, so it is right even if
    /// something else wrote to the stream.
    pub async fn last_seq(&self, stream: &stream::Stream) -> Result<u64> {
        let info = stream
            .get_info()
            .await
            .map_err(Error::nats("stream info"))?;
        let last = info.state.last_sequence;
        if last == 0 {
            return Ok(0);
        }
        match stream.get_raw_message(last).await {
            Ok(message) => wire::seq_of_stored(&message).ok_or_else(|| Error::ForeignMessage {
                stream: self.name.clone(),
                stream_seq: last,
                expected: last,
                found: None,
            }),
            // Expired or deleted: the position is the seq, as the publisher writes them.
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(last),
            Err(err) => Err(Error::nats("get last message")(err)),
        }
    }
}

/// Checks a name that becomes a subject token and part of a stream or consumer name.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_database_name() {
        let s = ChangeStream::new("shop-eu_1").unwrap();
        assert_eq!(s.name(), "LITEORM_shop-eu_1");
        assert_eq!(s.subject(), "liteorm.shop-eu_1.changes");
        let config = s.config();
        assert_eq!(config.storage, stream::StorageType::File);
        assert_eq!(config.duplicate_window, DEFAULT_DUPLICATE_WINDOW);
    }

    #[test]
    fn names_that_would_break_a_subject_are_refused() {
        for bad in ["", "a.b", "a b", "*", ">", "é", &"x".repeat(65)] {
            assert!(
                matches!(ChangeStream::new(bad), Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }
}
