//! The audit log and one-way replication: recording in the same transaction, audit queries,
//! reverts, and replicas that apply every entry exactly once, also across SIGKILL.

use std::process::Command;
use std::time::Duration;

use liteorm_changeset::{ConflictAction, ConflictKind};
use liteorm_core::{Session, Value};
use liteorm_replication::{
    ChangeLog, ChannelSource, ConflictPolicy, EntryKind, Error, LogEntry, LogFilter,
    LogTableSource, Meta, Replica,
};
use liteorm_sqlite::SqliteSession;

use crate::support::{dump, file_db};

const SCHEMA: &str = "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER); \
    CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL); \
    INSERT INTO counter VALUES (1, 0), (2, 0)";

async fn db_with_schema() -> (SqliteSession, tempfile::TempDir) {
    let (db, dir) = file_db().await;
    db.execute_batch(SCHEMA).await.unwrap();
    (db, dir)
}

/// Records `sql` as one unit of work by `actor`.
async fn record(log: &ChangeLog, actor: &str, sql: &'static str) -> Option<u64> {
    log.record(Meta::actor(actor).reason(sql), move |s| async move {
        s.execute_batch(sql).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn record_appends_the_changeset_and_metadata_in_the_same_transaction() {
    let (db, _dir) = db_with_schema().await;
    let log = ChangeLog::open(&db).await.unwrap();
    let seq = record(
        &log,
        "ada",
        "INSERT INTO item VALUES (1, 'pen', 3); UPDATE counter SET n = 1 WHERE id = 1",
    )
    .await;
    assert_eq!(seq, Some(1));
    let entry = log.entry(1).await.unwrap();
    assert_eq!(entry.actor.as_deref(), Some("ada"));
    assert_eq!(entry.kind, EntryKind::Change);
    let mut tables = entry.tables.clone();
    tables.sort();
    assert_eq!(tables, ["counter", "item"]);
    assert_eq!(entry.changeset.changes().unwrap().len(), 2);
    assert!(
        !entry.tables.iter().any(|t| t == "liteorm_changes"),
        "the log table is never recorded"
    );
    // The next unit of work's changeset does not contain the first one's log row either.
    record(&log, "ada", "UPDATE item SET qty = 4 WHERE id = 1").await;
    let second = log.entry(2).await.unwrap();
    assert_eq!(second.tables, ["item"]);
}

#[tokio::test]
async fn a_failed_unit_of_work_writes_neither_data_nor_log() {
    let (db, _dir) = db_with_schema().await;
    let log = ChangeLog::open(&db).await.unwrap();
    let err = log
        .record(Meta::actor("ada"), |s| async move {
            s.execute("INSERT INTO item VALUES (1, 'pen', 3)", &[])
                .await?;
            s.execute("INSERT INTO item VALUES (1, 'dup', 3)", &[])
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    assert!(dump(&db, "item").await.is_empty());
    assert_eq!(log.last_seq().await.unwrap(), 0);
}

#[tokio::test]
async fn a_unit_of_work_that_changes_nothing_is_not_logged() {
    let (db, _dir) = db_with_schema().await;
    let log = ChangeLog::open(&db).await.unwrap();
    assert_eq!(
        record(&log, "ada", "UPDATE counter SET n = n WHERE id = 1").await,
        None
    );
    assert_eq!(log.last_seq().await.unwrap(), 0);
}

#[tokio::test]
async fn entries_can_be_queried_by_seq_time_table_and_actor() {
    let (db, _dir) = db_with_schema().await;
    let log = ChangeLog::open(&db).await.unwrap();
    record(&log, "ada", "INSERT INTO item VALUES (1, 'pen', 3)").await;
    record(&log, "bob", "UPDATE counter SET n = 5 WHERE id = 2").await;
    record(&log, "ada", "UPDATE item SET qty = 1 WHERE id = 1").await;
    let seqs = |entries: Vec<LogEntry>| entries.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(log.entries(&LogFilter::all()).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        seqs(log.entries(&LogFilter::all().actor("ada")).await.unwrap()),
        [1, 3]
    );
    assert_eq!(
        seqs(
            log.entries(&LogFilter::all().table("counter"))
                .await
                .unwrap()
        ),
        [2]
    );
    assert_eq!(
        seqs(log.entries(&LogFilter::all().seqs(2, 3)).await.unwrap()),
        [2, 3]
    );
    let first = log.entry(1).await.unwrap().committed_at_ms;
    assert_eq!(
        seqs(
            log.entries(&LogFilter::all().since_ms(first).until_ms(i64::MAX))
                .await
                .unwrap()
        ),
        [1, 2, 3]
    );
    assert!(
        log.entries(&LogFilter::all().until_ms(first - 1))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(log.entry(9).await, Err(Error::NoSuchEntry(9))));
}

#[tokio::test]
async fn entries_limit_keeps_the_first_matches_in_seq_order() {
    let (db, _dir) = db_with_schema().await;
    let log = ChangeLog::open(&db).await.unwrap();
    record(&log, "ada", "INSERT INTO item VALUES (1, 'pen', 3)").await;
    record(&log, "bob", "UPDATE counter SET n = 5 WHERE id = 2").await;
    record(&log, "ada", "UPDATE item SET qty = 1 WHERE id = 1").await;
    record(&log, "ada", "UPDATE item SET qty = 2 WHERE id = 1").await;
    let seqs = |entries: Vec<LogEntry>| entries.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    let query = |filter: LogFilter| {
        let log = log.clone();
        async move { seqs(log.entries(&filter).await.unwrap()) }
    };
    assert_eq!(query(LogFilter::all().limit(2)).await, [1, 2]);
    // The limit applies after the other conditions.
    assert_eq!(query(LogFilter::all().actor("ada").limit(2)).await, [1, 3]);
    // Paging on from the last seq returned; an open upper bound.
    assert_eq!(
        query(LogFilter::all().seqs(3, u64::MAX).limit(5)).await,
        [3, 4]
    );
    assert!(query(LogFilter::all().limit(0)).await.is_empty());
}

#[tokio::test]
async fn revert_undoes_one_entry_and_is_itself_logged() {
    let (db, _dir) = db_with_schema().await;
    let log = ChangeLog::open(&db).await.unwrap();
    record(&log, "ada", "INSERT INTO item VALUES (1, 'pen', 3)").await;
    record(&log, "bob", "UPDATE counter SET n = 7 WHERE id = 2").await;
    let outcome = log
        .revert(2, ConflictPolicy::abort(), Meta::actor("auditor"))
        .await
        .unwrap();
    assert_eq!(outcome.logged_as, Some(3));
    assert_eq!(outcome.reports[0].1.applied, 1);
    assert_eq!(
        dump(&db, "counter").await[1],
        [Value::Integer(2), Value::Integer(0)]
    );
    assert_eq!(dump(&db, "item").await.len(), 1, "entry 1 is untouched");
    let entry = log.entry(3).await.unwrap();
    assert_eq!(entry.kind, EntryKind::Revert(2));
    assert_eq!(entry.actor.as_deref(), Some("auditor"));
}

#[tokio::test]
async fn revert_of_a_row_changed_later_is_a_conflict_not_an_overwrite() {
    let (db, _dir) = db_with_schema().await;
    let log = ChangeLog::open(&db).await.unwrap();
    record(&log, "ada", "UPDATE counter SET n = 1 WHERE id = 1").await;
    record(&log, "bob", "UPDATE counter SET n = 2 WHERE id = 1").await;
    let err = log
        .revert(1, ConflictPolicy::abort(), Meta::actor("auditor"))
        .await
        .unwrap_err();
    let Error::Changeset(liteorm_changeset::Error::Aborted { conflict }) = &err else {
        panic!("{err}")
    };
    assert_eq!(conflict.kind, ConflictKind::Data);
    assert_eq!(
        conflict.conflicting_row.as_ref().unwrap()[1],
        Value::Integer(2)
    );
    assert_eq!(
        dump(&db, "counter").await[0][1],
        Value::Integer(2),
        "nothing changed"
    );
    assert_eq!(
        log.last_seq().await.unwrap(),
        2,
        "a failed revert is not logged"
    );
    // With a policy that forces it, the revert wins.
    let forced = ConflictPolicy::abort().on(ConflictKind::Data, ConflictAction::Replace);
    let outcome = log.revert(1, forced, Meta::actor("auditor")).await.unwrap();
    assert_eq!(outcome.reports[0].1.replaced, 1);
    // The report names each conflict and what was done about it.
    let conflicts = &outcome.reports[0].1.conflict_log;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].0.kind, ConflictKind::Data);
    assert_eq!(conflicts[0].1, ConflictAction::Replace);
    assert_eq!(dump(&db, "counter").await[0][1], Value::Integer(0));
}

#[tokio::test]
async fn rollback_to_a_seq_restores_the_state_after_it() {
    let (db, _dir) = db_with_schema().await;
    let log = ChangeLog::open(&db).await.unwrap();
    record(&log, "ada", "INSERT INTO item VALUES (1, 'pen', 3)").await;
    let after_first = (dump(&db, "item").await, dump(&db, "counter").await);
    record(
        &log,
        "ada",
        "UPDATE item SET qty = 9 WHERE id = 1; INSERT INTO item VALUES (2, 'ink', 1)",
    )
    .await;
    record(
        &log,
        "bob",
        "DELETE FROM item WHERE id = 1; UPDATE counter SET n = n + 1",
    )
    .await;
    let outcome = log
        .rollback_to(1, ConflictPolicy::abort(), Meta::actor("ops"))
        .await
        .unwrap();
    assert_eq!(
        outcome
            .reports
            .iter()
            .map(|(seq, _)| *seq)
            .collect::<Vec<_>>(),
        [3, 2]
    );
    assert_eq!(
        (dump(&db, "item").await, dump(&db, "counter").await),
        after_first
    );
    assert_eq!(log.entry(4).await.unwrap().kind, EntryKind::Rollback(1));
}

#[tokio::test]
async fn replica_catches_up_from_the_log_table_exactly_once() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    for _ in 0..20 {
        record(&log, "ada", "UPDATE counter SET n = n + 1 WHERE id = 1; INSERT INTO item(name, qty) VALUES ('x', 1)").await;
    }
    let (replica_db, _d2) = db_with_schema().await;
    let replica = Replica::open(&replica_db).await.unwrap().batch_size(7);
    let mut source = LogTableSource::new(&primary);
    let done = replica.catch_up(&mut source).await.unwrap();
    assert_eq!((done.applied, done.last_seq), (20, 20));
    assert_eq!(
        dump(&replica_db, "counter").await,
        dump(&primary, "counter").await
    );
    assert_eq!(
        dump(&replica_db, "item").await,
        dump(&primary, "item").await
    );
    // Redelivery of entries it already has is skipped, not applied twice.
    let again = log.entries(&LogFilter::all()).await.unwrap();
    assert_eq!(replica.apply_entries(&again).await.unwrap(), 20);
    assert_eq!(replica.catch_up(&mut source).await.unwrap().applied, 0);
    assert_eq!(
        dump(&replica_db, "counter").await,
        dump(&primary, "counter").await
    );
}

#[tokio::test]
async fn replica_refuses_a_gap() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    for _ in 0..3 {
        record(&log, "ada", "UPDATE counter SET n = n + 1 WHERE id = 1").await;
    }
    let entries = log.entries(&LogFilter::all()).await.unwrap();
    let (replica_db, _d2) = db_with_schema().await;
    let replica = Replica::open(&replica_db).await.unwrap();
    let err = replica
        .apply_entries(&[entries[0].clone(), entries[2].clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Gap {
                expected: 2,
                got: 3
            }
        ),
        "{err}"
    );
    assert_eq!(
        replica.last_applied().await.unwrap(),
        1,
        "the entry before the gap is committed"
    );
}

#[tokio::test]
async fn replica_stops_at_a_conflicting_entry_naming_its_seq() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record(&log, "ada", "INSERT INTO item VALUES (1, 'pen', 1)").await;
    record(&log, "ada", "INSERT INTO item VALUES (2, 'ink', 1)").await;
    record(&log, "ada", "INSERT INTO item VALUES (3, 'cap', 1)").await;
    let (replica_db, _d2) = db_with_schema().await;
    replica_db
        .execute("INSERT INTO item VALUES (2, 'local', 0)", &[])
        .await
        .unwrap();
    let replica = Replica::open(&replica_db).await.unwrap();
    let err = replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Stopped { seq: 2, .. }), "{err}");
    assert!(err.to_string().contains("seq 2"), "{err}");
    assert_eq!(replica.last_applied().await.unwrap(), 1);
    let names: Vec<Value> = dump(&replica_db, "item")
        .await
        .into_iter()
        .map(|r| r[1].clone())
        .collect();
    assert_eq!(
        names,
        [Value::Text("pen".into()), Value::Text("local".into())]
    );
    // A policy that lets the primary win resolves it and the replica carries on.
    let replica =
        replica.policy(ConflictPolicy::abort().on(ConflictKind::Conflict, ConflictAction::Replace));
    assert_eq!(
        replica
            .catch_up(&mut LogTableSource::new(&primary))
            .await
            .unwrap()
            .last_seq,
        3
    );
    assert_eq!(
        dump(&replica_db, "item").await,
        dump(&primary, "item").await
    );
}

