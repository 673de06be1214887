//! liteorm's side: transactions recorded with `ChangeLog::record` on a primary, published by a
//! `Publisher` woken by `ChangeLog::publish_to`, applied by a `Follower` on a durable consumer.

use std::time::{Duration, Instant};

use liteorm_core::Session;
use liteorm_nats::{ChangeStream, Follower, NatsSource, Publisher, async_nats};
use liteorm_replication::{ChangeLog, Error, Meta, Replica};
use liteorm_sqlite::SqliteSession;
use sqlx::sqlite::SqliteSynchronous;

use crate::{BoxError, Run, SCHEMA, Stamps, Synchronous, expected_content, row};

/// A file database with liteorm's defaults (`SqliteSession::open`: WAL, 5 s busy timeout,
/// foreign keys) and the run's `synchronous`.
async fn open(path: &str, synchronous: Synchronous) -> Result<SqliteSession, BoxError> {
    let synchronous = match synchronous {
        Synchronous::Normal => SqliteSynchronous::Normal,
        Synchronous::Full => SqliteSynchronous::Full,
    };
    let options = SqliteSession::options(path)?.synchronous(synchronous);
    Ok(SqliteSession::connect_with(options, SqliteSession::pool_options()).await?)
}

/// Records transaction `i` (one row) through `log`; returns its seq.
async fn record(log: &ChangeLog, i: u64) -> Result<u64, BoxError> {
    let (id, v) = row(i)?;
    let seq = log
        .record(Meta::actor("bench"), move |s| async move {
            s.execute("INSERT INTO t VALUES (?, ?)", &[id.into(), v.into()])
                .await?;
            Ok::<_, Error>(())
        })
        .await?
        .ok_or("the transaction changed nothing")?;
    Ok(seq)
}

/// Checks that `db`'s `t` holds what `txns` transactions wrote.
pub(crate) async fn check_content(db: &SqliteSession, txns: u64) -> Result<(), BoxError> {
    let rows = db.query("SELECT count(*), sum(v) FROM t", &[]).await?;
    let row = rows.first().ok_or("no row from count(*)")?;
    let found: (i64, i64) = (row.try_get(0)?, row.try_get(1).unwrap_or(0));
    let expected = expected_content(txns)?;
    if found != expected {
        return Err(
            format!("content check failed: replica has {found:?}, expected {expected:?}").into(),
        );
    }
    Ok(())
}

/// The baseline: the same transactions recorded with nothing replicating them.
pub(crate) async fn record_only(txns: u64, synchronous: Synchronous) -> Result<Run, BoxError> {
    let dir = tempfile::tempdir()?;
    let primary = open(
        &dir.path().join("primary.db").display().to_string(),
        synchronous,
    )
    .await?;
    primary.execute_batch(SCHEMA).await?;
    let log = ChangeLog::open(&primary).await?;
    let start = Instant::now();
    for i in 0..txns {
        record(&log, i).await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    check_content(&primary, txns).await?;
    primary.close().await;
    Ok(Run {
        source_tps: Some(txns as f64 / seconds),
        end_to_end: None,
        lags: Vec::new(),
    })
}

/// When the transactions are recorded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Load {
    /// While the publisher and the follower run: back to back, or at a rate per second.
    Live(Option<f64>),
    /// All of them before the publisher and the follower start (`drain`): the time is the
    /// transport's and the replica's alone, as the raw pipeline's.
    Backlog,
}

