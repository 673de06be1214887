//! The follower's [`ChangeSource`]: a durable JetStream pull consumer, acked after commit.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Batch};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use futures::{FutureExt as _, StreamExt as _};
use liteorm_replication::{ChangeSource, LogEntry};
use tokio::time::Instant;

use crate::connection::ConnectionWatch;
use crate::stream::check_name;
use crate::{ChangeStream, Error, Result, wire};

/// Reads a database's change stream through a durable pull consumer, for a
/// [`Replica`](liteorm_replication::Replica) (directly with `Replica::follow` / `catch_up`, or
/// through a [`Follower`](crate::Follower)).
///
/// **Ack after commit.** A delivered message is acknowledged only on a later
/// [`ChangeSource::fetch`]`(after, ..)` with its seq `<= after`: the replica passes its
/// committed cursor as `after`, so a message is acked only once the transaction that applied it
/// (and moved the cursor) committed. A crash before that makes the server deliver it again; the
/// replica skips seqs at or below its cursor, so it is applied exactly once. The consumer's ack
/// policy is `All`: one ack, of the last committed delivery, covers the whole batch (a consumer
/// with explicit acks, made by an earlier version, is replaced on first use, from the replica's
/// cursor).
///
/// **Positioning.** The consumer (named after the replica, durable) is set up on first use from
/// the replica's cursor: it starts at stream sequence `cursor + 1`, which is log seq
/// `cursor + 1` because the [`Publisher`](crate::Publisher) writes seq `n` at stream sequence
/// `n`. An existing consumer is kept when it stopped cleanly right there (nothing unacked), and
/// recreated otherwise: the replica's cursor, not the consumer, is the record of progress.
/// Deliveries lost in transit (a crashed process, a restarted server) show up as a hole before
/// the next entry; the source then repositions the consumer at `cursor + 1` instead of waiting
/// for the server's redelivery timeout. A hole that is still there afterwards is in the stream
/// itself: the entries are handed over and the replica refuses them with
/// [`Gap`](liteorm_replication::Error::Gap).
///
/// **Retention.** When the stream no longer has the entry after the cursor (its `max_age` or
/// other limits dropped it, or it was purged), positioning fails with
/// [`BehindHorizon`](liteorm_replication::Error::BehindHorizon): bootstrap the replica again
/// from a snapshot. The consumer's ack floor is the replica's cursor as far as the primary can
/// see it: the [`Publisher`](crate::Publisher) reports it for pruning.
pub struct NatsSource {
    js: jetstream::Context,
    stream: ChangeStream,
    durable: String,
    ack_wait: Duration,
    long_poll: Duration,
    request_timeout: Duration,
    handle: Option<stream::Stream>,
    consumer: Option<PullConsumer>,
    /// Delivered, not yet acknowledged, with their stream sequence.
    held: Vec<(u64, jetstream::Message)>,
    /// Entries after the last `after` seen, by seq (a redelivery replaces nothing).
    ready: BTreeMap<u64, LogEntry>,
    /// The open waiting pull request of [`NatsSource::wait_for_more`] and when it must have
    /// ended: the server delivers each new entry to it at once, and `next_batch` takes what it
    /// delivered since.
    waiting: Option<Waiting>,
    /// The largest batch asked for, which a waiting pull asks for too.
    limit: usize,
    skipped: u64,
    repositions: u64,
}

impl NatsSource {
    /// A source reading `stream` through the durable consumer `consumer` (1 to 64 ASCII
    /// letters, digits, `_` or `-`; one per replica). Nothing is sent to the server yet.
    pub fn new(js: jetstream::Context, stream: &ChangeStream, consumer: &str) -> Result<Self> {
        check_name("consumer name", consumer)?;
        Ok(NatsSource {
            js,
            stream: stream.clone(),
            durable: consumer.to_owned(),
            ack_wait: Duration::from_secs(30),
            long_poll: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            handle: None,
            consumer: None,
            held: Vec::new(),
            ready: BTreeMap::new(),
            waiting: None,
            limit: 1,
            skipped: 0,
            repositions: 0,
        })
    }

