//! The raw JetStream baseline: the same one-row changesets, published by a tuned async-nats
//! client (publishes pipelined, acknowledgements awaited in batches by another task) and applied
//! by a raw follower (a pull consumer's message stream, each fetched batch applied with plain
//! `sqlite3changeset_apply` in one transaction, then acknowledged once with `AckPolicy::All`).
//! The changesets are captured before the timer, or ([`Source::Recorded`], as liteorm records
//! its transactions while they are replicated) recorded live on a raw primary.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use liteorm_core::Session;
use liteorm_nats::ChangeStream;
use liteorm_nats::async_nats::jetstream::{self, consumer};
use liteorm_sqlite::SqliteSession;

use crate::ffi::{Param, RawDb};
use crate::{BoxError, Run, SCHEMA, Stamps, Synchronous, row};

/// Messages per pull request and per replica transaction, as liteorm's `Follower` default.
const BATCH: usize = 256;

/// Publishes whose acknowledgement has not been awaited yet, at most.
const IN_FLIGHT: usize = 1024;

/// The changesets of transactions `0..txns` (one row each, as liteorm records them), captured
/// once with `liteorm_changeset::capture` on a scratch database with the same table.
pub(crate) async fn capture(txns: u64) -> Result<Vec<Bytes>, BoxError> {
    let db = SqliteSession::open_in_memory().await?;
    db.execute_batch(SCHEMA).await?;
    let mut changesets = Vec::with_capacity(usize::try_from(txns)?);
    for i in 0..txns {
        let (id, v) = row(i)?;
        let changes = liteorm_changeset::capture(&db, &["t"], move |s| async move {
            s.execute("INSERT INTO t VALUES (?, ?)", &[id.into(), v.into()])
                .await?;
            Ok::<_, liteorm_changeset::Error>(())
        })
        .await?;
        changesets.push(Bytes::copy_from_slice(changes.as_bytes()));
    }
    db.close().await;
    Ok(changesets)
}

/// Where the raw side's changesets come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Captured before the timer: the transport and the replica alone.
    Captured,
    /// Recorded live, each on its turn, on a raw primary: `BEGIN IMMEDIATE`, a session object
    /// on `t`, the insert, `sqlite3session_changeset`, the log row, `COMMIT`, all with
    /// statements prepared once (the SQLite work of liteorm's `ChangeLog::record`, less its
    /// chain hash, about 0.2 µs), then published. The lag then runs from that commit, as
    /// liteorm's does.
    Recorded,
}

/// The raw primary's change log (the columns of liteorm's `liteorm_changes`).
const LOG: &str = "CREATE TABLE log(seq INTEGER PRIMARY KEY, committed_at INTEGER NOT NULL, \
     actor TEXT, reason TEXT, tables TEXT NOT NULL, kind TEXT NOT NULL, ref_seq INTEGER, \
     blob BLOB NOT NULL)";

/// Opens a raw database at `path` with liteorm's settings and the table.
fn open(path: &str, synchronous: Synchronous, extra: &str) -> Result<RawDb, BoxError> {
    let db = RawDb::open(path)?;
    db.exec(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={}; PRAGMA foreign_keys=ON; {SCHEMA}; {extra}",
        match synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    ))?;
    Ok(db)
}

