//! Schema migrations and retention across machines: a primary migrating while a local replica
//! and a NATS follower follow, pruning while they do, a snapshot taken after pruning, and a
//! follower whose next entry the stream no longer has.

use std::time::Duration;

use liteorm_core::{Session, Value};
use liteorm_nats::{ChangeStream, Error, Publisher, snapshot_named};
use liteorm_replication::{ChangeLog, LogTableSource, Meta, Replica};
use liteorm_sqlite::SqliteSession;

use crate::support::{
    NatsServer, content, db_with_schema, follower, record, record_many, spawn_follower,
    spawn_publisher, wait_progress,
};

/// The migrations the tests run, in order, between units of work from `record_many` (which
/// only name the columns they change, so they work under every one of these schemas).
pub(crate) const MIGRATIONS: &[&str] = &[
    // The backfill stores the default in older rows (see the README: some SQLite builds
    // record a later update of such a row as changing the column from NULL).
    "ALTER TABLE item ADD COLUMN note TEXT DEFAULT 'none'; UPDATE item SET note = note",
    "CREATE TABLE tag(id INTEGER PRIMARY KEY, label TEXT); CREATE INDEX item_name ON item(name)",
    "ALTER TABLE counter RENAME COLUMN n TO hits",
    "DROP TABLE tag",
];