    /// How long the server waits for an ack before delivering a message again (default 30 s).
    /// It must exceed the time to apply and commit one batch; lost deliveries are recovered by
    /// repositioning, not by this timeout.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How long one [`ChangeSource::wait`]'s pull request stays open on the server (default
    /// 5 s): every entry published meanwhile (up to the largest batch asked for) is delivered
    /// to it at once, and the next `fetch` takes them without a request of its own. Shorter
    /// notices a restarted server sooner; longer sends fewer idle requests.
    pub fn long_poll(mut self, long_poll: Duration) -> Self {
        self.long_poll = long_poll;
        self
    }

    /// How long a pull may take beyond its own wait before it counts as failed (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The stream it reads.
    pub fn stream(&self) -> &ChangeStream {
        &self.stream
    }

    /// The durable consumer's name.
    pub fn consumer_name(&self) -> &str {
        &self.durable
    }

    /// Deliveries of entries the replica already had (redeliveries), acked and skipped so far.
    pub fn redeliveries_skipped(&self) -> u64 {
        self.skipped
    }

    /// How often the consumer was repositioned after deliveries went missing.
    pub fn repositions(&self) -> u64 {
        self.repositions
    }

    /// The change log seq of the stream's last message (0 when empty).
    pub async fn stream_last_seq(&mut self) -> Result<u64> {
        let handle = self.stream_handle().await?;
        self.stream.last_seq(&handle).await
    }

    /// Up to `limit` entries after `after` in seq order, first acknowledging every delivered
    /// entry up to `after` (which the caller has committed). Empty: nothing new has arrived.
    pub async fn next_batch(&mut self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        let result = self.next_batch_inner(after, limit.max(1)).await;
        self.reset_after(&result);
        result
    }

    /// Waits (up to the long-poll time) for an entry after `after`; returns early when one is
    /// already there. Acknowledges every delivered entry up to `after` first.
    pub async fn wait_for_more(&mut self, after: u64) -> Result<()> {
        let result = self.wait_inner(after).await;
        self.reset_after(&result);
        result
    }

    /// Acknowledges every delivered entry up to `after` (committed by the caller) and flushes
    /// the connection, e.g. before a follower exits.
    pub async fn ack_through(&mut self, after: u64) -> Result<()> {
        self.ack_committed(after).await;
        self.js
            .client()
            .flush()
            .await
            .map_err(Error::nats("flush acks"))
    }

    /// Forgets the consumer and every delivery: the next call sets the consumer up again from
    /// the cursor it is given. Unacked deliveries are simply delivered again.
    pub fn reset(&mut self) {
        self.handle = None;
        self.consumer = None;
        self.held.clear();
        self.ready.clear();
        self.waiting = None;
    }

    fn reset_after<T>(&mut self, result: &Result<T>) {
        if matches!(result, Err(err) if err.is_transient()) {
            self.reset();
        }
    }

    async fn next_batch_inner(&mut self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        self.ensure_consumer(after).await?;
        self.ack_committed(after).await;
        self.limit = self.limit.max(limit);
        if self
            .waiting
            .as_ref()
            .is_some_and(|waiting| waiting.connection.is_lost())
        {
            // A restarted server forgot the request: it will deliver nothing more.
            self.waiting = None;
        }
        if !self.ready.contains_key(&(after + 1)) {
            if self.waiting.is_some() {
                // The server hands new entries to the open request, not to another one.
                self.take_delivered(after).await?;
            } else {
                self.pull(after, limit).await?;
            }
        }
        let mut run = self.contiguous(after, limit);
        if run.is_empty() && !self.ready.is_empty() {
            let first = self.ready.keys().next().copied().unwrap_or(after);
            tracing::info!(
                consumer = %self.durable,
                expected = after + 1,
                first_delivered = first,
                "deliveries went missing; repositioning the consumer"
            );
            self.repositions += 1;
            self.recreate_consumer(after).await?;
            self.pull(after, limit).await?;
            run = self.contiguous(after, limit);
            if run.is_empty() && !self.ready.is_empty() {
                // Not a delivery problem: the stream lacks the entry. The replica refuses
                // these with a gap error that names both seqs.
                return Ok(self.ready.values().take(limit).cloned().collect());
            }
        }
        if !run.is_empty() {
            // Prefetch: the next batch is delivered while the caller applies this one.
            self.open_waiting().await?;
        }
        Ok(run)
    }