/// One batch of entries that change the same rows one after the other, with a migration in
/// the middle, conflicts resolved by the policy, and then a conflict it aborts on and a table
/// the replica lacks: the result is the one of applying the entries one by one, and each
/// failure names its own entry with everything before it committed.
#[tokio::test]
async fn a_batch_applies_as_its_entries_one_by_one() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record(&log, "ada", "INSERT INTO item VALUES (1, 'pen', 1)").await;
    record(
        &log,
        "ada",
        "UPDATE item SET qty = 2 WHERE id = 1; UPDATE counter SET n = 5 WHERE id = 1",
    )
    .await;
    record(&log, "ada", "INSERT INTO item VALUES (2, 'ink', 1)").await;
    log.migrate(Meta::actor("ada"), "ALTER TABLE item ADD COLUMN note TEXT")
        .await
        .unwrap();
    record(
        &log,
        "ada",
        "UPDATE item SET note = 'n', qty = 3 WHERE id = 1",
    )
    .await;
    record(&log, "ada", "DELETE FROM item WHERE id = 2").await;
    record(&log, "ada", "INSERT INTO item VALUES (3, 'cap', 1, NULL)").await;
    let entries = log.entries(&LogFilter::all()).await.unwrap();
    assert_eq!(entries.len(), 7);

    // Row 3 exists on the replica with other values: a conflict the policy resolves.
    let (replica_db, _d2) = db_with_schema().await;
    replica_db
        .execute("INSERT INTO item VALUES (3, 'local', 9)", &[])
        .await
        .unwrap();
    let replica = Replica::open(&replica_db)
        .await
        .unwrap()
        .policy(ConflictPolicy::abort().on(ConflictKind::Conflict, ConflictAction::Replace));
    assert_eq!(replica.apply_entries(&entries).await.unwrap(), 7);
    for table in ["item", "counter"] {
        assert_eq!(
            dump(&replica_db, table).await,
            dump(&primary, table).await,
            "{table}"
        );
    }

    // Under the abort policy the same conflict stops the batch at its entry (seq 7), with the
    // six before it, migration included, committed.
    let (strict_db, _d3) = db_with_schema().await;
    strict_db
        .execute("INSERT INTO item VALUES (3, 'local', 9)", &[])
        .await
        .unwrap();
    let strict = Replica::open(&strict_db).await.unwrap();
    let err = strict.apply_entries(&entries).await.unwrap_err();
    assert!(matches!(err, Error::Stopped { seq: 7, .. }), "{err}");
    assert_eq!(strict.last_applied().await.unwrap(), 6);
    assert_eq!(
        dump(&strict_db, "counter").await,
        dump(&primary, "counter").await
    );
    let rows = strict_db
        .query("SELECT id, name, qty, note FROM item ORDER BY id", &[])
        .await
        .unwrap();
    let rows: Vec<Vec<Value>> = rows.iter().map(|r| r.values().to_vec()).collect();
    assert_eq!(
        rows,
        [
            vec![1.into(), "pen".into(), 3.into(), "n".into()],
            vec![3.into(), "local".into(), 9.into(), Value::Null],
        ]
    );

    // A replica without `counter`: the entry that touches it (seq 2) is named, not skipped.
    let (bare_db, _d4) = file_db().await;
    bare_db
        .execute_batch("CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
        .await
        .unwrap();
    let bare = Replica::open(&bare_db).await.unwrap();
    let err = bare.apply_entries(&entries).await.unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { seq: 2, .. }), "{err}");
    assert_eq!(bare.last_applied().await.unwrap(), 1);
}

