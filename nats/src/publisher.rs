//! The publisher: the primary's change log table is an outbox that it drains into JetStream.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use futures::{FutureExt as _, StreamExt as _};
use liteorm_core::{Session, Value};
use liteorm_replication::{ChainBreak, ChangeLog, LogEntry, LogFilter};
use liteorm_sqlite::SqliteSession;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::backoff::Backoff;
use crate::connection::ConnectionWatch;
use crate::{ChangeStream, Error, Result, wire};

/// The publisher's cursor, in the primary database: one row per stream.
const CREATE_OUTBOX: &str = "CREATE TABLE IF NOT EXISTS liteorm_outbox(
    stream TEXT PRIMARY KEY,
    published_seq INTEGER NOT NULL  -- every entry up to here is in the stream
)";

/// What a publisher did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Entries the server stored.
    pub published: u64,
    /// Re-sent entries the server recognised by their `Nats-Msg-Id` (within its duplicate
    /// window) and did not store again.
    pub duplicates: u64,
    /// Entries found already in the stream when a re-send was refused by the
    /// expected-last-sequence check (re-sends after the duplicate window).
    pub already_in_stream: u64,
    /// The outbox cursor afterwards: every entry up to this seq is in the stream.
    pub published_seq: u64,
}

impl PublishReport {
    fn add(&mut self, other: PublishReport) {
        self.published += other.published;
        self.duplicates += other.duplicates;
        self.already_in_stream += other.already_in_stream;
        self.published_seq = other.published_seq;
    }
}

/// Publishes a primary's change log to its JetStream stream, in seq order, exactly once.
///
/// Entry `seq` goes to [`ChangeStream::subject`] with `Nats-Msg-Id: seq` and
/// `Nats-Expected-Last-Sequence: seq - 1`, its metadata in headers and its changeset as payload.
/// After the server's acknowledgement the publisher records the published-up-to seq in the
/// primary database (table `liteorm_outbox`; [`Publisher::run`] at most once per
/// [`cursor_interval`](Publisher::cursor_interval)). A crash anywhere makes the next publisher
/// resend from that cursor, never skipping: a re-send within the duplicate window is dropped by the
/// server (`Nats-Msg-Id`); a later one is refused by the sequence check and the publisher moves
/// its cursor over what the stream already has. So every entry is in the stream exactly once,
/// at stream sequence = seq.
///
/// Run one publisher per database.
pub struct Publisher {
    log: ChangeLog,
    db: SqliteSession,
    js: jetstream::Context,
    stream: ChangeStream,
    handle: Option<stream::Stream>,
    batch: usize,
    poll: Duration,
    wake: Option<mpsc::Receiver<LogEntry>>,
    report_every: Duration,
    reported_at: Option<tokio::time::Instant>,
    cursor_every: Duration,
    /// Whether cursor writes wait for `cursor_every` (inside `run` only).
    defer_cursor: bool,
    /// The cursor in the outbox table, and the acknowledged seq it may lag behind.
    written_seq: u64,
    acked_seq: u64,
    written_at: Option<tokio::time::Instant>,
}

impl Publisher {
    /// A publisher of `primary`'s change log (creating the log and outbox tables if needed).
    /// It does not contact the server yet: the stream is created on first use.
    pub async fn new(
        primary: &dyn Session,
        js: jetstream::Context,
        stream: ChangeStream,
    ) -> Result<Self> {
        let log = ChangeLog::open(primary).await?;
        // `ChangeLog::open` accepted it, so it is SQLite; keep the typed error regardless.
        let db = liteorm_changeset::gate(primary, "change log publishing")
            .map_err(liteorm_replication::Error::from)?
            .clone();
        db.execute_batch(CREATE_OUTBOX).await?;
        db.execute(
            "INSERT INTO liteorm_outbox(stream, published_seq) VALUES (?, 0) \
             ON CONFLICT(stream) DO NOTHING",
            &[stream.name().into()],
        )
        .await?;
        Ok(Publisher {
            log,
            db,
            js,
            stream,
            handle: None,
            batch: 256,
            poll: Duration::from_millis(100),
            wake: None,
            report_every: Duration::from_secs(10),
            reported_at: None,
            cursor_every: Duration::from_secs(1),
            defer_cursor: false,
            written_seq: 0,
            acked_seq: 0,
            written_at: None,
        })
    }

