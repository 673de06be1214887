//! The publisher after a crash between the server's ack and its cursor write: server-side
//! deduplication, the sequence check past the window, and the replica's seq check.

use std::time::Duration;

use liteorm_nats::{ChangeStream, Error, Publisher, async_nats};
use liteorm_replication::ChangeLog;
use liteorm_sqlite::SqliteSession;

use crate::support::{
    NatsServer, Published, content, db_with_schema, follower, published, record_many, stream_state,
};

/// The outbox state a publisher leaves when it is killed after the server acknowledged
/// entries up to the log's end but before it recorded more than `seq`.
async fn crash_before_cursor_write(primary: &SqliteSession, stream: &ChangeStream, seq: i64) {
    primary
        .execute(
            "UPDATE liteorm_outbox SET published_seq = ? WHERE stream = ?",
            &[seq.into(), stream.name().into()],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_crash_is_dropped_by_the_server() {
    let server = NatsServer::start();
    let stream = ChangeStream::new("dedup").unwrap();
    let Published {
        js,
        primary,
        log,
        publisher,
        dir: _d,
    } = published(&server, &stream, 20).await;
    let (replica_db, _d2) = db_with_schema().await;
    let mut follower = follower(&js, &stream, &replica_db, "replica").await;
    assert_eq!(follower.catch_up().await.unwrap().last_seq, 20);

    crash_before_cursor_write(&primary, &stream, 12).await;
    drop(publisher);
    let mut restarted = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    assert_eq!(restarted.published_seq().await.unwrap(), 12);
    let report = restarted.publish_pending().await.unwrap();
    // First line of defence: the server recognised every re-send by its Nats-Msg-Id.
    assert_eq!(
        (
            report.published,
            report.duplicates,
            report.already_in_stream
        ),
        (0, 8, 0)
    );
    assert_eq!(report.published_seq, 20);
    assert_eq!(stream_state(&js, &stream).await, (20, 20));

    record_many(&log, 5).await;
    assert_eq!(restarted.publish_pending().await.unwrap().published, 5);
    let done = follower.catch_up().await.unwrap();
    assert_eq!((done.applied, done.last_seq), (5, 25));
    assert_eq!(content(&replica_db).await, content(&primary).await);
    assert_eq!(follower.source().redeliveries_skipped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_the_duplicate_window_is_refused_by_the_sequence_check() {
    let server = NatsServer::start();
    let js = server.js().await;
    let window = Duration::from_millis(300);
    let stream = ChangeStream::new("window")
        .unwrap()
        .duplicate_window(window);
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 10).await;
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    assert_eq!(publisher.publish_pending().await.unwrap().published, 10);
    // The server forgets the message ids...
    tokio::time::sleep(window * 4).await;
    crash_before_cursor_write(&primary, &stream, 4).await;
    let mut restarted = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    let report = restarted.publish_pending().await.unwrap();
    // ...but refuses entry 5 because the stream does not end at 4; the publisher finds 5..=10
    // in the stream and moves its cursor over them.
    assert_eq!(
        (
            report.published,
            report.duplicates,
            report.already_in_stream
        ),
        (0, 0, 6)
    );
    assert_eq!(report.published_seq, 10);
    assert_eq!(stream_state(&js, &stream).await, (10, 10));
    let (replica_db, _d2) = db_with_schema().await;
    let mut follower = follower(&js, &stream, &replica_db, "replica").await;
    assert_eq!(follower.catch_up().await.unwrap().last_seq, 10);
    assert_eq!(content(&replica_db).await, content(&primary).await);
}

/// A small window (7 in flight, batches of 3): the refusal of the first re-sent entry drops the
/// six sent after it, the cursor moves over what the stream has, and new entries then go out
/// pipelined over several batches, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_the_window_drops_what_was_sent_after_it() {
    let server = NatsServer::start();
    let window = Duration::from_millis(300);
    let stream = ChangeStream::new("inflight")
        .unwrap()
        .duplicate_window(window);
    let Published {
        js,
        primary,
        log,
        publisher: _publisher,
        dir: _d,
    } = published(&server, &stream, 40).await;
    tokio::time::sleep(window * 4).await;
    crash_before_cursor_write(&primary, &stream, 10).await;
    let mut restarted = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap()
        .batch_size(3)
        .max_in_flight(7);
    let report = restarted.publish_pending().await.unwrap();
    assert_eq!(
        (
            report.published,
            report.duplicates,
            report.already_in_stream,
            report.published_seq
        ),
        (0, 0, 30, 40)
    );
    record_many(&log, 20).await;
    let report = restarted.publish_pending().await.unwrap();
    assert_eq!((report.published, report.published_seq), (20, 60));
    assert_eq!(restarted.published_seq().await.unwrap(), 60);
    assert_eq!(stream_state(&js, &stream).await, (60, 60));
    let (replica_db, _d2) = db_with_schema().await;
    let mut follower = follower(&js, &stream, &replica_db, "replica").await;
    assert_eq!(follower.catch_up().await.unwrap().last_seq, 60);
    assert_eq!(content(&replica_db).await, content(&primary).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_that_reach_the_stream_are_skipped_by_the_replica() {
    let server = NatsServer::start();
    let js = server.js().await;
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 10).await;
    // The real messages of entries 1..=10, published properly to a first stream.
    let clean = ChangeStream::new("clean").unwrap();
    let mut publisher = Publisher::new(&primary, js.clone(), clean.clone())
        .await
        .unwrap();
    assert_eq!(publisher.publish_pending().await.unwrap().published, 10);
    let clean = js.get_stream(clean.name()).await.unwrap();

    // A second stream written without this crate's guards (an old publisher re-sending after
    // the duplicate window, a replay tool): entries 3 and 8 arrive twice.
    let stream = ChangeStream::new("dupes").unwrap();
    stream.ensure(&js).await.unwrap();
    for (i, seq) in [1, 2, 3, 4, 5, 6, 7, 8, 3, 8, 9, 10]
        .into_iter()
        .enumerate()
    {
        let message = clean.get_raw_message(seq).await.unwrap();
        // The entry's own headers, without the publisher's guards: with a new message id the
        // server cannot tell a copy, and there is no expected-last-sequence check.
        let mut headers = async_nats::HeaderMap::new();
        for (name, values) in message.headers.iter() {
            if AsRef::<str>::as_ref(name).starts_with("Liteorm-") {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert("Nats-Msg-Id", format!("copy-{i}"));
        js.publish_with_headers(stream.subject().to_owned(), headers, message.payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let (replica_db, _d2) = db_with_schema().await;
    // One entry per pull, so each copy arrives after the replica committed the original.
    let mut follower = follower(&js, &stream, &replica_db, "replica")
        .await
        .batch_size(1);
    let done = follower.catch_up().await.unwrap();
    // Second line of defence: the copies are skipped, not applied twice (the counters would be
    // off, or the replayed update would conflict).
    assert_eq!((done.applied, done.last_seq), (10, 10));
    assert_eq!(follower.source().redeliveries_skipped(), 2);
    assert_eq!(content(&replica_db).await, content(&primary).await);

    // And a publisher refuses to build on a stream that is not a copy of the log.
    record_many(&log, 2).await;
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap();
    let err = publisher.publish_pending().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ForeignMessage {
                stream_seq: 12,
                expected: 12,
                found: Some(10),
                ..
            }
        ),
        "{err}"
    );
}

/// Polls the stream until it holds `count` messages (bounded).
async fn wait_for_messages(js: &async_nats::jetstream::Context, stream: &ChangeStream, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Not found until the publisher creates it.
        if let Ok(mut handle) = js.get_stream(stream.name()).await
            && handle.info().await.unwrap().state.messages >= count
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream did not reach {count} messages"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_writes_its_cursor_once_per_interval_and_a_crash_in_between_only_resends() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("deferred").unwrap();
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 5).await;
    let publisher = |interval| {
        let (primary, js, stream) = (primary.clone(), js.clone(), stream.clone());
        async move {
            Publisher::new(&primary, js, stream)
                .await
                .unwrap()
                .batch_size(2)
                .max_in_flight(2)
                .poll_interval(Duration::from_millis(10))
                .cursor_interval(interval)
        }
    };

    // Batches 1-2, 3-4, 5, one in flight at a time: the first acknowledgements taken in (of 1,
    // or of 1 and 2) are written at once, the others wait for the interval.
    let mut running = publisher(Duration::from_secs(3600)).await;
    let task = tokio::spawn(async move { running.run(std::future::pending()).await });
    wait_for_messages(&js, &stream, 5).await;
    // A crash: the task ends without returning.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let restarted = publisher(Duration::from_secs(3600)).await;
    let written = restarted.published_seq().await.unwrap();
    assert!((1..=2).contains(&written), "cursor {written}");

    // The next publisher re-sends the rest of 1..=5, which the server drops: nothing is lost or
    // doubled.
    record_many(&log, 3).await;
    let running = crate::support::spawn_publisher(restarted);
    wait_for_messages(&js, &stream, 8).await;
    let (restarted, report) = running.stop().await;
    let report = report.unwrap();
    assert_eq!(
        (report.published, report.duplicates, report.published_seq),
        (3, 5 - written, 8)
    );
    // Written on the way out.
    assert_eq!(restarted.published_seq().await.unwrap(), 8);
    assert_eq!(restarted.backlog().await.unwrap(), 0);

    // Idle, a due cursor is written without waiting for shutdown.
    let running = crate::support::spawn_publisher(publisher(Duration::from_millis(50)).await);
    record_many(&log, 2).await;
    wait_for_messages(&js, &stream, 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let watcher = publisher(Duration::ZERO).await;
    while watcher.published_seq().await.unwrap() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle publisher did not write its cursor"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await.1.unwrap();

    let (replica_db, _d2) = db_with_schema().await;
    let mut follower = follower(&js, &stream, &replica_db, "replica").await;
    assert_eq!(follower.catch_up().await.unwrap().last_seq, 10);
    assert_eq!(content(&replica_db).await, content(&primary).await);
    assert_eq!(stream_state(&js, &stream).await, (10, 10));
}

/// Entries handed over on the wake-up channel are sent as they are only when they follow what
/// was sent: entries logged before the publisher started and entries of a second writer that
/// does not signal (so the channel skips their seqs) are read from the log, and position `n`
/// of the stream holds entry `n`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_entries_are_sent_only_when_they_follow_what_was_sent() {
    let server = NatsServer::start();
    let js = server.js().await;
    let stream = ChangeStream::new("handover").unwrap();
    stream.ensure(&js).await.unwrap();
    let (primary, _d) = db_with_schema().await;
    let quiet = ChangeLog::open(&primary).await.unwrap();
    record_many(&quiet, 5).await;
    let (wake, woken) = tokio::sync::mpsc::channel(64);
    let signalling = ChangeLog::open(&primary).await.unwrap().publish_to(wake);
    let publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .unwrap()
        .wake_on(woken)
        .poll_interval(Duration::from_millis(20));
    let publishing = crate::support::spawn_publisher(publisher);
    for round in 0..6 {
        record_many(&signalling, 3).await;
        if round % 2 == 1 {
            record_many(&quiet, 2).await;
        }
    }
    let last = quiet.last_seq().await.unwrap();
    assert_eq!(last, 5 + 6 * 3 + 3 * 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stream_state(&js, &stream).await.1 < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everything was published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, report) = publishing.stop().await;
    assert_eq!(report.unwrap().published_seq, last);
    assert_eq!(stream_state(&js, &stream).await, (last, last));
    let handle = js.get_stream(stream.name()).await.unwrap();
    let logged = quiet
        .entries(&liteorm_replication::LogFilter::all())
        .await
        .unwrap();
    for entry in logged {
        let message = handle.get_raw_message(entry.seq).await.unwrap();
        let sent =
            liteorm_nats::fuzzing::decode(Some(&message.headers), &message.payload, entry.seq)
                .unwrap();
        assert_eq!(sent, entry);
    }
    let (replica_db, _d2) = db_with_schema().await;
    let mut follower = follower(&js, &stream, &replica_db, "replica").await;
    assert_eq!(follower.catch_up().await.unwrap().last_seq, last);
    assert_eq!(content(&replica_db).await, content(&primary).await);
}