#[tokio::test]
async fn replica_follows_an_in_process_channel_and_can_be_cancelled() {
    let (primary, _d1) = db_with_schema().await;
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let log = ChangeLog::open(&primary).await.unwrap().publish_to(sender);
    let (replica_db, _d2) = db_with_schema().await;
    let replica = Replica::open(&replica_db).await.unwrap();
    let follower = tokio::spawn({
        let replica = replica.clone();
        async move { replica.follow(&mut ChannelSource::new(receiver)).await }
    });
    for _ in 0..5 {
        record(&log, "ada", "UPDATE counter SET n = n + 1 WHERE id = 2").await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while replica.last_applied().await.unwrap() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    follower.abort();
    assert!(follower.await.unwrap_err().is_cancelled());
    assert_eq!(
        dump(&replica_db, "counter").await,
        dump(&primary, "counter").await
    );
}

#[tokio::test]
async fn log_and_replica_need_the_sqlite_dialect() {
    let other = liteorm_tests::MemSession::new();
    let err = ChangeLog::open(&other).await.err().unwrap();
    assert!(
        matches!(
            err,
            Error::Changeset(liteorm_changeset::Error::Unsupported { .. })
        ),
        "{err}"
    );
    assert!(Replica::open(&other).await.is_err());
}

/// Kills a replica process with SIGKILL at random moments of a long catch-up, restarts it each
/// time, and checks that the replica ends up identical to the primary. Every entry increments a
/// counter, so an entry applied twice would conflict (and stop the worker) and a lost one would
/// leave the counters different.
#[tokio::test]
async fn replica_killed_at_random_points_resumes_exactly_once() {
    let (primary, dir) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    for i in 0..400 {
        let sql = if i % 3 == 0 {
            "UPDATE counter SET n = n + 1 WHERE id = 1; INSERT INTO item(name, qty) VALUES ('a', 1)"
        } else {
            "UPDATE counter SET n = n + 1 WHERE id = 2; UPDATE item SET qty = qty + 1 WHERE id = (SELECT max(id) FROM item)"
        };
        record(&log, "writer", sql).await;
    }
    let (replica_db, rdir) = db_with_schema().await;
    drop(replica_db);
    let primary_path = dir.path().join("test.db");
    let replica_path = rdir.path().join("test.db");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    println!("kill schedule seed: {seed}");
    let mut rng = seed | 1;
    let (mut kills, mut mid_way) = (0, 0);
    // The kill window widens with every attempt, so that a slow (busy) machine where starting
    // the worker alone takes longer than the first windows still makes progress; the last
    // attempt is never killed.
    const ATTEMPTS: u64 = 60;
    for attempt in 0..ATTEMPTS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_replica_worker"))
            .args([&primary_path, &replica_path])
            .arg("4")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if attempt + 1 < ATTEMPTS {
            // xorshift: a kill delay between 0 and 40 ms x (1 + attempt / 10).
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            let window_us = 40_000 * (1 + attempt / 10);
            std::thread::sleep(Duration::from_micros(u64::from(rng) % window_us));
            if child.try_wait().unwrap().is_none() {
                // SAFETY: `child.id()` is the pid of a child we have not reaped yet.
                unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGKILL) };
                kills += 1;
            }
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
        let cursor = {
            let db = SqliteSession::open(replica_path.to_str().unwrap())
                .await
                .unwrap();
            Replica::open(&db)
                .await
                .unwrap()
                .last_applied()
                .await
                .unwrap()
        };
        if cursor > 0 && cursor < 400 {
            mid_way += 1;
        }
    }
    println!("worker killed {kills} times, {mid_way} of them in the middle of the catch-up");
    assert!(
        mid_way > 0,
        "the worker was never killed in the middle of the catch-up"
    );
    let replica_db = SqliteSession::open(replica_path.to_str().unwrap())
        .await
        .unwrap();
    let replica = Replica::open(&replica_db).await.unwrap();
    assert_eq!(replica.last_applied().await.unwrap(), 400);
    assert_eq!(
        dump(&replica_db, "counter").await,
        dump(&primary, "counter").await
    );
    assert_eq!(
        dump(&replica_db, "item").await,
        dump(&primary, "item").await
    );
}