    /// How many entries to send before waiting for the server's acknowledgements and writing
    /// the cursor (default 256; at least 1).
    pub fn batch_size(mut self, entries: usize) -> Self {
        self.batch = entries.max(1);
        self
    }

    /// How often [`Publisher::run`] looks for new entries in the log table (default 100 ms).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Also wakes up [`Publisher::run`] as soon as an entry arrives on `receiver` (pass the
    /// receiving end of [`ChangeLog::publish_to`] when the publisher runs in the writer's
    /// process). The entries are only a signal: the log table stays what is published. The
    /// channel is drained before each batch; `ChangeLog::record` waits while it is full, so
    /// give it room for the commits made during one batch (say 1024).
    pub fn wake_on(mut self, receiver: mpsc::Receiver<LogEntry>) -> Self {
        self.wake = Some(receiver);
        self
    }

    /// How often [`Publisher::run`] writes its cursor to the primary at most (default 1 s;
    /// zero: after every batch, as [`Publisher::publish_pending`] always does).
    ///
    /// The cursor write is a write transaction on the primary: after every batch it would take
    /// the database's write lock once per batch, which the application's own writers then
    /// wait for (SQLite's busy handler sleeps at least a millisecond), and it costs about a
    /// third of the publisher's CPU when batches are small. Between writes the table's cursor
    /// lags behind what the server acknowledged; a crash then only makes the next publisher
    /// re-send entries the stream already has, which the server drops (`Nats-Msg-Id`) or the
    /// sequence check skips, as after any crash between an acknowledgement and the write. The
    /// cursor is written when `run` returns, and when it is idle once the interval has passed.
    pub fn cursor_interval(mut self, every: Duration) -> Self {
        self.cursor_every = every;
        self
    }

    /// How often [`Publisher::run`] reports the stream's consumers' ack floors to the primary
    /// ([`Publisher::report_consumers`]; default 10 s).
    pub fn report_interval(mut self, every: Duration) -> Self {
        self.report_every = every;
        self
    }

    /// Copies every durable consumer's ack floor into the primary's replica cursors, as
    /// `nats:<consumer>` ([`ChangeLog::replica_cursors`]), so that
    /// [`ChangeLog::prune`] keeps what a NATS follower has not applied. A follower acks an
    /// entry only after committing it, so its ack floor never runs ahead of its replica.
    /// Returns how many consumers were reported.
    pub async fn report_consumers(&mut self) -> Result<usize> {
        let mut report = PublishReport::default();
        let handle = self.stream_handle(&mut report).await?;
        let mut consumers = handle.consumers();
        let mut reported = 0;
        while let Some(info) = consumers.next().await {
            let info = info.map_err(Error::nats("list consumers"))?;
            let Some(durable) = info.config.durable_name.as_deref() else {
                continue;
            };
            self.log
                .report_cursor(&format!("nats:{durable}"), info.ack_floor.stream_sequence)
                .await?;
            reported += 1;
        }
        self.reported_at = Some(tokio::time::Instant::now());
        Ok(reported)
    }

    /// The stream this publisher writes.
    pub fn stream(&self) -> &ChangeStream {
        &self.stream
    }