    async fn wait_inner(&mut self, after: u64) -> Result<()> {
        self.ensure_consumer(after).await?;
        self.ack_committed(after).await;
        if self.ready.range(after + 1..).next().is_some() {
            return Ok(());
        }
        // The request stays open after the first message (kept here, so a caller that stops
        // waiting loses nothing): the entries after it are delivered as they are published,
        // without a request each.
        self.open_waiting().await?;
        let Some(Waiting {
            request,
            deadline,
            connection,
        }) = &mut self.waiting
        else {
            return Ok(());
        };
        let first = tokio::select! {
            next = tokio::time::timeout_at(*deadline, request.next()) => match next {
                Err(_elapsed) => return Err(pull_timed_out()),
                Ok(next) => next,
            },
            // A restarted server forgot the request: pull again rather than wait it out (the
            // error resets the source, and the request with it).
            () = connection.lost() => return Err(ConnectionWatch::error("pull")),
        };
        match first {
            // Expired, or every message asked for was delivered: the next wait asks again.
            None => {
                self.waiting = None;
                Ok(())
            }
            Some(Err(source)) => {
                self.waiting = None;
                Err(Error::Nats { op: "pull", source })
            }
            Some(Ok(message)) => {
                self.take(message, after).await?;
                self.take_delivered(after).await
            }
        }
    }

    /// Sends a waiting pull request (up to the largest batch asked for, open for the long-poll
    /// time) unless one is open: the server delivers to it what is in the stream and what is
    /// published meanwhile, and `take_delivered` takes it in without a round trip.
    async fn open_waiting(&mut self) -> Result<()> {
        if self.waiting.is_some() {
            return Ok(());
        }
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let connection = ConnectionWatch::new(&self.js);
        let request = consumer
            .batch()
            .max_messages(self.limit.max(1))
            .expires(self.long_poll)
            .messages()
            .await
            .map_err(Error::nats("pull request"))?;
        self.waiting = Some(Waiting {
            request,
            deadline: Instant::now() + self.long_poll + self.request_timeout,
            connection,
        });
        Ok(())
    }

    /// Takes in what the open waiting request has delivered so far, without waiting.
    async fn take_delivered(&mut self, after: u64) -> Result<()> {
        loop {
            let Some(Waiting { request, .. }) = &mut self.waiting else {
                return Ok(());
            };
            match request.next().now_or_never() {
                None => return Ok(()),
                Some(None) => {
                    self.waiting = None;
                    return Ok(());
                }
                Some(Some(Err(source))) => {
                    self.waiting = None;
                    return Err(Error::Nats { op: "pull", source });
                }
                Some(Some(Ok(message))) => self.take(message, after).await?,
            }
        }
    }

    /// The entries `after + 1, after + 2, ...` that are ready, at most `limit`.
    fn contiguous(&self, after: u64, limit: usize) -> Vec<LogEntry> {
        (after + 1..)
            .zip(self.ready.range(after + 1..))
            .take_while(|(expected, (seq, _))| *seq == expected)
            .take(limit)
            .map(|(_, (_, entry))| entry.clone())
            .collect()
    }