/// Found by the soak (`liteorm-soak`, fault `fill_replica_disk`): SQLite rolls a transaction
/// back by itself when the disk is full, so the replica's ROLLBACK after the failed apply found
/// none, and the replica reported "cannot rollback - no transaction is active" instead of the
/// full disk. It must report the cause, keep its cursor, and go on once there is room.
#[tokio::test]
async fn a_replica_on_a_full_disk_reports_it_and_resumes_when_freed() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    for _ in 0..5 {
        record(
            &log,
            "ada",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20) \
             INSERT INTO item(name, qty) SELECT printf('%.2000c', 'x'), i FROM n",
        )
        .await;
    }
    let (replica_db, _d2) = db_with_schema().await;
    // One connection, so that the cap below is the replica's.
    let pinned = replica_db.pin().await.unwrap();
    let capped = pinned.session();
    let replica = Replica::open(&capped).await.unwrap();
    let pages: i64 = capped.query("PRAGMA page_count", &[]).await.unwrap()[0]
        .try_get(0)
        .unwrap();
    capped
        .query(&format!("PRAGMA max_page_count = {pages}"), &[])
        .await
        .unwrap();
    let mut source = LogTableSource::new(&primary);
    let err = replica.catch_up(&mut source).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("full") && !message.contains("cannot rollback"),
        "{message}"
    );
    assert_eq!(replica.last_applied().await.unwrap(), 0);

    capped
        .query("PRAGMA max_page_count = 1073741823", &[])
        .await
        .unwrap();
    assert_eq!(replica.catch_up(&mut source).await.unwrap().last_seq, 5);
    assert_eq!(dump(&capped, "item").await, dump(&primary, "item").await);
}