    /// The outbox cursor: every entry up to this seq is in the stream. While
    /// [`Publisher::run`] runs, it may lag behind by up to one
    /// [`cursor_interval`](Publisher::cursor_interval).
    pub async fn published_seq(&self) -> Result<u64> {
        let rows = self
            .db
            .query(
                "SELECT published_seq FROM liteorm_outbox WHERE stream = ?",
                &[self.stream.name().into()],
            )
            .await?;
        let seq: i64 = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    /// How many logged entries are not yet published.
    pub async fn backlog(&self) -> Result<u64> {
        let last = self.log.last_seq().await?;
        Ok(last.saturating_sub(self.published_seq().await?))
    }

    /// Publishes every entry after the cursor, batch by batch, and returns when the log has
    /// nothing more. NATS failures are returned (see [`Error::is_transient`]); what was
    /// acknowledged before stays recorded.
    pub async fn publish_pending(&mut self) -> Result<PublishReport> {
        let mut report = PublishReport {
            published_seq: self.published_seq().await?,
            ..PublishReport::default()
        };
        self.cursor_written(report.published_seq);
        while self.step(&mut report).await? {}
        Ok(report)
    }

    /// Publishes until `shutdown` completes, then returns what it did. Between batches it
    /// checks `shutdown`; when the log has nothing new it waits for the poll interval (or the
    /// [`wake_on`](Publisher::wake_on) channel). NATS failures (server down, timeouts) are
    /// retried with a backoff; any other error stops it.
    ///
    /// For a process, `shutdown` is typically a SIGTERM future or a cancellation token.
    pub async fn run(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<PublishReport> {
        let span = tracing::info_span!("liteorm_nats_publisher", stream = %self.stream.name());
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<PublishReport> {
        self.defer_cursor = true;
        let result = self.run_loop(shutdown).await;
        self.defer_cursor = false;
        // What the server acknowledged is recorded on the way out, whatever stopped the loop.
        let flushed = self.flush_cursor().await;
        let report = result?;
        flushed?;
        Ok(report)
    }

    async fn run_loop(
        &mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<PublishReport> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut total = PublishReport {
            published_seq: self.published_seq().await?,
            ..PublishReport::default()
        };
        self.cursor_written(total.published_seq);
        // Read, not written: the first acknowledged batch is written at once.
        self.written_at = None;
        tracing::info!(published_seq = total.published_seq, "publisher started");
        let mut backoff = Backoff::new();
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                break;
            }
            // This pass publishes everything logged so far: drop the wake-ups it covers, so
            // that the writer's `send` never waits for a full channel while entries are moving.
            if let Some(wake) = &mut self.wake {
                while wake.try_recv().is_ok() {}
            }
            let mut report = PublishReport {
                published_seq: total.published_seq,
                ..PublishReport::default()
            };
            let report_due = self
                .reported_at
                .is_none_or(|at| at.elapsed() >= self.report_every);
            let stepped = match self.step(&mut report).await {
                Ok(more) if report_due => self.report_consumers().await.map(|_| more),
                other => other,
            };
            match stepped {
                Ok(more) => {
                    // A batch shorter than the batch size was everything logged when it was
                    // read; with wake-ups, whatever committed since has queued one, so the
                    // publisher waits for it instead of reading the log again to find nothing.
                    let short = report.published_seq.saturating_sub(total.published_seq)
                        < self.batch as u64;
                    total.add(report);
                    backoff.reset();
                    if !more || (short && self.wake.is_some()) {
                        if self.cursor_due() {
                            self.flush_cursor().await?;
                        }
                        if !self.idle(shutdown.as_mut()).await {
                            break;
                        }
                    }
                }
                Err(err) if err.is_transient() => {
                    total.add(report);
                    // The next attempt may need a fresh stream handle (the server restarted).
                    self.handle = None;
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in = ?delay, "publishing failed; retrying");
                    tokio::select! {
                        () = shutdown.as_mut() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "publisher stopped");
                    return Err(err);
                }
            }
        }
        tracing::info!(published_seq = total.published_seq, "publisher shut down");
        Ok(total)
    }

    /// Waits for new entries (or until a deferred cursor write is due); `false` if `shutdown`
    /// completed instead.
    async fn idle(&mut self, mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        let wait = match self.written_at {
            Some(at) if self.acked_seq > self.written_seq => self
                .poll
                .min(self.cursor_every.saturating_sub(at.elapsed())),
            _ => self.poll,
        };
        let poll = tokio::time::sleep(wait);
        let woken = match &mut self.wake {
            Some(wake) => tokio::select! {
                () = shutdown.as_mut() => return false,
                () = poll => true,
                entry = wake.recv() => entry.is_some(),
            },
            None => tokio::select! {
                () = shutdown.as_mut() => return false,
                () = poll => true,
            },
        };
        if !woken {
            // The writer side is gone; the log table is still polled.
            self.wake = None;
        }
        true
    }