/// Runs one scenario on a fresh replica and a fresh stream `LITEORM_<name>` (liteorm's stream
/// settings): every changeset back to back, or at `rate` per second; `source` says whether the
/// changesets are `changesets` or recorded live.
pub(crate) async fn scenario(
    js: &jetstream::Context,
    name: &str,
    changesets: &[Bytes],
    rate: Option<f64>,
    source: Source,
    synchronous: Synchronous,
) -> Result<Run, BoxError> {
    let txns = u64::try_from(changesets.len())?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("replica.db").display().to_string();
    let replica = open(&path, synchronous, "")?;
    let primary = match source {
        Source::Captured => None,
        Source::Recorded => Some(open(
            &dir.path().join("primary.db").display().to_string(),
            synchronous,
            LOG,
        )?),
    };
    let mut statements = match &primary {
        None => None,
        Some(db) => Some((
            db.prepare("INSERT INTO t VALUES (?, ?)")?,
            db.prepare(
                "INSERT INTO log(seq, committed_at, actor, reason, tables, kind, ref_seq, blob) \
                 VALUES (?, ?, 'bench', NULL, ',t,', 'change', NULL, ?)",
            )?,
        )),
    };
    let stream = ChangeStream::new(name)?;
    let handle = js.get_or_create_stream(stream.config()).await?;
    let consumer: jetstream::consumer::PullConsumer = handle
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await?;

    let published = Stamps::new(txns)?;
    let applied = Stamps::new(txns)?;
    let following = tokio::spawn({
        let applied = applied.clone();
        async move {
            let mut done = 0;
            let mut batch = Vec::with_capacity(BATCH);
            while done < txns {
                let first = messages.next().await.ok_or("the message stream ended")??;
                batch.push(first);
                while batch.len() < BATCH {
                    match messages.next().now_or_never() {
                        Some(Some(message)) => batch.push(message?),
                        _ => break,
                    }
                }
                replica.exec("BEGIN IMMEDIATE")?;
                for message in &batch {
                    replica.apply(&message.payload)?;
                }
                replica.exec("COMMIT")?;
                let now = Instant::now();
                let (oldest, last) = batch.first().zip(batch.last()).ok_or("an empty batch")?;
                applied.stamp(
                    oldest.info()?.stream_sequence,
                    last.info()?.stream_sequence,
                    now,
                );
                // AckPolicy::All: acknowledging the last one acknowledges the batch.
                last.ack().await?;
                done += u64::try_from(batch.len())?;
                batch.clear();
            }
            Ok::<_, BoxError>(replica)
        }
    });
    let (acks, mut pending) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let acking = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while pending.recv_many(&mut batch, BATCH).await > 0 {
            for ack in batch.drain(..) {
                let ack: jetstream::context::PublishAckFuture = ack;
                ack.await?;
            }
        }
        Ok::<_, BoxError>(())
    });

    let start = Instant::now();
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    for (i, changeset) in (0_u64..).zip(changesets) {
        if let Some(interval) = interval {
            let due = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let changeset = match (&primary, &mut statements) {
            (Some(db), Some((insert, append))) => {
                let (id, v) = row(i)?;
                db.exec("BEGIN IMMEDIATE")?;
                let recorded = db.capture("t", || insert.run(&[Param::Int(id), Param::Int(v)]))?;
                let at = i64::try_from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_millis(),
                )?;
                let seq = i64::try_from(i + 1)?;
                append.run(&[Param::Int(seq), Param::Int(at), Param::Blob(&recorded)])?;
                db.exec("COMMIT")?;
                Bytes::from(recorded)
            }
            _ => changeset.clone(),
        };
        published.stamp(i + 1, i + 1, Instant::now());
        let ack = js.publish(stream.subject().to_owned(), changeset).await?;
        acks.send(ack).await?;
    }
    let published_in = start.elapsed();
    drop(acks);
    let replica = tokio::time::timeout(Duration::from_secs(60), following)
        .await
        .map_err(|_| "the raw follower did not apply everything within 60 s")???;
    let total = start.elapsed();
    acking.await??;
    drop(replica);
    drop(statements);
    drop(primary);
    // Untimed: the replica holds every row, checked through liteorm.
    let check = SqliteSession::open(&path).await?;
    crate::liteorm::check_content(&check, txns).await?;
    check.close().await;
    js.delete_stream(stream.name()).await?;
    Ok(Run {
        source_tps: Some(txns as f64 / published_in.as_secs_f64()),
        end_to_end: Some(total),
        lags: published.lags_to(&applied),
    })
}