/// Found by the `log_row` fuzz target: a log row whose seq (or ref_seq) is not positive, as a
/// damaged or hand-edited database may hold, was read back as an entry with seq 0 (a replica
/// would take it for "before the first entry"). It is a corrupt entry.
#[tokio::test]
async fn a_log_row_with_a_seq_below_1_is_a_corrupt_entry_not_entry_0() {
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record(&log, "ada", "UPDATE counter SET n = n + 1 WHERE id = 1").await;
    for (seq, ref_seq) in [(-5, None), (0, None), (7, Some(-1)), (7, Some(0))] {
        primary
            .execute(
                "INSERT INTO liteorm_changes(seq, committed_at, tables, kind, ref_seq, blob) \
                 SELECT ?, committed_at, tables, 'revert', ?, blob FROM liteorm_changes \
                 WHERE seq = 1",
                &[
                    Value::Integer(seq),
                    ref_seq.map_or(Value::Null, Value::Integer),
                ],
            )
            .await
            .unwrap();
        match log.entries(&LogFilter::all()).await {
            Err(Error::CorruptEntry { reason, .. }) => {
                assert!(reason.contains("not positive"), "{reason}")
            }
            other => panic!("expected a corrupt entry, got {other:?}"),
        }
        primary
            .execute(
                "DELETE FROM liteorm_changes WHERE seq = ?",
                &[Value::Integer(seq)],
            )
            .await
            .unwrap();
    }
    assert_eq!(log.entries(&LogFilter::all()).await.unwrap().len(), 1);
}