    /// The stream, looked up (or created) on first use and after every NATS failure. A fresh
    /// look also checks that the stream did not lose entries the cursor counts as published.
    async fn stream_handle(&mut self, report: &mut PublishReport) -> Result<stream::Stream> {
        if let Some(handle) = &self.handle {
            return Ok(handle.clone());
        }
        let handle = self.stream.ensure(&self.js).await?;
        let stream_last = handle.cached_info().state.last_sequence;
        if stream_last < report.published_seq {
            // Recreated, purged, or a server that lost its last writes: the log is the record
            // of truth, so publish again from where the stream ends. Without this the lost
            // entries would only be noticed when the next entry is published.
            self.reconcile(&handle, report.published_seq + 1, report)
                .await?;
        }
        self.handle = Some(handle.clone());
        Ok(handle)
    }

    /// Publishes one batch after `report.published_seq`; `false` if there was nothing to send.
    async fn step(&mut self, report: &mut PublishReport) -> Result<bool> {
        let handle = self.stream_handle(report).await?;
        let cursor = report.published_seq;
        let last = cursor.saturating_add(self.batch as u64);
        let entries = self
            .log
            .entries(&LogFilter::all().seqs(cursor + 1, last))
            .await?;
        if entries.is_empty() {
            return Ok(false);
        }
        // The log has no gaps unless someone deleted an entry: publish up to the hole, then
        // stop naming it (a stream with a hole would only stop every replica there).
        let run = (cursor + 1..)
            .zip(&entries)
            .take_while(|(expected, entry)| entry.seq == *expected)
            .count();
        if run == 0 {
            let horizon = self.log.horizon().await?;
            if horizon > cursor {
                // Force-pruned past what this publisher sent: the stream cannot be completed.
                return Err(liteorm_replication::Error::BehindHorizon {
                    applied: cursor,
                    horizon,
                }
                .into());
            }
            return Err(liteorm_replication::Error::ChainBroken {
                seq: cursor + 1,
                reason: ChainBreak::Missing {
                    next: entries[0].seq,
                },
            }
            .into());
        }
        let entries = &entries[..run];
        let span = tracing::debug_span!("publish_batch", from = cursor + 1, count = entries.len());
        self.publish_batch(&handle, entries, report)
            .instrument(span)
            .await?;
        Ok(true)
    }

