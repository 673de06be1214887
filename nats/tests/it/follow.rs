//! Followers: several replicas converge, a poison entry stops only its replica, gaps are refused.

use std::time::Duration;

use liteorm_nats::{Applied, ChangeStream, Error, Lag, Publisher};
use liteorm_replication::{ChangeLog, ConflictPolicy, Meta};

use crate::support::{
    NatsServer, Published, content, db_with_schema, follower, published, record, record_many,
    spawn_follower, spawn_publisher, stream_state, wait_progress,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_followers_converge_to_the_primary() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("converge").unwrap();
    let (primary, _d) = db_with_schema().await;
    // The publisher runs in the writer's process here: woken by every commit, not by polling.
    let (wake, woken) = tokio::sync::mpsc::channel(64);
    let log = ChangeLog::open(&primary).await.unwrap().publish_to(wake);
    let publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap()
        .wake_on(woken)
        .poll_interval(Duration::from_secs(5));
    let publishing = spawn_publisher(publisher);

    let mut replicas = Vec::new();
    for i in 0..3 {
        let (db, dir) = db_with_schema().await;
        let follower = follower(&js, &stream, &db, &format!("replica-{i}")).await;
        let progress = follower.progress();
        let applied = follower.applied();
        assert_eq!(*applied.borrow(), Applied { seq: 0, at: None });
        replicas.push((db, dir, progress, applied, spawn_follower(follower)));
    }

    let started = std::time::Instant::now();
    record_many(&log, 150).await;
    // Reverts and rollbacks travel too (their kind and reference are headers).
    log.revert(150, ConflictPolicy::abort(), Meta::actor("auditor"))
        .await
        .unwrap();
    log.rollback_to(148, ConflictPolicy::abort(), Meta::actor("auditor"))
        .await
        .unwrap();
    record_many(&log, 50).await;
    let last = log.last_seq().await.unwrap();
    assert_eq!(last, 202);

    let expected = content(&primary).await;
    for (i, (db, _dir, progress, applied, running)) in replicas.into_iter().enumerate() {
        let mut progress = progress;
        wait_progress(&mut progress, last, &format!("replica-{i}")).await;
        // The last commit, timed when it returned: after the first entry was recorded, and
        // no later than now.
        let commit = *applied.borrow();
        assert_eq!(commit.seq, last);
        let at = commit.at.expect("a commit time");
        assert!(started < at && at <= std::time::Instant::now());
        let (follower, result) = running.stop().await;
        assert_eq!(
            result.unwrap(),
            last,
            "graceful shutdown returns the cursor"
        );
        assert_eq!(content(&db).await, expected, "replica-{i}");
        let lag = Lag::measure(&js, &stream, follower.replica())
            .await
            .unwrap();
        assert_eq!((lag.stream_last_seq, lag.behind()), (last, 0));
        // Every entry arrived once: nothing had to be skipped or repositioned.
        assert_eq!(follower.source().redeliveries_skipped(), 0);
    }
    let (publisher, report) = publishing.stop().await;
    assert_eq!(report.unwrap().published_seq, last);
    assert_eq!(publisher.backlog().await.unwrap(), 0);
    assert_eq!(stream_state(&js, &stream).await, (last, last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_stops_only_its_follower_naming_the_seq() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("poison").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    let publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap()
        .poll_interval(Duration::from_millis(20));
    let publishing = spawn_publisher(publisher);

    let mut replicas = Vec::new();
    for i in 0..3 {
        let (db, dir) = db_with_schema().await;
        if i == 1 {
            // A row the primary will insert too: entry 3 conflicts here, under the default
            // abort policy.
            record_free(&db, "INSERT INTO item VALUES (3, 'local', 0)").await;
        }
        let follower = follower(&js, &stream, &db, &format!("replica-{i}")).await;
        let progress = follower.progress();
        replicas.push((db, dir, progress, spawn_follower(follower)));
    }
    for id in 1..=5 {
        record(
            &log,
            &format!("INSERT INTO item VALUES ({id}, 'x{id}', {id})"),
        )
        .await;
    }
    record_many(&log, 20).await;
    let last = log.last_seq().await.unwrap();

    let expected = content(&primary).await;
    for (i, (db, _dir, mut progress, running)) in replicas.into_iter().enumerate() {
        if i == 1 {
            let (follower, result) = running.stop().await;
            let err = result.unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Replication(liteorm_replication::Error::Stopped { seq: 3, .. })
                ),
                "{err}"
            );
            assert!(err.to_string().contains("seq 3"), "{err}");
            assert_eq!(follower.replica().last_applied().await.unwrap(), 2);
            assert_eq!(*progress.borrow_and_update(), 2);
        } else {
            wait_progress(&mut progress, last, &format!("replica-{i}")).await;
            let (_, result) = running.stop().await;
            assert_eq!(result.unwrap(), last);
            assert_eq!(content(&db).await, expected, "replica-{i}");
        }
    }
    publishing.stop().await.1.unwrap();
}