/// A rollback to seq 0 (before the first entry) is logged with ref_seq 0, which the
/// not-positive check above once took for a corrupt row: the log then failed to read and verify.
#[tokio::test]
async fn a_rollback_to_0_is_logged_readable_and_verifies() {
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record(&log, "ada", "INSERT INTO item VALUES (1, 'pen', 3)").await;
    record(&log, "ada", "UPDATE item SET qty = 1 WHERE id = 1").await;
    let outcome = log
        .rollback_to(0, ConflictPolicy::abort(), Meta::actor("ops"))
        .await
        .unwrap();
    assert_eq!(outcome.logged_as, Some(3));
    assert_eq!(log.entry(3).await.unwrap().kind, EntryKind::Rollback(0));
    assert_eq!(log.verify().await.unwrap().entries, 3);
    assert!(dump(&primary, "item").await.is_empty());
    // A replica applies it like any other entry.
    let (replica_db, _r) = db_with_schema().await;
    let replica = Replica::open(&replica_db).await.unwrap();
    let caught_up = replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap();
    assert_eq!(caught_up.last_seq, 3);
    assert_eq!(
        dump(&replica_db, "item").await,
        dump(&primary, "item").await
    );
}

/// A log remembers the entry it appended last and appends the next one on top of it without
/// reading the head back; whatever happened to the log in between (another writer's entries,
/// a prune of every entry, the newest entry replaced), the new entry links to the real head.
#[tokio::test]
async fn appends_link_to_the_real_head_whatever_happened_since_the_last_one() {
    let (primary, dir) = db_with_schema().await;
    let path = dir.path().join("test.db");
    let other = SqliteSession::open(path.to_str().unwrap()).await.unwrap();
    let (a, b) = (
        ChangeLog::open(&primary).await.unwrap(),
        ChangeLog::open(&other).await.unwrap(),
    );
    let mut seqs = Vec::new();
    for i in 0..3 {
        // Two writers in turn: each one's remembered head is stale every time.
        for log in [&a, &a, &b] {
            let seq = record(log, "ada", "UPDATE counter SET n = n + 1 WHERE id = 1").await;
            seqs.push(seq.unwrap());
        }
        assert_eq!(a.verify().await.unwrap().entries, 3 * (i + 1));
    }
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());

    // Every entry pruned: the head is the horizon's.
    b.force_prune(9).await.unwrap();
    assert_eq!(
        record(&a, "ada", "INSERT INTO item VALUES (1, 'pen', 3)").await,
        Some(10)
    );
    assert_eq!(
        record(&a, "ada", "INSERT INTO item VALUES (2, 'ink', 1)").await,
        Some(11)
    );

    // The newest entry replaced (a file restored, say): same seq, another hash.
    other
        .execute_batch("DELETE FROM liteorm_changes WHERE seq = 11; DELETE FROM item WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(
        record(&b, "bob", "INSERT INTO item VALUES (3, 'cap', 2)").await,
        Some(11)
    );
    assert_eq!(
        record(&a, "ada", "INSERT INTO item VALUES (4, 'nib', 9)").await,
        Some(12)
    );
    let verified = a.verify().await.unwrap();
    assert_eq!(verified.entries, 3);
    assert_eq!(a.last_seq().await.unwrap(), 12);
}