/// Runs one scenario on fresh databases and a fresh stream `LITEORM_<name>`.
pub(crate) async fn scenario(
    js: &async_nats::jetstream::Context,
    name: &str,
    txns: u64,
    load: Load,
    synchronous: Synchronous,
) -> Result<Run, BoxError> {
    let dir = tempfile::tempdir()?;
    let path = |file: &str| dir.path().join(file).display().to_string();
    let primary = open(&path("primary.db"), synchronous).await?;
    let replica_db = open(&path("replica.db"), synchronous).await?;
    for db in [&primary, &replica_db] {
        db.execute_batch(SCHEMA).await?;
    }
    let stream = ChangeStream::new(name)?;
    let (wake, woken) = tokio::sync::mpsc::channel(1024);
    let log = ChangeLog::open(&primary).await?;
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone()).await?;
    let recorded = Stamps::new(txns)?;
    let log = if load == Load::Backlog {
        // Nobody drains the wake-up channel yet: record without it.
        for i in 0..txns {
            record(&log, i).await?;
        }
        log
    } else {
        publisher = publisher.wake_on(woken);
        log.publish_to(wake)
    };
    // Set up before the timer, as raw's stream and consumer are: the stream, the durable
    // consumer (a first pull, which finds nothing yet), and the publisher's first report of
    // the consumers' ack floors (then every 10 s).
    stream.ensure(js).await?;
    let mut source = NatsSource::new(js.clone(), &stream, "bench")?;
    if !source.next_batch(0, 1).await?.is_empty() {
        return Err("a fresh stream had entries".into());
    }
    publisher.report_consumers().await?;
    let mut follower = Follower::new(Replica::open(&replica_db).await?, source).await?;

    // Commit time on the primary and on the replica, per seq. The follower times each of its
    // commits as it returns (as raw's follower does after its COMMIT); this task only copies
    // the times, so its own wake-ups do not count in the lag.
    let applied = Stamps::new(txns)?;
    let mut progress = follower.applied();
    let stamper = tokio::spawn({
        let applied = applied.clone();
        async move {
            let mut seen = 0;
            while progress.changed().await.is_ok() {
                let commit = *progress.borrow_and_update();
                if let Some(at) = commit.at {
                    applied.stamp(seen + 1, commit.seq, at);
                    seen = commit.seq;
                }
                if commit.seq >= txns {
                    break;
                }
            }
        }
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop_signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut publishing = tokio::spawn({
        let stopped = stopped.clone();
        async move { publisher.run(stop_signal(stopped)).await }
    });
    let mut following = tokio::spawn({
        let stopped = stopped.clone();
        async move { follower.run(stop_signal(stopped)).await }
    });

    let start = Instant::now();
    let (count, rate) = match load {
        Load::Live(rate) => (txns, rate),
        Load::Backlog => {
            recorded.stamp(1, txns, start);
            (0, None)
        }
    };
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    for i in 0..count {
        if let Some(interval) = interval {
            let due = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let seq = record(&log, i).await?;
        recorded.stamp(seq, seq, Instant::now());
    }
    let recorded_in = start.elapsed();
    // Either the follower applies everything, or one of the loops stopped with an error.
    tokio::select! {
        stamped = stamper => stamped?,
        published = &mut publishing => return Err(format!("publisher stopped: {published:?}").into()),
        followed = &mut following => return Err(format!("follower stopped: {followed:?}").into()),
        () = tokio::time::sleep(Duration::from_secs(60)) => {
            let state = diagnose(js, &stream, &primary, &replica_db).await;
            return Err(format!("the follower did not apply everything within 60 s: {state}").into());
        }
    }
    let total = start.elapsed();
    stop.send_replace(true);
    publishing.await??;
    following.await??;
    check_content(&replica_db, txns).await?;
    primary.close().await;
    replica_db.close().await;
    js.delete_stream(stream.name()).await?;
    Ok(Run {
        source_tps: match load {
            Load::Live(_) => Some(txns as f64 / recorded_in.as_secs_f64()),
            Load::Backlog => None,
        },
        end_to_end: Some(total),
        lags: recorded.lags_to(&applied),
    })
}

/// Where each side is, to tell which one stalled.
async fn diagnose(
    js: &async_nats::jetstream::Context,
    stream: &ChangeStream,
    primary: &SqliteSession,
    replica_db: &SqliteSession,
) -> String {
    let one = |db: &SqliteSession, sql: &'static str| {
        let db = db.clone();
        async move {
            match db.query(sql, &[]).await {
                Ok(rows) => rows
                    .first()
                    .map_or("-".into(), |r| format!("{:?}", r.values())),
                Err(e) => e.to_string(),
            }
        }
    };
    let log = one(primary, "SELECT max(seq) FROM liteorm_changes").await;
    let outbox = one(primary, "SELECT published_seq FROM liteorm_outbox").await;
    let replica = one(replica_db, "SELECT last_seq FROM liteorm_replica").await;
    let (stream_state, consumer) = match js.get_stream(stream.name()).await {
        Ok(handle) => {
            let consumer = match handle.consumer_info("bench").await {
                Ok(c) => format!(
                    "delivered {:?} ack_floor {:?} ack_pending {} pending {} waiting {} redelivered {}",
                    c.delivered.stream_sequence,
                    c.ack_floor.stream_sequence,
                    c.num_ack_pending,
                    c.num_pending,
                    c.num_waiting,
                    c.num_redelivered
                ),
                Err(e) => e.to_string(),
            };
            (
                format!("{:?}", handle.cached_info().state.last_sequence),
                consumer,
            )
        }
        Err(e) => (e.to_string(), String::new()),
    };
    format!(
        "log {log}, outbox {outbox}, stream last {stream_state}, replica {replica}, consumer {consumer}"
    )
}
