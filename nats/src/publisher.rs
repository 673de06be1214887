//! The publisher: the primary's change log table is an outbox that it drains into JetStream.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::PoisonError;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use futures::future::MaybeDone;
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

/// An acknowledgement being waited for; it keeps its answer once it has arrived.
///
/// The mutex is never locked, only reached through `get_mut`: the client's boxed future is
/// `Send` but not `Sync`, and this keeps the [`Publisher`] `Sync`.
struct PendingAck(std::sync::Mutex<MaybeDone<<PublishAckFuture as IntoFuture>::IntoFuture>>);

impl PendingAck {
    fn new(ack: PublishAckFuture) -> Self {
        PendingAck(std::sync::Mutex::new(MaybeDone::Future(ack.into_future())))
    }

    fn get(&mut self) -> &mut MaybeDone<<PublishAckFuture as IntoFuture>::IntoFuture> {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What ended an idle wait.
enum Woken {
    /// The poll interval (or the cursor interval) passed.
    Poll,
    /// The writer committed this entry.
    Entry(LogEntry),
    /// The writer's side of the wake-up channel is gone.
    Closed,
    /// The oldest acknowledgement in flight arrived (or its connection went down).
    Acknowledged,
}

/// How to collect acknowledgements.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Collect {
    /// Those that have arrived, without waiting.
    Ready,
    /// Until at most this many publishes are in flight.
    DownTo(usize),
}

/// Publishes a primary's change log to its JetStream stream, in seq order, exactly once.
///
/// Entry `seq` goes to [`ChangeStream::subject`] with `Nats-Msg-Id: seq` and
/// `Nats-Expected-Last-Sequence: seq - 1`, its metadata in headers and its changeset as payload.
/// Publishing is pipelined: up to [`max_in_flight`](Publisher::max_in_flight) entries are sent
/// before their acknowledgements return (one connection keeps them in order, and the sequence
/// check makes the server store them in order or not at all), and the next batch is read from
/// the log while they are pending. Acknowledgements are taken in seq order; at the first failure
/// (a refused sequence, a timeout, a lost connection) everything after the last acknowledged
/// entry is dropped and sent again from there. After the server's acknowledgement the publisher records the published-up-to seq in the
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
    /// Publishes sent and not acknowledged yet, oldest first, by seq; at most `window`.
    in_flight: VecDeque<(u64, PendingAck)>,
    window: usize,
    /// The last seq sent (the last acknowledged one when nothing is in flight).
    sent_seq: u64,
    /// The connection the oldest publish in flight went out on.
    sent_on: Option<ConnectionWatch>,
    poll: Duration,
    wake: Option<mpsc::Receiver<LogEntry>>,
    /// Committed entries received on `wake`, in seq order, not sent yet (at most `batch`).
    handed_over: VecDeque<LogEntry>,
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
            in_flight: VecDeque::new(),
            window: 1024,
            sent_seq: 0,
            sent_on: None,
            poll: Duration::from_millis(100),
            wake: None,
            handed_over: VecDeque::new(),
            report_every: Duration::from_secs(10),
            reported_at: None,
            cursor_every: Duration::from_secs(1),
            defer_cursor: false,
            written_seq: 0,
            acked_seq: 0,
            written_at: None,
        })
    }

    /// How many entries to read from the log at a time (default 256; at least 1).
    pub fn batch_size(mut self, entries: usize) -> Self {
        self.batch = entries.max(1);
        self
    }

    /// How many entries may be sent before their acknowledgements return (default 1024; at
    /// least 1). Keep it within the JetStream context's `max_ack_inflight` (async-nats's
    /// default is 5000): the client holds a permit per publish until its acknowledgement is
    /// taken.
    pub fn max_in_flight(mut self, entries: usize) -> Self {
        self.window = entries.max(1);
        self
    }

    /// How often [`Publisher::run`] looks for new entries in the log table (default 100 ms).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Also wakes up [`Publisher::run`] as soon as an entry arrives on `receiver` (pass the
    /// receiving end of [`ChangeLog::publish_to`] when the publisher runs in the writer's
    /// process). The log table stays the record of truth: an entry received is sent as it is
    /// (it is the committed entry) only when it comes right after what was sent, which spares
    /// reading it back; anything else is read from the table. The channel is drained before
    /// each batch; `ChangeLog::record` waits while it is full, so give it room for the commits
    /// made during one batch (say 1024).
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
        self.abandon_in_flight(report.published_seq);
        let result = async {
            while self.step(&mut report).await? > 0 {}
            self.collect(&mut report, Collect::DownTo(0)).await
        }
        .await;
        // What failed is sent again by the next call, from the cursor it reads.
        self.abandon_in_flight(report.published_seq);
        result.map(|()| report)
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
        self.abandon_in_flight(total.published_seq);
        // Read, not written: the first acknowledged batch is written at once.
        self.written_at = None;
        tracing::info!(published_seq = total.published_seq, "publisher started");
        let mut backoff = Backoff::new();
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                break;
            }
            // This pass publishes everything logged so far: take the wake-ups it covers, so
            // that the writer's `send` never waits for a full channel while entries are moving.
            while let Some(entry) = self.wake.as_mut().and_then(|wake| wake.try_recv().ok()) {
                self.hand_over(entry);
            }
            let mut report = PublishReport {
                published_seq: total.published_seq,
                ..PublishReport::default()
            };
            let report_due = self
                .reported_at
                .is_none_or(|at| at.elapsed() >= self.report_every);
            let stepped = match self.step(&mut report).await {
                Ok(sent) if report_due => self.report_consumers().await.map(|_| sent),
                other => other,
            };
            total.add(report);
            let outcome = match stepped {
                Ok(sent) => {
                    backoff.reset();
                    // A batch shorter than the batch size was everything logged when it was
                    // read; with wake-ups, whatever committed since has queued one, so the
                    // publisher waits for it instead of reading the log again to find nothing.
                    if sent == 0 || (sent < self.batch && self.wake.is_some()) {
                        match self.idle(shutdown.as_mut(), &mut total).await {
                            Ok(true) => Ok(()),
                            Ok(false) => break,
                            Err(err) => Err(err),
                        }
                    } else {
                        Ok(())
                    }
                }
                Err(err) => Err(err),
            };
            match outcome {
                Ok(()) => {}
                Err(err) if err.is_transient() => {
                    // The next attempt may need a fresh stream handle (the server restarted),
                    // and sends again everything after the last acknowledged entry.
                    self.handle = None;
                    self.abandon_in_flight(total.published_seq);
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
        // Take the acknowledgements of what is in flight, so that the cursor covers it.
        let mut report = PublishReport {
            published_seq: total.published_seq,
            ..PublishReport::default()
        };
        let settled = self.collect(&mut report, Collect::DownTo(0)).await;
        total.add(report);
        if let Err(err) = settled {
            // Sent again by the next publisher; the server drops what it already has.
            tracing::warn!(error = %err, "acknowledgements lost on shutdown");
            self.abandon_in_flight(total.published_seq);
        }
        tracing::info!(published_seq = total.published_seq, "publisher shut down");
        Ok(total)
    }

    /// Waits for new entries (or until a deferred cursor write is due), taking in
    /// acknowledgements as they arrive; `false` if `shutdown` completed instead.
    async fn idle(
        &mut self,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        total: &mut PublishReport,
    ) -> Result<bool> {
        loop {
            if self.cursor_due() {
                self.flush_cursor().await?;
            }
            let wait = match self.written_at {
                Some(at) if self.acked_seq > self.written_seq => self
                    .poll
                    .min(self.cursor_every.saturating_sub(at.elapsed())),
                _ => self.poll,
            };
            let poll = tokio::time::sleep(wait);
            let Publisher {
                in_flight,
                sent_on,
                wake,
                ..
            } = self;
            // The oldest acknowledgement arriving, or the connection it waits on going down.
            let acked = async {
                match (in_flight.front_mut(), sent_on.as_ref()) {
                    (Some((_, ack)), Some(connection)) => tokio::select! {
                        () = ack.get() => {},
                        () = connection.lost() => {},
                    },
                    (Some((_, ack)), None) => ack.get().await,
                    (None, _) => std::future::pending().await,
                }
            };
            let woken = match wake {
                Some(wake) => tokio::select! {
                    () = shutdown.as_mut() => return Ok(false),
                    () = acked => Woken::Acknowledged,
                    () = poll => Woken::Poll,
                    entry = wake.recv() => match entry {
                        Some(entry) => Woken::Entry(entry),
                        // The writer side is gone; the log table is still polled.
                        None => Woken::Closed,
                    },
                },
                None => tokio::select! {
                    () = shutdown.as_mut() => return Ok(false),
                    () = acked => Woken::Acknowledged,
                    () = poll => Woken::Poll,
                },
            };
            match woken {
                Woken::Poll => return Ok(true),
                Woken::Entry(entry) => {
                    self.hand_over(entry);
                    return Ok(true);
                }
                Woken::Closed => {
                    self.wake = None;
                    return Ok(true);
                }
                Woken::Acknowledged => {
                    let mut report = PublishReport {
                        published_seq: total.published_seq,
                        ..PublishReport::default()
                    };
                    let collected = self.collect(&mut report, Collect::Ready).await;
                    total.add(report);
                    collected?;
                }
            }
        }
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

    /// Sends the next batch after what was sent, taking in the acknowledgements that have
    /// arrived (and waiting for the oldest ones while the window is full). Returns how many
    /// entries it sent; 0 when the log has nothing after what was sent.
    async fn step(&mut self, report: &mut PublishReport) -> Result<usize> {
        self.stream_handle(report).await?;
        self.collect(report, Collect::Ready).await?;
        let count = self.batch.min(self.window);
        if self.in_flight.len() + count > self.window {
            self.collect(report, Collect::DownTo(self.window - count))
                .await?;
        }
        if self.in_flight.is_empty() {
            self.sent_seq = report.published_seq;
        }
        let cursor = self.sent_seq;
        let entries = self.next_entries(cursor, count).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        // The log has no gaps unless someone deleted an entry: publish up to the hole, then
        // stop naming it (a stream with a hole would only stop every replica there).
        let run = (cursor + 1..)
            .zip(&entries)
            .take_while(|(expected, entry)| entry.seq == *expected)
            .count();
        if run == 0 {
            // Everything before the hole is acknowledged first: the error names the cursor.
            self.collect(report, Collect::DownTo(0)).await?;
            let cursor = report.published_seq;
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
        self.send(entries, report).instrument(span).await?;
        Ok(run)
    }

    /// Sends `entries` (the ones right after `sent_seq`) without waiting for their
    /// acknowledgements. A publish the client refuses stops it: what was sent before is
    /// acknowledged first, then the error is returned.
    async fn send(&mut self, entries: &[LogEntry], report: &mut PublishReport) -> Result<()> {
        if self.in_flight.is_empty() {
            self.sent_on = Some(ConnectionWatch::new(&self.js));
        }
        for entry in entries {
            let (headers, payload) = wire::encode(entry);
            let message = PublishMessage::build()
                .headers(headers)
                .payload(payload)
                .message_id(entry.seq.to_string())
                .expected_last_sequence(entry.seq.saturating_sub(1));
            let failure = match self
                .js
                .send_publish(self.stream.subject().to_owned(), message)
                .await
            {
                Ok(ack) => {
                    self.in_flight.push_back((entry.seq, PendingAck::new(ack)));
                    self.sent_seq = entry.seq;
                    continue;
                }
                Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => Error::TooLarge {
                    seq: entry.seq,
                    source: Box::new(err),
                },
                Err(err) => Error::nats("publish")(err),
            };
            self.collect(report, Collect::DownTo(0)).await?;
            return Err(failure);
        }
        Ok(())
    }

    /// Takes in acknowledgements in seq order: those that arrived, or until `DownTo(n)` are left
    /// in flight. Moves the cursor over the acknowledged entries. At the first failure
    /// everything in flight is dropped (the next step sends it again from the cursor): a
    /// refused sequence is reconciled with the stream, other failures are returned.
    async fn collect(&mut self, report: &mut PublishReport, mode: Collect) -> Result<()> {
        let cursor = report.published_seq;
        let mut acked = cursor;
        let mut failure = None;
        loop {
            let in_flight = self.in_flight.len();
            let Some((_, ack)) = self.in_flight.front_mut() else {
                break;
            };
            let ack = ack.get();
            let wait = matches!(mode, Collect::DownTo(n) if in_flight > n);
            let lost = self.sent_on.as_ref();
            let arrived = if wait {
                match lost {
                    Some(connection) => tokio::select! {
                        () = &mut *ack => true,
                        () = connection.lost() => false,
                    },
                    None => {
                        (&mut *ack).await;
                        true
                    }
                }
            } else {
                (&mut *ack).now_or_never().is_some()
            };
            if !arrived {
                if wait || lost.is_some_and(ConnectionWatch::is_lost) {
                    // A restarted server will not acknowledge what it got before: send again
                    // (the message id and expected sequence make a resend of a stored entry
                    // harmless).
                    failure = Some(Outcome::Fail(ConnectionWatch::error(
                        "publish acknowledgement",
                    )));
                }
                break;
            }
            let Some((seq, mut ack)) = self.in_flight.pop_front() else {
                break;
            };
            let Some(ack) = Pin::new(ack.get()).take_output() else {
                break;
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
        if self.in_flight.is_empty() {
            self.sent_on = None;
        }
        if acked > cursor {
            report.published_seq = acked;
            self.acked_seq = acked;
            if !self.defer_cursor || self.cursor_due() {
                self.flush_cursor().await?;
            }
            tracing::debug!(published_seq = acked, "acknowledged");
        }
        let Some(failure) = failure else {
            return Ok(());
        };
        self.abandon_in_flight(acked);
        match failure {
            Outcome::Fail(err) => Err(err),
            Outcome::Reconcile { at } => {
                let handle = self.stream_handle(report).await?;
                self.reconcile(&handle, at, report).await?;
                self.abandon_in_flight(report.published_seq);
                Ok(())
            }
        }
    }

    /// Keeps a committed entry from the wake-up channel, to send without reading it back from
    /// the log. Only a run that follows what was sent is ever used; entries beyond a full
    /// batch are read from the log instead.
    fn hand_over(&mut self, entry: LogEntry) {
        let follows = self
            .handed_over
            .back()
            .is_none_or(|last| last.seq + 1 == entry.seq);
        if !follows || self.handed_over.len() >= self.batch {
            self.handed_over.clear();
        }
        self.handed_over.push_back(entry);
    }

    /// The entries after `cursor`, at most `count`: those the writer handed over when they
    /// start right after it, else read from the log.
    async fn next_entries(&mut self, cursor: u64, count: usize) -> Result<Vec<LogEntry>> {
        while self.handed_over.front().is_some_and(|e| e.seq <= cursor) {
            self.handed_over.pop_front();
        }
        if self
            .handed_over
            .front()
            .is_some_and(|e| e.seq == cursor + 1)
        {
            let n = count.min(self.handed_over.len());
            return Ok(self.handed_over.drain(..n).collect());
        }
        let last = cursor.saturating_add(count as u64);
        Ok(self
            .log
            .entries(&LogFilter::all().seqs(cursor + 1, last))
            .await?)
    }

    /// Drops every publish in flight: the next step sends again from `acked`.
    fn abandon_in_flight(&mut self, acked: u64) {
        self.in_flight.clear();
        self.sent_seq = acked;
        self.sent_on = None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use liteorm_replication::Meta;

    /// The entries' seqs and actors.
    fn seen(entries: &[LogEntry]) -> Vec<(u64, Option<&str>)> {
        entries
            .iter()
            .map(|e| (e.seq, e.actor.as_deref()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handed_over_entries_are_used_only_right_after_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primary.db");
        let db = SqliteSession::open(path.to_str().unwrap()).await.unwrap();
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
            .await
            .unwrap();
        let log = ChangeLog::open(&db).await.unwrap();
        for i in 0..6_i64 {
            log.record(Meta::actor("table"), move |s| async move {
                s.execute("INSERT INTO t VALUES (?, 0)", &[i.into()])
                    .await?;
                Ok::<_, liteorm_replication::Error>(())
            })
            .await
            .unwrap();
        }
        // No server is needed to choose what to send.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .unwrap();
        let stream = ChangeStream::new("unit").unwrap();
        let mut publisher = Publisher::new(&db, jetstream::new(client), stream)
            .await
            .unwrap();
        // What the writer handed over for 4..=6, marked to tell them from the table's rows.
        for mut entry in log.entries(&LogFilter::all().seqs(4, 6)).await.unwrap() {
            entry.actor = Some("handed".into());
            publisher.hand_over(entry);
        }
        // Entry 3 was not handed over: everything after 2 comes from the table.
        let read = publisher.next_entries(2, 10).await.unwrap();
        let table = Some("table");
        assert_eq!(
            seen(&read),
            [(3, table), (4, table), (5, table), (6, table)]
        );
        // After 3 they follow: used as they are, at most `count` at a time.
        let handed = Some("handed");
        let read = publisher.next_entries(3, 2).await.unwrap();
        assert_eq!(seen(&read), [(4, handed), (5, handed)]);
        // An entry that does not follow the ones kept replaces them, and kept entries at or
        // below the cursor are dropped: 6 comes from the table.
        publisher.hand_over(log.entries(&LogFilter::all().seqs(1, 1)).await.unwrap()[0].clone());
        let read = publisher.next_entries(5, 10).await.unwrap();
        assert_eq!(seen(&read), [(6, table)]);
        assert!(publisher.next_entries(6, 10).await.unwrap().is_empty());
    }
}