/// On one connection, an append skips the head check when the connection's data version shows
/// that nothing but the last append committed since. Whatever else happens in between (a write
/// to the log outside it, committed through the same connection; another log's uncommitted
/// append in the transaction both are nested in), the next entry still links to the real head.
#[tokio::test]
async fn appends_on_one_connection_link_to_the_real_head_after_its_other_writes() {
    let (db, _dir) = db_with_schema().await;
    let pinned = db.pin().await.unwrap();
    let session = pinned.session();
    let (log, other) = (
        ChangeLog::open(&session).await.unwrap(),
        ChangeLog::open(&session).await.unwrap(),
    );
    const BUMP: &str = "UPDATE counter SET n = n + 1 WHERE id = 1";
    for seq in 1..=3 {
        assert_eq!(record(&log, "ada", BUMP).await, Some(seq));
    }
    // The newest entry deleted through the same connection (a restore, say): the next append
    // takes its seq again, on top of entry 2.
    session
        .execute_batch("DELETE FROM liteorm_changes WHERE seq = 3")
        .await
        .unwrap();
    assert_eq!(record(&log, "ada", BUMP).await, Some(3));
    assert_eq!(record(&log, "ada", BUMP).await, Some(4));

    // Both nested in one transaction of the caller's: `other` appends entry 5, uncommitted;
    // `log`'s head (4) is still proven by the data version, so its insert finds seq 5 taken
    // and goes on top of the real head instead.
    let tx = session.begin().await.unwrap();
    assert_eq!(record(&other, "bob", BUMP).await, Some(5));
    assert_eq!(record(&log, "ada", BUMP).await, Some(6));
    tx.commit().await.unwrap();
    assert_eq!(record(&log, "ada", BUMP).await, Some(7));

    let verified = log.verify().await.unwrap();
    assert_eq!(verified.entries, 7);
    let n = session
        .query("SELECT n FROM counter WHERE id = 1", &[])
        .await
        .unwrap()[0]
        .try_get::<i64>(0)
        .unwrap();
    assert_eq!(n, 8, "every recorded unit of work committed once");
}

