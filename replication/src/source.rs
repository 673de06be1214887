//! Where a replica gets log entries from: the transport behind a small trait.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use liteorm_core::Value;
use liteorm_sqlite::SqliteSession;
use tokio::sync::mpsc;

use crate::log::{LogEntry, SELECT_ENTRY, horizon};
use crate::retention::report_cursor;
use crate::{Error, Result};

/// A source of change log entries, in seq order.
///
/// Implementations only transport entries; the [`Replica`](crate::Replica) checks order, skips
/// entries it already has and refuses gaps, so a source may re-deliver (at-least-once transports
/// such as a message log fit as they are).
#[async_trait]
pub trait ChangeSource: Send {
    /// Up to `limit` entries with seq greater than `after`, in seq order (empty: none yet).
    async fn fetch(&mut self, after: u64, limit: usize) -> Result<Vec<LogEntry>>;

    /// Waits until entries after `after` may be available.
    async fn wait(&mut self, after: u64) -> Result<()>;
}

/// Reads the primary's log table directly (the same process, or the primary's database file
/// opened by the replica process), polling for new entries.
///
/// Named with [`LogTableSource::report_as`], it also reports the replica's cursor to the
/// primary, so that [`ChangeLog::prune`](crate::ChangeLog::prune) keeps what it has not applied.
/// A replica behind the pruned horizon gets [`Error::BehindHorizon`].
pub struct LogTableSource {
    primary: SqliteSession,
    poll: Duration,
    report: Option<String>,
    reported: Option<u64>,
}

impl LogTableSource {
    /// A source reading the log table of `primary`'s database.
    pub fn new(primary: &SqliteSession) -> Self {
        LogTableSource {
            primary: primary.clone(),
            poll: Duration::from_millis(100),
            report: None,
            reported: None,
        }
    }

    /// Reports the replica's cursor to the primary as replica `name` (table
    /// `liteorm_replica_cursors`): each fetch after a new seq records it, since the replica
    /// passes its committed cursor. The write is small, but it is a write to the primary.
    pub fn report_as(mut self, name: impl Into<String>) -> Self {
        self.report = Some(name.into());
        self
    }

    /// How long [`ChangeSource::wait`] sleeps before the next look (default 100 ms).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }
}

#[async_trait]
impl ChangeSource for LogTableSource {
    async fn fetch(&mut self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        if let Some(name) = &self.report
            && self.reported != Some(after)
        {
            report_cursor(&self.primary, name, after).await?;
            self.reported = Some(after);
        }
        let sql = format!("{SELECT_ENTRY} WHERE seq > ? ORDER BY seq LIMIT ?");
        let from = Value::Integer(i64::try_from(after).unwrap_or(i64::MAX));
        let limit = Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self.primary.query(&sql, &[from, limit]).await?;
        let entries: Vec<LogEntry> = rows.iter().map(LogEntry::from_row).collect::<Result<_>>()?;
        if entries.first().is_none_or(|e| e.seq != after + 1)
            && let Some((horizon, _)) = horizon(&mut &self.primary).await?
            && horizon > after
        {
            return Err(Error::BehindHorizon {
                applied: after,
                horizon,
            });
        }
        Ok(entries)
    }

    async fn wait(&mut self, _after: u64) -> Result<()> {
        tokio::time::sleep(self.poll).await;
        Ok(())
    }
}

/// Entries pushed through an in-process channel, e.g. by
/// [`ChangeLog::publish_to`](crate::ChangeLog::publish_to).
pub struct ChannelSource {
    receiver: mpsc::Receiver<LogEntry>,
    pending: VecDeque<LogEntry>,
}

impl ChannelSource {
    /// A source reading from `receiver`.
    pub fn new(receiver: mpsc::Receiver<LogEntry>) -> Self {
        ChannelSource {
            receiver,
            pending: VecDeque::new(),
        }
    }
}

#[async_trait]
impl ChangeSource for ChannelSource {
    async fn fetch(&mut self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        while let Ok(entry) = self.receiver.try_recv() {
            self.pending.push_back(entry);
        }
        self.pending.retain(|e| e.seq > after);
        let n = limit.min(self.pending.len());
        Ok(self.pending.drain(..n).collect())
    }

    async fn wait(&mut self, _after: u64) -> Result<()> {
        if !self.pending.is_empty() {
            return Ok(());
        }
        match self.receiver.recv().await {
            Some(entry) => {
                self.pending.push_back(entry);
                Ok(())
            }
            None => Err(Error::Source("the change log channel is closed".into())),
        }
    }
}
