//! Crashes: a follower or publisher process SIGKILLed at random points, and the NATS server
//! itself killed and restarted mid-stream. Nothing is lost and nothing is applied twice.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use liteorm_nats::{ChangeStream, Follower, NatsSource, Publisher};
use liteorm_replication::{ChangeLog, Meta, Replica};
use liteorm_sqlite::SqliteSession;

use crate::migrations::state;
use crate::support::{
    NatsServer, content, db_file, db_with_schema, follower, record, record_many, spawn_follower,
    spawn_publisher, stream_state, wait_progress, work,
};

/// Runs the worker with `args` until it exits 0, SIGKILLing it after a random delay below
/// `max_delay` each time. Returns how often it was killed.
fn run_killing(args: &[String], max_delay: Duration) -> u32 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    println!("kill schedule seed: {seed}");
    let mut rng = seed | 1;
    let max_micros = u32::try_from(max_delay.as_micros()).unwrap();
    let mut kills = 0;
    for attempt in 0.. {
        assert!(attempt < 500, "the worker never finished");
        let mut child = Command::new(env!("CARGO_BIN_EXE_nats_worker"))
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // xorshift
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        std::thread::sleep(Duration::from_micros(u64::from(rng % max_micros)));
        if child.try_wait().unwrap().is_none() {
            // SAFETY: `child.id()` is the pid of a child we have not reaped yet.
            unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGKILL) };
            kills += 1;
        }
        let status = child.wait().unwrap();
        if status.success() {
            break;
        }
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the worker failed by itself: {status:?}"
        );
    }
    println!("worker killed {kills} times");
    kills
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Units of work with a schema migration after every 25 of them (an index created, or a column
/// added), so that kills land in batches with schema entries too; returns the last seq.
async fn record_with_migrations(log: &ChangeLog) -> u64 {
    for k in 0..12 {
        record_many(log, 25).await;
        let sql = if k % 2 == 0 {
            format!("CREATE INDEX item_qty_{k} ON item(qty)")
        } else {
            // Backfilled: see `migrations::MIGRATIONS`.
            format!(
                "ALTER TABLE item ADD COLUMN c{k} INTEGER DEFAULT {k}; UPDATE item SET c{k} = c{k}"
            )
        };
        log.migrate(Meta::actor("dba"), &sql).await.unwrap();
    }
    log.last_seq().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_mid_stream_resumes_exactly_once() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("killfollower").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    let last = record_with_migrations(&log).await;
    assert_eq!(last, 312);
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    assert_eq!(publisher.publish_pending().await.unwrap().published, last);

    let (replica_db, dir) = db_with_schema().await;
    drop(replica_db);
    let replica_path = db_file(dir.path());
    let url = server.url();
    let args = [
        "follow",
        &url,
        stream.db(),
        path_str(&replica_path),
        "replica",
        "4",
    ];
    let args = args.map(str::to_owned);
    let kills = tokio::task::spawn_blocking(move || run_killing(&args, Duration::from_millis(60)))
        .await
        .unwrap();
    assert!(kills > 0, "the worker was never killed mid-way");

    // An entry applied twice would have conflicted (each one increments a counter from its
    // old value), and a migration run twice would have failed (the index or column exists):
    // either makes the worker fail. A lost one would show in the schema or the content.
    let replica_db = SqliteSession::open(path_str(&replica_path)).await.unwrap();
    let replica = Replica::open(&replica_db).await.unwrap();
    assert_eq!(replica.last_applied().await.unwrap(), last);
    assert_eq!(state(&replica_db).await, state(&primary).await);
}

/// A migration that takes a while to run (it fills a table of 600 000 rows and indexes it),
/// deterministic, so that the primary and a replica end with the same rows.
const SLOW_MIGRATION: &str = "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT NOT NULL); \
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600000) \
    INSERT INTO big SELECT i, printf('%08d', i * 7919 % 1000003) FROM n; \
    CREATE INDEX big_v ON big(v)";

/// The follower's cursor in the replica file (0 before its state table exists).
async fn cursor_of(replica: &Path) -> u64 {
    let db = SqliteSession::open(path_str(replica)).await.unwrap();
    let rows = db
        .query(
            "SELECT last_seq FROM liteorm_replica WHERE name = 'default' \
             AND EXISTS (SELECT 1 FROM sqlite_schema WHERE name = 'liteorm_replica')",
            &[],
        )
        .await
        .unwrap_or_default();
    db.close().await;
    rows.first().map_or(0, |row| {
        u64::try_from(row.try_get::<i64>(0).unwrap()).unwrap()
    })
}

/// Not left to chance as in the test above: the follower is SIGKILLed while it runs a schema
/// entry (the first of its batch, and slow), then restarted. The kill rolls the migration back
/// with the cursor (no `big` table, cursor before it), and the restart runs it exactly once (a
/// second run would fail: the table exists) and converges with the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_while_it_runs_a_schema_entry_runs_it_exactly_once() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("killschema").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 8).await;
    let schema_seq = log
        .migrate(Meta::actor("dba"), SLOW_MIGRATION)
        .await
        .unwrap();
    assert_eq!(schema_seq, 9);
    record_many(&log, 8).await;
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    assert_eq!(publisher.publish_pending().await.unwrap().published, 17);

    let (replica_db, dir) = db_with_schema().await;
    drop(replica_db);
    let replica_path = db_file(dir.path());
    // Batches of 4 entries: 1-4, 5-8, then 9 (the migration) to 12.
    let args = [
        "follow",
        &server.url(),
        stream.db(),
        path_str(&replica_path),
        "replica",
        "4",
    ]
    .map(str::to_owned);
    let mut child = Command::new(env!("CARGO_BIN_EXE_nats_worker"))
        .args(&args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while cursor_of(&replica_path).await < schema_seq - 1 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the follower made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the follower exited early"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Into the migration's batch, well before it can be done.
    tokio::time::sleep(Duration::from_millis(150)).await;
    // SAFETY: `child.id()` is the pid of a child we have not reaped yet.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the follower finished the migration's batch within 150 ms: {status:?}"
    );
    assert_eq!(
        cursor_of(&replica_path).await,
        schema_seq - 1,
        "killed in the middle of the migration's batch"
    );
    let replica_db = SqliteSession::open(path_str(&replica_path)).await.unwrap();
    let big = replica_db
        .query("SELECT 1 FROM sqlite_schema WHERE name = 'big'", &[])
        .await
        .unwrap();
    assert!(big.is_empty(), "the killed migration left its table behind");
    replica_db.close().await;

    // Restarted, it runs the migration once and the rest of the log.
    let status = Command::new(env!("CARGO_BIN_EXE_nats_worker"))
        .args(&args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let replica_db = SqliteSession::open(path_str(&replica_path)).await.unwrap();
    let replica = Replica::open(&replica_db).await.unwrap();
    assert_eq!(replica.last_applied().await.unwrap(), 17);
    assert_eq!(state(&replica_db).await, state(&primary).await);
    let count = |db: SqliteSession| async move {
        db.query("SELECT count(*), sum(length(v)) FROM big", &[])
            .await
            .unwrap()[0]
            .values()
            .to_vec()
    };
    assert_eq!(count(replica_db).await, count(primary).await);
}

/// Entries the killed publisher publishes: enough that an uninterrupted run takes well over the
/// 60 ms kill delay (300 once did, before reading the log ran inline), so the worker is killed
/// at least once.
const PUBLISHED: u64 = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_mid_stream_publishes_every_entry_once() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("killpublisher").unwrap();
    let (primary, dir) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, PUBLISHED).await;
    let primary_path = db_file(dir.path());
    let url = server.url();
    let args = ["publish", &url, stream.db(), path_str(&primary_path), "8"];
    let args = args.map(str::to_owned);
    let kills = tokio::task::spawn_blocking(move || run_killing(&args, Duration::from_millis(60)))
        .await
        .unwrap();
    assert!(kills > 0, "the worker was never killed mid-way");

    // Exactly the log, in order: position n holds seq n, and nothing else is there.
    let handle = js.get_stream(stream.name()).await.unwrap();
    let state = handle.cached_info().state.clone();
    assert_eq!(
        (state.messages, state.last_sequence),
        (PUBLISHED, PUBLISHED)
    );
    for seq in [1, 2, PUBLISHED / 2, PUBLISHED - 1, PUBLISHED] {
        let message = handle.get_raw_message(seq).await.unwrap();
        let entry =
            liteorm_nats::fuzzing::decode(Some(&message.headers), &message.payload, seq).unwrap();
        assert_eq!(entry.seq, seq);
    }
    let publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    assert_eq!(publisher.backlog().await.unwrap(), 0);

    let (replica_db, _d2) = db_with_schema().await;
    let mut follower = follower(&js, &stream, &replica_db, "replica").await;
    let done = follower.catch_up().await.unwrap();
    assert_eq!((done.applied, done.last_seq), (PUBLISHED, PUBLISHED));
    assert_eq!(follower.source().redeliveries_skipped(), 0);
    assert_eq!(content(&replica_db).await, content(&primary).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_and_restarted_mid_stream_loses_nothing() {
    let mut server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("restart").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    let publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap()
        .batch_size(16)
        .poll_interval(Duration::from_millis(10));
    let publishing = spawn_publisher(publisher);
    let (replica_db, _d2) = db_with_schema().await;
    let follower = follower(&js, &stream, &replica_db, "replica")
        .await
        .batch_size(8);
    let mut progress = follower.progress();
    let following = spawn_follower(follower);

    record_many(&log, 100).await;
    wait_progress(&mut progress, 30, "before the kill").await;
    server.kill();
    // The primary keeps working while the server is down; its log is the outbox.
    record_many(&log, 100).await;
    server.restart();
    record_many(&log, 100).await;
    wait_progress(&mut progress, 300, "after the restart").await;

    let (publisher, published) = publishing.stop().await;
    assert_eq!(published.unwrap().published_seq, 300);
    assert_eq!(publisher.backlog().await.unwrap(), 0);
    let (_, followed) = following.stop().await;
    assert_eq!(followed.unwrap(), 300);
    assert_eq!(content(&replica_db).await, content(&primary).await);
    assert_eq!(stream_state(&js, &stream).await, (300, 300));
}

/// A follower waiting on its long poll when the server restarts does not sit out that pull's
/// deadline: the restarted server forgot the request and would never answer it. The follower
/// notices the lost connection and pulls again. Its long poll and request timeout are 60 s each
/// here, so a follower that waited them out would miss the 30 s `wait_progress` allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_waiting_on_a_restarted_server_pulls_again_at_once() {
    let mut server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("repoll").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    let publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap()
        .poll_interval(Duration::from_millis(10));
    let publishing = spawn_publisher(publisher);
    let (replica_db, _d2) = db_with_schema().await;
    let source = NatsSource::new(js.clone(), &stream, "replica")
        .unwrap()
        .long_poll(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(60));
    let replica = Replica::open(&replica_db).await.unwrap();
    let follower = Follower::new(replica, source).await.unwrap();
    let mut progress = follower.progress();
    let following = spawn_follower(follower);

    record(&log, work(0)).await;
    wait_progress(&mut progress, 1, "before the restart").await;
    // The follower is in its long poll by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    record(&log, work(1)).await;
    wait_progress(&mut progress, 2, "after the restart").await;

    let (_, published) = publishing.stop().await;
    // The publisher reports what the server acknowledged to it: the restart can swallow the
    // acknowledgement of entry 2 while the entry itself reached the stream (the follower has
    // it), and the publisher is stopped before its retry learns so.
    let published = published.unwrap().published_seq;
    assert!((1..=2).contains(&published), "published_seq {published}");
    let (_, followed) = following.stop().await;
    assert_eq!(followed.unwrap(), 2);
    assert_eq!(content(&replica_db).await, content(&primary).await);
    // Each entry is in the stream once, and the next publisher counts both as published.
    assert_eq!(stream_state(&js, &stream).await, (2, 2));
    let mut next = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    let caught_up = next.publish_pending().await.unwrap();
    assert_eq!((caught_up.published_seq, caught_up.published), (2, 0));
    assert_eq!(stream_state(&js, &stream).await, (2, 2));
}