/// A replica applies consecutive change entries together as one changeset; the result is the
/// same as entry by entry, rows changed again and again and reverts included.
#[tokio::test]
async fn a_run_of_entries_applied_together_ends_as_entry_by_entry() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    for i in 0..40_i64 {
        let id = i % 7;
        log.record(Meta::actor("ada"), move |s| async move {
            s.execute(
                "INSERT INTO item VALUES (?, 'x', 0) ON CONFLICT(id) DO UPDATE SET qty = qty + 1",
                &[Value::Integer(id)],
            )
            .await?;
            s.execute(
                "UPDATE counter SET n = n + ? WHERE id = 1",
                &[Value::Integer(i)],
            )
            .await?;
            if i % 5 == 4 {
                s.execute(
                    "DELETE FROM item WHERE id = ?",
                    &[Value::Integer((i + 3) % 7)],
                )
                .await?;
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    }
    let seq = record(&log, "ada", "UPDATE counter SET n = 5 WHERE id = 2").await;
    record(&log, "ada", "INSERT INTO item VALUES (100, 'cap', 1)").await;
    log.revert(seq.unwrap(), ConflictPolicy::abort(), Meta::actor("ops"))
        .await
        .unwrap();
    let last = log.last_seq().await.unwrap();
    for batch in [1, 256] {
        let (replica_db, _d2) = db_with_schema().await;
        let replica = Replica::open(&replica_db).await.unwrap().batch_size(batch);
        let caught_up = replica
            .catch_up(&mut LogTableSource::new(&primary))
            .await
            .unwrap();
        assert_eq!((caught_up.applied, caught_up.last_seq), (last, last));
        for table in ["item", "counter"] {
            assert_eq!(dump(&replica_db, table).await, dump(&primary, table).await);
        }
    }
}

/// An entry that cannot apply (a table the replica lacks) stops the replica right before it
/// instead of letting it diverge: what its batch had applied together is undone, the entries
/// before it stay.
#[tokio::test]
async fn replica_with_an_incompatible_schema_stops_instead_of_diverging() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record(&log, "ada", "UPDATE counter SET n = n + 1 WHERE id = 1").await;
    record(&log, "ada", "INSERT INTO item VALUES (1, 'pen', 1)").await;
    record(&log, "ada", "UPDATE counter SET n = n + 1 WHERE id = 1").await;
    let (replica_db, _d2) = file_db().await;
    replica_db
        .execute_batch(
            "CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL); \
             INSERT INTO counter VALUES (1, 0), (2, 0)",
        )
        .await
        .unwrap();
    let replica = Replica::open(&replica_db).await.unwrap();
    let err = replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap_err();
    let Error::SchemaMismatch { seq: 2, tables } = &err else {
        panic!("{err}")
    };
    assert_eq!(tables[0].table, "item");
    assert_eq!(replica.last_applied().await.unwrap(), 1);
    assert_eq!(
        dump(&replica_db, "counter").await,
        [
            vec![Value::Integer(1), Value::Integer(1)],
            vec![Value::Integer(2), Value::Integer(0)]
        ]
    );
}

/// Past a few megabytes a batch is joined in several runs; every entry still applies once.
#[tokio::test]
async fn large_entries_are_joined_in_several_runs_and_all_apply() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    for id in 1..=4_i64 {
        log.record(Meta::actor("ada"), move |s| async move {
            let name = id.to_string().repeat(1_500_000);
            s.execute(
                "INSERT INTO item VALUES (?, ?, ?)",
                &[Value::Integer(id), Value::Text(name), Value::Integer(id)],
            )
            .await?;
            s.execute("UPDATE counter SET n = n + 1 WHERE id = 1", &[])
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    }
    let (replica_db, _d2) = db_with_schema().await;
    let replica = Replica::open(&replica_db).await.unwrap();
    let caught_up = replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap();
    assert_eq!((caught_up.applied, caught_up.last_seq), (4, 4));
    for table in ["item", "counter"] {
        assert_eq!(dump(&replica_db, table).await, dump(&primary, table).await);
    }
}

/// `parent`, `child` (ON DELETE CASCADE) and `note` (ON DELETE SET NULL), one row each.
const FAMILY: &str = "CREATE TABLE parent(id INTEGER PRIMARY KEY); \
    CREATE TABLE child(id INTEGER PRIMARY KEY, \
                       parent INTEGER REFERENCES parent(id) ON DELETE CASCADE); \
    CREATE TABLE note(id INTEGER PRIMARY KEY, \
                      parent INTEGER REFERENCES parent(id) ON DELETE SET NULL, text TEXT); \
    INSERT INTO parent VALUES (1); INSERT INTO child VALUES (10, 1); \
    INSERT INTO note VALUES (100, 1, 'n')";

const FAMILY_TABLES: [&str; 3] = ["parent", "child", "note"];

/// A logged entry holds the rows its foreign key actions changed (a cascaded delete is an
/// indirect change), so replicas and reverts apply it with the actions off (SQLite 3.44+), or
/// (before 3.44, where the actions run again) omit the indirect changes the actions already
/// made: otherwise the recorded child's delete finds it gone, a `NotFound` conflict.
#[tokio::test]
async fn entries_with_cascades_replicate_and_revert_without_cascading_twice() {
    let (db, _dir) = file_db().await;
    db.execute_batch(FAMILY).await.unwrap();
    let log = ChangeLog::open(&db).await.unwrap();
    record(
        &log,
        "ada",
        "INSERT INTO parent VALUES (2); INSERT INTO child VALUES (20, 2)",
    )
    .await;
    record(&log, "ada", "DELETE FROM parent WHERE id = 1").await;
    let cascaded = log.entry(2).await.unwrap().changeset.changes().unwrap();
    assert_eq!(
        cascaded.len(),
        3,
        "the parent, its cascaded child and its nulled note"
    );
    assert!(
        cascaded
            .iter()
            .filter(|c| &*c.table != "parent")
            .all(|c| c.indirect)
    );

    let (replica_db, _dir2) = file_db().await;
    replica_db.execute_batch(FAMILY).await.unwrap();
    let replica = Replica::open(&replica_db).await.unwrap();
    let caught_up = replica.catch_up(&mut LogTableSource::new(&db)).await;
    assert_eq!(caught_up.unwrap().last_seq, 2);
    for table in FAMILY_TABLES {
        assert_eq!(dump(&replica_db, table).await, dump(&db, table).await);
    }

    // Reverting the cascade brings back every row; reverting the insert deletes both (the
    // parent's delete would cascade to the recorded child's).
    log.revert(2, ConflictPolicy::abort(), Meta::actor("auditor"))
        .await
        .unwrap();
    let reverted = log
        .revert(1, ConflictPolicy::abort(), Meta::actor("auditor"))
        .await;
    if db.info().version_number < 3_044_000 {
        // The child's delete is a direct change of the entry: before 3.44 the parent's
        // cascades to it first, and only a policy that omits `NotFound` gets past it.
        let Err(Error::Changeset(liteorm_changeset::Error::Aborted { conflict })) = &reverted
        else {
            panic!("{reverted:?}")
        };
        assert_eq!(
            (conflict.kind, conflict.table()),
            (ConflictKind::NotFound, Some("child"))
        );
        let omit = ConflictPolicy::abort().on(ConflictKind::NotFound, ConflictAction::Omit);
        log.revert(1, omit, Meta::actor("auditor")).await.unwrap();
    } else {
        reverted.unwrap();
    }
    assert_eq!(dump(&db, "parent").await, [[Value::Integer(1)]]);
    assert_eq!(
        dump(&db, "child").await,
        [[Value::Integer(10), Value::Integer(1)]]
    );
    assert_eq!(
        dump(&db, "note").await,
        [[
            Value::Integer(100),
            Value::Integer(1),
            Value::Text("n".into())
        ]]
    );
    replica
        .catch_up(&mut LogTableSource::new(&db))
        .await
        .unwrap();
    for table in FAMILY_TABLES {
        assert_eq!(dump(&replica_db, table).await, dump(&db, table).await);
    }
}