/// Runs SQL on a replica outside of replication.
async fn record_free(db: &liteorm_sqlite::SqliteSession, sql: &str) {
    use liteorm_core::Session;
    db.execute_batch(sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_stream_is_refused_with_both_seqs() {
    let server = NatsServer::start();
    let stream = ChangeStream::new("gap").unwrap();
    let Published {
        js,
        primary: _primary,
        log: _log,
        publisher: _publisher,
        dir: _d,
    } = published(&server, &stream, 10).await;
    // Entry 5 disappears from the stream (an operator deleted it, or it expired).
    let handle = js.get_stream(stream.name()).await.unwrap();
    assert!(handle.delete_message(5).await.unwrap());

    let (db, _d2) = db_with_schema().await;
    let mut follower = follower(&js, &stream, &db, "replica").await;
    let err = follower.catch_up().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Replication(liteorm_replication::Error::Gap {
                expected: 5,
                got: 6
            })
        ),
        "{err}"
    );
    assert_eq!(follower.replica().last_applied().await.unwrap(), 4);
    assert_eq!(
        follower.source().repositions(),
        1,
        "the hole was first taken for lost deliveries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_cut_short_loses_no_delivery() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("cutshort").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 1).await;
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    publisher.publish_pending().await.unwrap();
    let mut source = liteorm_nats::NatsSource::new(js.clone(), &stream, "replica")
        .unwrap()
        .long_poll(Duration::from_secs(5));
    let first = source.next_batch(0, 16).await.unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);

    // The caller stops waiting (a shutdown, a select): the request stays with the source.
    let cut = tokio::time::timeout(Duration::from_millis(100), source.wait_for_more(1)).await;
    assert!(cut.is_err(), "nothing new was published");
    record_many(&log, 3).await;
    publisher.publish_pending().await.unwrap();

    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seqs.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "got only {seqs:?}");
        source.wait_for_more(1).await.unwrap();
        let after = seqs.last().copied().unwrap_or(1);
        seqs.extend(
            source
                .next_batch(after, 16)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq),
        );
    }
    assert_eq!(seqs, [2, 3, 4]);
    // None went missing (the source would have repositioned its consumer) or came twice.
    assert_eq!(source.repositions(), 0);
    assert_eq!(source.redeliveries_skipped(), 0);
}

/// The acks a core subscriber on `$JS.ACK.<stream>.<consumer>.>` has seen within `settle`.
async fn acks_seen(acks: &mut liteorm_nats::async_nats::Subscriber, settle: Duration) -> usize {
    use futures::StreamExt as _;
    let mut seen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(settle, acks.next()).await {
        seen += 1;
    }
    seen
}