    /// Acknowledges the deliveries at stream sequences up to `after` with one ack (the
    /// consumer's policy is `All`: an ack covers every sequence up to its own). Every stream
    /// position up to `after` holds a seq up to `after` (`take` refuses an entry at a position
    /// below its seq), so all of them are committed.
    async fn ack_committed(&mut self, after: u64) {
        let last = self
            .held
            .iter()
            .enumerate()
            .filter(|(_, (stream_seq, _))| *stream_seq <= after)
            .max_by_key(|(_, (stream_seq, _))| *stream_seq)
            .map(|(i, _)| i);
        if let Some(i) = last {
            let (stream_seq, message) = self.held.swap_remove(i);
            ack(&message, stream_seq).await;
            self.held.retain(|(stream_seq, _)| *stream_seq > after);
        }
        self.ready = self.ready.split_off(&(after + 1));
    }

    async fn stream_handle(&mut self) -> Result<stream::Stream> {
        if let Some(handle) = &self.handle {
            return Ok(handle.clone());
        }
        // A follower may start before the publisher ever ran: create the stream the same way.
        let handle = self.stream.ensure(&self.js).await?;
        self.handle = Some(handle.clone());
        Ok(handle)
    }

    async fn ensure_consumer(&mut self, after: u64) -> Result<()> {
        if self.consumer.is_some() {
            return Ok(());
        }
        let handle = self.stream_handle().await?;
        let reusable = match handle.consumer_info(&self.durable).await {
            Ok(info) => {
                info.num_ack_pending == 0
                    && info.num_waiting == 0
                    && info.delivered.stream_sequence == after
                    && info.config.ack_policy == AckPolicy::All
                    && info.config.deliver_subject.is_none()
            }
            Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => false,
            Err(err) => return Err(Error::nats("consumer info")(err)),
        };
        if reusable {
            let consumer =
                handle
                    .get_consumer(&self.durable)
                    .await
                    .map_err(|source| Error::Nats {
                        op: "get consumer",
                        source,
                    })?;
            tracing::debug!(consumer = %self.durable, after, "resuming the durable consumer");
            self.consumer = Some(consumer);
            return Ok(());
        }
        self.recreate_consumer(after).await
    }

