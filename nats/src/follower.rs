//! The follower: a replica kept up to date from the stream, with shutdown, progress and lag.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use futures::FutureExt as _;
use liteorm_replication::{CatchUp, Replica};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::backoff::Backoff;
use crate::{ChangeStream, Error, NatsSource, Result};

/// A commit of the follower: the replica's last applied seq, and when that commit returned.
/// With the primary's commit time of an entry (`LogEntry::committed_at_ms`, or a time the
/// application keeps) it gives the entry's replication lag without the delay of waking a task
/// to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The replica's last applied (committed) seq.
    pub seq: u64,
    /// When the commit that applied it returned (`None` for the value a follower starts with).
    pub at: Option<std::time::Instant>,
}

/// How far a replica is behind its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// The seq of the newest entry in the stream.
    pub stream_last_seq: u64,
    /// The replica's last applied (committed) seq.
    pub applied_seq: u64,
}

impl Lag {
    /// Entries in the stream that the replica has not applied.
    pub fn behind(&self) -> u64 {
        self.stream_last_seq.saturating_sub(self.applied_seq)
    }

    /// Measures the lag of `replica` on `stream` (usable while a [`Follower`] runs elsewhere).
    pub async fn measure(
        js: &jetstream::Context,
        stream: &ChangeStream,
        replica: &Replica,
    ) -> Result<Lag> {
        let handle = js
            .get_stream(stream.name())
            .await
            .map_err(Error::nats("get stream"))?;
        Ok(Lag {
            stream_last_seq: stream.last_seq(&handle).await?,
            applied_seq: replica.last_applied().await?,
        })
    }
}

/// A [`Replica`] following a [`NatsSource`]: applies batches in seq order under the replica's
/// conflict policy, each in one transaction with the cursor, and acks them after commit.
///
/// A conflict under an abort policy stops this follower with
/// [`Error::Replication`]`(`[`Stopped`](liteorm_replication::Error::Stopped)` { seq, .. })`,
/// naming the entry, with everything before it committed; other replicas are not affected.
pub struct Follower {
    replica: Replica,
    source: NatsSource,
    batch: usize,
    stall: Duration,
    progress: watch::Sender<u64>,
    applied: watch::Sender<Applied>,
}

impl Follower {
    /// A follower applying `source`'s entries to `replica` (reads the replica's cursor).
    pub async fn new(replica: Replica, source: NatsSource) -> Result<Self> {
        let applied = replica.last_applied().await?;
        Ok(Follower {
            replica,
            source,
            batch: 256,
            stall: Duration::from_secs(30),
            progress: watch::channel(applied).0,
            applied: watch::channel(Applied {
                seq: applied,
                at: None,
            })
            .0,
        })
    }

    /// How many entries to apply per transaction at most (default 256; at least 1).
    pub fn batch_size(mut self, entries: usize) -> Self {
        self.batch = entries.max(1);
        self
    }

    /// How long [`Follower::catch_up`] waits for an entry the stream has before giving up
    /// (default 30 s).
    pub fn stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// The replica's last applied seq, updated after every commit.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// [`Follower::progress`] with the time of each commit, taken as it returned.
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// Publishes that the replica has applied everything up to `seq` (committed just now).
    fn committed(&self, seq: u64) {
        let at = Some(std::time::Instant::now());
        self.applied.send_replace(Applied { seq, at });
        self.progress.send_replace(seq);
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The source.
    pub fn source(&self) -> &NatsSource {
        &self.source
    }

    /// How far the replica is behind the stream.
    pub async fn lag(&mut self) -> Result<Lag> {
        Ok(Lag {
            stream_last_seq: self.source.stream_last_seq().await?,
            applied_seq: self.replica.last_applied().await?,
        })
    }

    /// Applies entries until the replica has everything the stream had when called, then acks
    /// and returns. Fails with the first error, NATS ones included, or when no entry arrives for
    /// the stall timeout.
    pub async fn catch_up(&mut self) -> Result<CatchUp> {
        let span = self.span();
        self.catch_up_inner().instrument(span).await
    }

    async fn catch_up_inner(&mut self) -> Result<CatchUp> {
        let target = self.source.stream_last_seq().await?;
        let start = self.replica.last_applied().await?;
        let mut last = start;
        let mut progressed_at = Instant::now();
        while last < target {
            let now = self.step(last).await?;
            if now > last {
                last = now;
                progressed_at = Instant::now();
                continue;
            }
            if progressed_at.elapsed() > self.stall {
                return Err(Error::Nats {
                    op: "catch up",
                    source: format!(
                        "no entry after seq {last} arrived for {:?}, though the stream has \
                         entries up to {target}",
                        self.stall
                    )
                    .into(),
                });
            }
            self.source.wait_for_more(last).await?;
        }
        self.source.ack_through(last).await?;
        tracing::info!(last_seq = last, applied = last - start, "caught up");
        Ok(CatchUp {
            applied: last - start,
            last_seq: last,
        })
    }

    /// Follows the stream until `shutdown` completes, then acks what was committed and returns
    /// the last applied seq. A batch that is being applied when `shutdown` completes is
    /// finished first. NATS failures (server down, timeouts) are retried with a backoff; a
    /// replica error (conflict under the policy, gap, schema mismatch) or a malformed message
    /// stops it with that error.
    ///
    /// For a process, `shutdown` is typically a SIGTERM future or a cancellation token.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()> + Send) -> Result<u64> {
        let span = self.span();
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(&mut self, shutdown: impl Future<Output = ()> + Send) -> Result<u64> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut last = self.replica.last_applied().await?;
        tracing::info!(last_seq = last, "follower started");
        let mut backoff = Backoff::new();
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                break;
            }
            let outcome = match self.step(last).await {
                Ok(now) if now > last => {
                    last = now;
                    backoff.reset();
                    continue;
                }
                Ok(_) => tokio::select! {
                    () = shutdown.as_mut() => break,
                    waited = self.source.wait_for_more(last) => waited,
                },
                Err(err) => Err(err),
            };
            match outcome {
                Ok(()) => {}
                Err(err) if err.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in = ?delay, "following failed; retrying");
                    tokio::select! {
                        () = shutdown.as_mut() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(err) => {
                    // What committed before the failing entry stays; ack it on the way out.
                    if let Ok(applied) = self.replica.last_applied().await {
                        self.committed(applied);
                        let _ = self.source.ack_through(applied).await;
                    }
                    tracing::error!(error = %err, "follower stopped");
                    return Err(err);
                }
            }
        }
        if let Err(err) = self.source.ack_through(last).await {
            // Unacked entries are delivered again and skipped: no harm beyond the redelivery.
            tracing::warn!(error = %err, "could not ack on shutdown");
        }
        tracing::info!(last_seq = last, "follower shut down");
        Ok(last)
    }

    /// Fetches one batch after `after` and applies it; returns the new cursor (`after` when
    /// nothing has arrived).
    async fn step(&mut self, after: u64) -> Result<u64> {
        let batch = self.source.next_batch(after, self.batch).await?;
        if batch.is_empty() {
            return Ok(after);
        }
        let last = self.replica.apply_entries(&batch).await?;
        self.committed(last);
        tracing::debug!(last_seq = last, entries = batch.len(), "batch applied");
        Ok(last)
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "liteorm_nats_follower",
            stream = %self.source.stream().name(),
            consumer = %self.source.consumer_name(),
        )
    }
}