    async fn publish_batch(
        &mut self,
        handle: &stream::Stream,
        entries: &[LogEntry],
        report: &mut PublishReport,
    ) -> Result<()> {
        let cursor = report.published_seq;
        // Send the whole batch before awaiting any acknowledgement: one connection keeps them in
        // order, and the sequence check makes the server store them in order or not at all.
        let mut sent: Vec<(u64, PublishAckFuture)> = Vec::with_capacity(entries.len());
        let mut failure = None;
        let connection = ConnectionWatch::new(&self.js);
        for entry in entries {
            let (headers, payload) = wire::encode(entry);
            let message = PublishMessage::build()
                .headers(headers)
                .payload(payload)
                .message_id(entry.seq.to_string())
                .expected_last_sequence(entry.seq.saturating_sub(1));
            match self
                .js
                .send_publish(self.stream.subject().to_owned(), message)
                .await
            {
                Ok(ack) => sent.push((entry.seq, ack)),
                Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    failure = Some(Outcome::Fail(Error::TooLarge {
                        seq: entry.seq,
                        source: Box::new(err),
                    }));
                    break;
                }
                Err(err) => {
                    failure = Some(Outcome::Fail(Error::nats("publish")(err)));
                    break;
                }
            }
        }
        let mut acked = cursor;
        let mut lost = std::pin::pin!(connection.lost());
        for (seq, ack) in sent {
            let ack = tokio::select! {
                ack = ack => ack,
                // A restarted server will not acknowledge what it got before: send again (the
                // message id and expected sequence make a resend of a stored entry harmless).
                () = lost.as_mut() => {
                    failure = Some(Outcome::Fail(ConnectionWatch::error("publish acknowledgement")));
                    break;
                }
            };
            match ack {
                Ok(ack) if ack.sequence == seq => {
                    if ack.duplicate {
                        report.duplicates += 1;
                    } else {
                        report.published += 1;
                    }
                    acked = seq;
                }
                Ok(ack) => {
                    failure = Some(Outcome::Fail(Error::ForeignMessage {
                        stream: self.stream.name().to_owned(),
                        stream_seq: ack.sequence,
                        expected: ack.sequence,
                        found: Some(seq),
                    }));
                    break;
                }
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                    failure = Some(Outcome::Reconcile { at: seq });
                    break;
                }
                Err(err) => {
                    failure = Some(Outcome::Fail(Error::nats("publish acknowledgement")(err)));
                    break;
                }
            }
        }
        if acked > cursor {
            report.published_seq = acked;
            self.acked_seq = acked;
            if !self.defer_cursor || self.cursor_due() {
                self.flush_cursor().await?;
            }
            tracing::debug!(published_seq = acked, "batch acknowledged");
        }
        match failure {
            None => Ok(()),
            Some(Outcome::Fail(err)) => Err(err),
            Some(Outcome::Reconcile { at }) => self.reconcile(handle, at, report).await,
        }
    }

    /// The stream does not end at `at - 1` (the server refused entry `at`, or a fresh look
    /// found it shorter than the cursor): move the cursor to where the stream really ends.
    async fn reconcile(
        &mut self,
        handle: &stream::Stream,
        at: u64,
        report: &mut PublishReport,
    ) -> Result<()> {
        let info = handle
            .get_info()
            .await
            .map_err(Error::nats("stream info"))?;
        let stream_last = info.state.last_sequence;
        let log_last = self.log.last_seq().await?;
        if stream_last > log_last {
            return Err(Error::StreamAhead {
                stream: self.stream.name().to_owned(),
                stream_last,
                log_last,
            });
        }
        if stream_last > 0 {
            // The stream's last message must be our entry `stream_last`: then, as every entry
            // went in with the sequence check, all of 1..=stream_last are there in order.
            match handle.get_raw_message(stream_last).await {
                Ok(message) => {
                    let found = wire::seq_of_stored(&message);
                    if found != Some(stream_last) {
                        return Err(Error::ForeignMessage {
                            stream: self.stream.name().to_owned(),
                            stream_seq: stream_last,
                            expected: stream_last,
                            found,
                        });
                    }
                }
                // Expired (max age) or deleted: the position itself is all there is to go by.
                Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
                Err(err) => return Err(Error::nats("get last message")(err)),
            }
        }
        let cursor = report.published_seq;
        if stream_last > cursor {
            report.already_in_stream += stream_last - cursor;
            tracing::info!(
                refused = at,
                stream_last,
                "entries were already in the stream (re-sent after the duplicate window)"
            );
        } else if stream_last < cursor {
            tracing::warn!(
                stream_last,
                published_seq = cursor,
                "the stream ends before the outbox cursor (recreated or truncated?); republishing"
            );
        }
        self.write_cursor(stream_last).await?;
        self.cursor_written(stream_last);
        report.published_seq = stream_last;
        Ok(())
    }

    /// The outbox table holds `seq` (read or written just now).
    fn cursor_written(&mut self, seq: u64) {
        self.written_seq = seq;
        self.acked_seq = seq;
        self.written_at = Some(tokio::time::Instant::now());
    }

    /// Whether a deferred cursor write is due: something acknowledged is not in the table and
    /// the last write is one cursor interval old.
    fn cursor_due(&self) -> bool {
        self.acked_seq > self.written_seq
            && self
                .written_at
                .is_none_or(|at| at.elapsed() >= self.cursor_every)
    }

    /// Writes the acknowledged seq to the outbox table if it is not there yet.
    async fn flush_cursor(&mut self) -> Result<()> {
        if self.acked_seq > self.written_seq {
            self.write_cursor(self.acked_seq).await?;
            self.cursor_written(self.acked_seq);
        }
        Ok(())
    }

    async fn write_cursor(&self, seq: u64) -> Result<()> {
        self.db
            .execute(
                "UPDATE liteorm_outbox SET published_seq = ? WHERE stream = ?",
                &[
                    Value::Integer(i64::try_from(seq).unwrap_or(i64::MAX)),
                    self.stream.name().into(),
                ],
            )
            .await?;
        Ok(())
    }
}

enum Outcome {
    Fail(Error),
    Reconcile { at: u64 },
}