/// One ack per committed batch (the consumer's policy is `All`), a consumer with explicit acks
/// left by an earlier version replaced on first use, and a crash between a commit and its ack
/// only re-delivering entries the replica already has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ack_covers_a_committed_batch() {
    use liteorm_nats::async_nats::jetstream::consumer::{self, AckPolicy};

    let server = NatsServer::start();
    let stream = ChangeStream::new("ackall").unwrap();
    let Published {
        js,
        primary,
        log: _log,
        publisher: _publisher,
        dir: _d,
    } = published(&server, &stream, 40).await;
    // What an earlier version made: explicit acks, stopped cleanly at the replica's cursor (0).
    let handle = js.get_stream(stream.name()).await.unwrap();
    handle
        .create_consumer(consumer::pull::Config {
            durable_name: Some("replica".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut acks = js
        .client()
        .subscribe(format!("$JS.ACK.{}.replica.>", stream.name()))
        .await
        .unwrap();
    js.client().flush().await.unwrap();

    let (db, _d2) = db_with_schema().await;
    let replica = liteorm_replication::Replica::open(&db).await.unwrap();
    let mut source = liteorm_nats::NatsSource::new(js.clone(), &stream, "replica").unwrap();
    let first = source.next_batch(0, 16).await.unwrap();
    assert_eq!(first.first().map(|e| e.seq), Some(1));
    assert_eq!(replica.apply_entries(&first).await.unwrap(), 16);
    // The process dies here: committed, not acked.
    drop(source);
    let info = handle.consumer_info("replica").await.unwrap();
    assert_eq!(info.config.ack_policy, AckPolicy::All, "replaced");
    assert_eq!(info.ack_floor.stream_sequence, 0);
    assert_eq!(acks_seen(&mut acks, Duration::from_millis(50)).await, 0);

    let mut follower = crate::support::follower(&js, &stream, &db, "replica")
        .await
        .batch_size(10);
    assert_eq!(follower.catch_up().await.unwrap().last_seq, 40);
    assert_eq!(content(&db).await, content(&primary).await);
    // Entries 17..=40 in batches of 10, 10 and 4: an ack each, not one per entry.
    assert_eq!(acks_seen(&mut acks, Duration::from_millis(200)).await, 3);
    let info = handle.consumer_info("replica").await.unwrap();
    assert_eq!(info.ack_floor.stream_sequence, 40);
    assert_eq!(info.num_ack_pending, 0);
    // Nothing was applied twice: the replica's cursor, not the consumer, positioned it.
    assert_eq!(follower.source().redeliveries_skipped(), 0);
}

/// A stream that an earlier version wrote in the header format (versions 2 and 3, a schema
/// entry included) is still followed, and a current publisher carries on after it in the
/// framed format (version 4): re-sent old entries are dropped as duplicates, the follower reads
/// both formats, and the stream's last seq is read from either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_written_in_the_header_format_is_still_followed() {
    use liteorm_nats::async_nats::jetstream::message::PublishMessage;
    use liteorm_replication::LogFilter;

    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("oldwire").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 4).await;
    log.migrate(Meta::actor("dba"), "ALTER TABLE item ADD COLUMN note TEXT")
        .await
        .unwrap();
    record_many(&log, 3).await;
    // What a publisher of the header format sent for entries 1..=6.
    stream.ensure(&js).await.unwrap();
    for entry in log.entries(&LogFilter::all().seqs(1, 6)).await.unwrap() {
        let (headers, payload) = liteorm_nats::fuzzing::encode_headers(&entry);
        let message = PublishMessage::build()
            .headers(headers)
            .payload(payload)
            .message_id(entry.seq.to_string())
            .expected_last_sequence(entry.seq - 1);
        let ack = js
            .send_publish(stream.subject().to_owned(), message)
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.sequence, entry.seq);
    }
    let (db, _d2) = db_with_schema().await;
    let mut follower = follower(&js, &stream, &db, "replica").await;
    assert_eq!(follower.lag().await.unwrap().stream_last_seq, 6);
    assert_eq!(follower.catch_up().await.unwrap().last_seq, 6);

    record_many(&log, 5).await;
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    let report = publisher.publish_pending().await.unwrap();
    assert_eq!((report.duplicates, report.published), (6, 7));
    assert_eq!(follower.lag().await.unwrap().stream_last_seq, 13);
    assert_eq!(follower.catch_up().await.unwrap().last_seq, 13);
    assert_eq!(content(&db).await, content(&primary).await);
    assert_eq!(stream_state(&js, &stream).await, (13, 13));
}