/// The user schema (liteorm's own tables left out), then every row of `item` and `counter`.
pub(crate) async fn state(db: &dyn Session) -> (Vec<Vec<Value>>, Vec<Vec<Value>>) {
    let schema = db
        .query(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema \
             WHERE tbl_name NOT LIKE 'liteorm_%' ORDER BY type, name",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.into_values())
        .collect();
    (schema, content(db).await)
}

/// Waits until `replicas` cursors are known and all at `seq` or beyond; returns the slowest.
async fn slowest_cursor(log: &ChangeLog, replicas: usize, seq: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cursors = log.replica_cursors().await.unwrap();
        let slowest = cursors.iter().map(|c| c.applied_seq).min().unwrap_or(0);
        if cursors.len() == replicas && slowest >= seq {
            return slowest;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cursors did not reach seq {seq}: {cursors:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn migrate(log: &ChangeLog, sql: &str) -> u64 {
    log.migrate(Meta::actor("dba"), sql).await.unwrap()
}

/// Units of work against the schema after `migrations` of [`MIGRATIONS`] ran (the counter
/// column is renamed by the third).
async fn work(log: &ChangeLog, migrations: usize, count: u64) {
    if migrations < 3 {
        record_many(log, count).await;
        return;
    }
    for i in 0..count {
        let sql = if i % 2 == 0 {
            "UPDATE counter SET hits = hits + 1 WHERE id = 1; INSERT INTO item(name, qty) VALUES ('m', 1)"
        } else {
            "UPDATE counter SET hits = hits + 1 WHERE id = 2; DELETE FROM item WHERE id = (SELECT min(id) FROM item)"
        };
        record(log, sql).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_migrating_and_pruning_while_a_local_replica_and_a_follower_follow() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("migrating").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    let publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap()
        .batch_size(4)
        .poll_interval(Duration::from_millis(10))
        .report_interval(Duration::from_millis(50));
    let publishing = spawn_publisher(publisher);
    let (follower_db, _d2) = db_with_schema().await;
    let follower = follower(&js, &stream, &follower_db, "eu-1")
        .await
        .batch_size(3);
    let mut progress = follower.progress();
    let following = spawn_follower(follower);
    let (local_db, _d3) = db_with_schema().await;
    let local = Replica::open(&local_db).await.unwrap().batch_size(5);
    // Registered before it first fetches, so that no prune runs ahead of it.
    log.report_cursor("local", 0).await.unwrap();
    let mut source = LogTableSource::new(&primary)
        .report_as("local")
        .poll_interval(Duration::from_millis(10));
    let local_follow = {
        let local = local.clone();
        tokio::spawn(async move { local.follow(&mut source).await })
    };

    let mut pruned = 0;
    for (done, sql) in MIGRATIONS.iter().enumerate() {
        work(&log, done, 6).await;
        let seq = migrate(&log, sql).await;
        // Once the local replica, the follower (its ack floor, reported by the publisher) and
        // the publisher are past the migration, prune what all of them have: never more. They
        // go on following meanwhile.
        let safe = slowest_cursor(&log, 3, seq).await;
        match log.prune(safe).await {
            Ok(p) => pruned = p.horizon,
            Err(err) => panic!("pruning up to the slowest cursor {safe}: {err}"),
        }
    }
    work(&log, MIGRATIONS.len(), 6).await;
    let last = log.last_seq().await.unwrap();
    assert_eq!(last, 34);
    wait_progress(&mut progress, last, "follower").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while local.last_applied().await.unwrap() < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "local replica stuck"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pruned > 0, "nothing was ever pruned while following");

    let (_, followed) = following.stop().await;
    assert_eq!(followed.unwrap(), last);
    let (mut publisher, published) = publishing.stop().await;
    assert_eq!(published.unwrap().published_seq, last);
    local_follow.abort();
    // One more fetch reports the local replica's final cursor.
    let mut source = LogTableSource::new(&primary).report_as("local");
    assert_eq!(local.catch_up(&mut source).await.unwrap().applied, 0);
    let expected = state(&primary).await;
    assert_eq!(state(&follower_db).await, expected);
    assert_eq!(state(&local_db).await, expected);
    // The follower acked everything on shutdown: its ack floor is the last seq.
    assert_eq!(publisher.report_consumers().await.unwrap(), 1);
    let cursors = log.replica_cursors().await.unwrap();
    let names: Vec<(&str, u64)> = cursors
        .iter()
        .map(|c| (c.name.as_str(), c.applied_seq))
        .collect();
    assert!(names.contains(&("nats:eu-1", last)), "{names:?}");
    assert!(
        names.contains(&("publisher:LITEORM_migrating", last)),
        "{names:?}"
    );
    assert_eq!(log.prune(last).await.unwrap().horizon, last);
    log.verify().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_after_pruning_follows_every_later_migration() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("snapmigrate").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    record_many(&log, 5).await;
    migrate(&log, MIGRATIONS[0]).await;
    record_many(&log, 5).await;
    publisher.publish_pending().await.unwrap();
    let pruned = log.prune(log.last_seq().await.unwrap()).await.unwrap();
    assert_eq!((pruned.entries, pruned.horizon), (11, 11));

    let dir = tempfile::tempdir().unwrap();
    let (nats_path, local_path) = (dir.path().join("nats.db"), dir.path().join("local.db"));
    assert_eq!(
        snapshot_named(&primary, &nats_path, "eu-1").await.unwrap(),
        11
    );
    assert_eq!(snapshot(&primary, &local_path).await, 11);
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(1) {
        migrate(&log, sql).await;
        work(&log, done + 1, 3).await;
    }
    publisher.publish_pending().await.unwrap();
    let last = log.last_seq().await.unwrap();

    let nats_db = SqliteSession::open(nats_path.to_str().unwrap())
        .await
        .unwrap();
    let replica = Replica::open_named(&nats_db, "eu-1").await.unwrap();
    let source = liteorm_nats::NatsSource::new(js.clone(), &stream, "eu-1").unwrap();
    let mut follower = liteorm_nats::Follower::new(replica, source).await.unwrap();
    let done = follower.catch_up().await.unwrap();
    assert_eq!((done.applied, done.last_seq), (last - 11, last));

    let local_db = SqliteSession::open(local_path.to_str().unwrap())
        .await
        .unwrap();
    let local = Replica::open(&local_db).await.unwrap();
    let done = local
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap();
    assert_eq!(done.last_seq, last);

    let expected = state(&primary).await;
    assert_eq!(state(&nats_db).await, expected);
    assert_eq!(state(&local_db).await, expected);
}

async fn snapshot(primary: &SqliteSession, path: &std::path::Path) -> u64 {
    liteorm_nats::snapshot(primary, path).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_next_entry_the_stream_dropped_is_told_to_bootstrap() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("dropped").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 5).await;
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    publisher.publish_pending().await.unwrap();
    // What a stream limit (max_age, max_msgs) does to old entries: gone from the stream.
    let handle = js.get_stream(stream.name()).await.unwrap();
    handle.purge().sequence(4).await.unwrap();

    let (replica_db, _d2) = db_with_schema().await;
    let mut follower = follower(&js, &stream, &replica_db, "late").await;
    let err = follower.catch_up().await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Replication(liteorm_replication::Error::BehindHorizon {
                applied: 0,
                horizon: 3
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("snapshot"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(follower.replica().last_applied().await.unwrap(), 0);
}