    /// Replaces the consumer by one that starts right after `after`, dropping every delivery.
    async fn recreate_consumer(&mut self, after: u64) -> Result<()> {
        self.consumer = None;
        self.held.clear();
        self.ready.clear();
        self.waiting = None;
        let handle = self.stream_handle().await?;
        // Entries the stream no longer has (its limits dropped them, or it was purged) cannot
        // be delivered: say so rather than wait for them or report a gap.
        let state = handle
            .get_info()
            .await
            .map_err(Error::nats("stream info"))?
            .state;
        if state.first_sequence > after + 1 && state.last_sequence > after {
            return Err(liteorm_replication::Error::BehindHorizon {
                applied: after,
                horizon: state.first_sequence - 1,
            }
            .into());
        }
        if let Err(err) = handle.delete_consumer(&self.durable).await {
            let missing = matches!(
                err.kind(),
                stream::ConsumerErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
            );
            if !missing {
                return Err(Error::nats("delete consumer")(err));
            }
        }
        let deliver_policy = if after == 0 {
            DeliverPolicy::All
        } else {
            // Stream sequence = log seq (see the type docs).
            DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            }
        };
        let consumer = handle
            .create_consumer(pull::Config {
                durable_name: Some(self.durable.clone()),
                description: Some(format!("liteorm replica {}", self.durable)),
                deliver_policy,
                ack_policy: AckPolicy::All,
                ack_wait: self.ack_wait,
                ..Default::default()
            })
            .await
            .map_err(Error::nats("create consumer"))?;
        tracing::debug!(consumer = %self.durable, start = after + 1, "consumer positioned");
        self.consumer = Some(consumer);
        Ok(())
    }

    /// One pull request without waiting: up to `limit` messages that are there, every one of
    /// them taken in.
    async fn pull(&mut self, after: u64, limit: usize) -> Result<()> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let connection = ConnectionWatch::new(&self.js);
        let request = consumer.fetch().max_messages(limit).messages().await;
        let mut batch: Batch = request.map_err(Error::nats("pull request"))?;
        let deadline = Instant::now() + self.request_timeout;
        let mut lost = std::pin::pin!(connection.lost());
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, batch.next()) => next,
                // A restarted server forgot the request: pull again rather than wait it out.
                () = lost.as_mut() => return Err(ConnectionWatch::error("pull")),
            };
            match next {
                Err(_elapsed) => return Err(pull_timed_out()),
                Ok(None) => return Ok(()),
                Ok(Some(Err(source))) => {
                    return Err(Error::Nats { op: "pull", source });
                }
                Ok(Some(Ok(message))) => self.take(message, after).await?,
            }
        }
    }

    async fn take(&mut self, message: jetstream::Message, after: u64) -> Result<()> {
        let stream_seq = message
            .info()
            .map_err(|e| Error::Malformed {
                stream_seq: 0,
                reason: format!("delivery without JetStream metadata: {e}"),
            })?
            .stream_sequence;
        let entry = wire::decode(message.headers.as_ref(), &message.payload, stream_seq)?;
        if stream_seq < entry.seq {
            // The consumer positions by stream sequence assuming seq n sits at position >= n;
            // an entry earlier than its seq means that assumption (and so positioning) broke.
            return Err(Error::ForeignMessage {
                stream: self.stream.name().to_owned(),
                stream_seq,
                expected: stream_seq,
                found: Some(entry.seq),
            });
        }
        if entry.seq <= after {
            // Already applied and committed: a redelivery, or a duplicate that reached the
            // stream. The replica would skip it too; it is acked with the next committed batch
            // (at once when its position is committed too), so it is not delivered again.
            tracing::debug!(
                seq = entry.seq,
                stream_seq,
                "skipping an entry the replica has"
            );
            self.skipped += 1;
            if stream_seq <= after {
                ack(&message, stream_seq).await;
            } else {
                self.held.push((stream_seq, message));
            }
            return Ok(());
        }
        self.ready.entry(entry.seq).or_insert(entry);
        self.held.push((stream_seq, message));
        Ok(())
    }
}

/// The open waiting pull request: the server delivers new entries to it until it expires.
struct Waiting {
    request: Batch,
    /// When it must have ended (its wait plus the request timeout).
    deadline: Instant,
    /// The connection it was sent on: a server that restarted since forgot it.
    connection: ConnectionWatch,
}

/// A pull request that got no answer within its wait plus the request timeout.
fn pull_timed_out() -> Error {
    Error::Nats {
        op: "pull",
        source: Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer to a pull request in time",
        )),
    }
}

/// Acks one delivery and, the policy being `All`, every one before it. A lost ack only means
/// more redeliveries, which the replica skips.
async fn ack(message: &jetstream::Message, stream_seq: u64) {
    if let Err(err) = message.ack().await {
        tracing::warn!(stream_seq, error = %err, "ack failed; the entries will be delivered again and skipped");
    }
}

#[async_trait]
impl ChangeSource for NatsSource {
    async fn fetch(
        &mut self,
        after: u64,
        limit: usize,
    ) -> liteorm_replication::Result<Vec<LogEntry>> {
        self.next_batch(after, limit).await.map_err(to_source_error)
    }

    async fn wait(&mut self, after: u64) -> liteorm_replication::Result<()> {
        self.wait_for_more(after).await.map_err(to_source_error)
    }
}

/// The replication crate's error for a transport failure (its own errors pass through).
fn to_source_error(err: Error) -> liteorm_replication::Error {
    match err {
        Error::Replication(inner) => inner,
        other => liteorm_replication::Error::Source(other.to_string()),
    }
}
