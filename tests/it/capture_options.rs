//! Capture options: the indirect flag, pausing recording, the Recorder's views of the session,
//! the changeset size estimate, the table filter, and tables without a PRIMARY KEY.

use std::sync::{Arc, Mutex};

use liteorm_changeset::{
    Capability, Capture, ChangeOp, ColumnNames, Error, Recorder, apply, live_session_objects,
};
use liteorm_core::{Session, Value};

use crate::support::{db_path, dump, file_db, seed};

/// (id, op, indirect) of every change, sorted by id.
fn summary(cs: &liteorm_changeset::Changeset) -> Vec<(i64, ChangeOp, bool)> {
    let mut out: Vec<_> = cs
        .iter()
        .map(|c| {
            let c = c.unwrap();
            let Value::Integer(id) = c.primary_key()[0] else {
                panic!("integer key expected")
            };
            (id, c.op, c.indirect)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn indirect_capture_marks_every_change_indirect() {
    let (db, _dir) = file_db().await;
    seed(&db, 2).await;
    let cs = Capture::new(&db)
        .tables(["t"])
        .indirect(true)
        .changeset(|s| async move {
            s.execute_batch("UPDATE t SET name = 'x'; INSERT INTO t VALUES (3, 'c', 0.0, NULL)")
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(
        summary(&cs),
        [
            (1, ChangeOp::Update, true),
            (2, ChangeOp::Update, true),
            (3, ChangeOp::Insert, true)
        ]
    );
}

#[tokio::test]
async fn recorder_switches_the_indirect_flag_between_statements() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let cs = Capture::new(&db)
        .tables(["t"])
        .changeset_with(|s, recorder| async move {
            s.execute("UPDATE t SET name = 'direct' WHERE id = 1", &[])
                .await?;
            recorder.set_indirect(true).await?;
            s.execute("UPDATE t SET name = 'indirect' WHERE id = 2", &[])
                .await?;
            recorder.set_indirect(false).await?;
            s.execute("UPDATE t SET name = 'direct again' WHERE id = 3", &[])
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(
        summary(&cs),
        [
            (1, ChangeOp::Update, false),
            (2, ChangeOp::Update, true),
            (3, ChangeOp::Update, false)
        ]
    );
}

#[tokio::test]
async fn paused_recording_skips_new_rows_but_recorded_rows_keep_their_final_values() {
    let (db, _dir) = file_db().await;
    seed(&db, 2).await;
    let cs = Capture::new(&db)
        .tables(["t"])
        .changeset_with(|s, recorder| async move {
            s.execute("UPDATE t SET name = 'recorded' WHERE id = 1", &[])
                .await?;
            recorder.set_enabled(false).await?;
            s.execute_batch(
                "UPDATE t SET name = 'while paused' WHERE id = 1; \
                 UPDATE t SET name = 'unrecorded' WHERE id = 2; \
                 INSERT INTO t VALUES (3, 'unrecorded', 0.0, NULL)",
            )
            .await?;
            recorder.set_enabled(true).await?;
            s.execute("INSERT INTO t VALUES (4, 'recorded', 0.0, NULL)", &[])
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let changes = cs.changes().unwrap();
    let mut rows: Vec<(Vec<Value>, Option<Value>)> = changes
        .iter()
        .map(|c| (c.primary_key(), c.new[1].clone()))
        .collect();
    rows.sort_by_key(|(pk, _)| pk[0].to_string());
    // Row 1 was recorded before the pause, so its final value is what the changeset says.
    assert_eq!(
        rows,
        [
            (vec![Value::Integer(1)], Some("while paused".into())),
            (vec![Value::Integer(4)], Some("recorded".into())),
        ]
    );
    // The unrecorded statements still committed.
    assert_eq!(dump(&db, "t").await.len(), 4);
}

#[tokio::test]
async fn is_empty_and_memory_used_follow_what_is_recorded() {
    let (db, _dir) = file_db().await;
    seed(&db, 0).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    Capture::new(&db)
        .tables(["t"])
        .changeset_with(|s, recorder| async move {
            for batch in 0..3 {
                let state = (recorder.is_empty().await?, recorder.memory_used().await?);
                log.lock().unwrap().push(state);
                if batch == 2 {
                    break;
                }
                for id in batch * 100..(batch + 1) * 100 {
                    s.execute("INSERT INTO t VALUES (?, 'x', 0.0, NULL)", &[id.into()])
                        .await?;
                }
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    let empty: Vec<bool> = seen.iter().map(|(empty, _)| *empty).collect();
    assert_eq!(empty, [true, false, false]);
    let used: Vec<u64> = seen.iter().map(|(_, used)| *used).collect();
    assert!(used[0] < used[1] && used[1] < used[2], "{used:?}");
}

#[tokio::test]
async fn changeset_size_is_the_size_of_the_changeset_produced() {
    let (db, _dir) = file_db().await;
    seed(&db, 10).await;
    let size = Arc::new(Mutex::new(None));
    let out = Arc::clone(&size);
    let result = Capture::new(&db)
        .tables(["t"])
        .track_size(true)
        .changeset_with(|s, recorder| async move {
            s.execute_batch(
                "UPDATE t SET name = 'renamed' WHERE id < 5; DELETE FROM t WHERE id = 9; \
                 INSERT INTO t VALUES (11, 'new', 1.0, X'01')",
            )
            .await?;
            *out.lock().unwrap() = Some(recorder.changeset_size().await?);
            Ok::<_, Error>(())
        })
        .await;
    // 3.36+: in every build liteorm supports; the test still states the rule.
    if Capability::ChangesetSize.is_available() {
        let cs = result.unwrap();
        assert_eq!(*size.lock().unwrap(), Some(cs.len() as u64));
    } else {
        assert!(matches!(result, Err(Error::Unsupported { .. })));
    }
}

#[tokio::test]
async fn changeset_size_without_tracking_is_a_misuse() {
    let (db, _dir) = file_db().await;
    seed(&db, 1).await;
    let err = Capture::new(&db)
        .changeset_with(|_s, recorder| async move {
            recorder.changeset_size().await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Misuse(m) if m.contains("track_size")),
        "{err}"
    );
}

#[tokio::test]
async fn a_recorder_that_outlives_its_capture_is_a_misuse() {
    let (db, _dir) = file_db().await;
    seed(&db, 1).await;
    let kept: Arc<Mutex<Option<Recorder>>> = Arc::default();
    let keep = Arc::clone(&kept);
    Capture::new(&db)
        .changeset_with(|_s, recorder| async move {
            *keep.lock().unwrap() = Some(recorder.clone());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let recorder = kept.lock().unwrap().take().unwrap();
    let err = recorder.set_enabled(false).await.unwrap_err();
    assert!(
        matches!(err, Error::Misuse(m) if m.contains("over")),
        "{err}"
    );
}

#[tokio::test]
async fn table_filter_picks_tables_when_recording_every_table() {
    let (db, _dir) = file_db().await;
    seed(&db, 1).await;
    db.execute_batch(
        "CREATE TABLE keep(id INTEGER PRIMARY KEY); CREATE TABLE skip(id INTEGER PRIMARY KEY)",
    )
    .await
    .unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&asked);
    let cs = Capture::new(&db)
        .table_filter(move |table| {
            log.lock().unwrap().push(table.to_owned());
            table != "skip"
        })
        .changeset(|s| async move {
            s.execute_batch(
                "INSERT INTO keep VALUES (1), (2); INSERT INTO skip VALUES (1), (2); \
                 DELETE FROM t",
            )
            .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let mut tables: Vec<String> = cs.iter().map(|c| c.unwrap().table.to_string()).collect();
    tables.sort();
    assert_eq!(tables, ["keep", "keep", "t"]);
    // Asked once for an accepted table; again for each change to a refused one.
    let asked = asked.lock().unwrap().clone();
    let times = |table: &str| asked.iter().filter(|t| *t == table).count();
    assert_eq!(
        (times("keep"), times("t"), times("skip")),
        (1, 1, 2),
        "{asked:?}"
    );
}

#[tokio::test]
async fn a_panicking_table_filter_fails_the_capture_and_rolls_it_back() {
    let (db, _dir) = file_db().await;
    seed(&db, 1).await;
    let before = dump(&db, "t").await;
    let err = Capture::new(&db)
        .table_filter(|table| panic!("no opinion on {table}"))
        .changeset(|s| async move {
            s.execute("DELETE FROM t", &[]).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
    match &err {
        Error::CallbackPanicked { callback, message } => {
            assert_eq!(*callback, "table filter");
            assert_eq!(message, "no opinion on t");
        }
        other => panic!("{other}"),
    }
    assert_eq!(dump(&db, "t").await, before);
    assert_eq!(live_session_objects(&db_path(&db).await), 0);
}

#[tokio::test]
async fn implicit_primary_key_records_tables_without_one() {
    let (db, _dir) = file_db().await;
    let (replica, _dir2) = file_db().await;
    for d in [&db, &replica] {
        d.execute_batch("CREATE TABLE log(at INTEGER, msg TEXT); INSERT INTO log VALUES (1, 'a')")
            .await
            .unwrap();
    }
    let result = Capture::new(&db)
        .tables(["log"])
        .implicit_primary_key(true)
        .changeset(|s| async move {
            s.execute_batch(
                "INSERT INTO log VALUES (2, 'b'); UPDATE log SET msg = 'A' WHERE at = 1",
            )
            .await?;
            Ok::<_, Error>(())
        })
        .await;
    if db.info().version_number < 3_042_000 {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { capability, .. } if capability.contains(">= 3.42.0")),
            "{err}"
        );
        assert_eq!(dump(&db, "log").await.len(), 1, "the closure did not run");
        return;
    }
    let cs = result.unwrap();
    // The rowid is a leading key column the table itself does not have.
    let mut changes = cs.changes().unwrap();
    changes.sort_by_key(|c| c.primary_key()[0].to_string());
    assert!(changes.iter().all(|c| c.pk == [1, 0, 0]));
    let sql = cs.to_sql(&ColumnNames::of(&db).await.unwrap()).unwrap();
    let mut lines: Vec<&str> = sql.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            r#"INSERT INTO "log" ("_rowid_", "at", "msg") VALUES (2, 2, 'b');"#,
            r#"UPDATE "log" SET "msg" = 'A' WHERE "_rowid_" = 1 AND "msg" = 'a';"#,
        ]
    );
    // And it applies, by rowid, to a table without a PRIMARY KEY.
    let report = apply(&replica, &cs).await.unwrap();
    assert_eq!((report.applied, report.skipped_tables.len()), (2, 0));
    assert_eq!(dump(&replica, "log").await, dump(&db, "log").await);
}

/// `within_transaction`: inside its owner's transaction a capture records there (the owner's
/// commit or rollback decides), a failed one leaves its writes for the owner to roll back, a
/// closure that ends the owner's transaction fails the capture, and outside a transaction the
/// option changes nothing.
#[tokio::test]
async fn within_transaction_records_in_the_owners_transaction() {
    let (db, _dir) = file_db().await;
    seed(&db, 2).await;
    let before = dump(&db, "t").await;
    let path = db_path(&db).await;

    // Recorded in the owner's transaction, which its rollback undoes.
    let tx = db.begin_immediate().await.unwrap();
    let cs = Capture::new(tx.session())
        .within_transaction()
        .changeset(|s| async move {
            s.execute("UPDATE t SET name = 'x' WHERE id = 1", &[])
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(summary(&cs), [(1, ChangeOp::Update, false)]);
    let inside = tx
        .session()
        .query("SELECT name FROM t WHERE id = 1", &[])
        .await;
    assert_eq!(inside.unwrap()[0].values()[0], Value::Text("x".into()));
    tx.rollback().await.unwrap();
    assert_eq!(dump(&db, "t").await, before);

    // A failed capture leaves its writes in the owner's transaction, session object deleted.
    let tx = db.begin_immediate().await.unwrap();
    let err = Capture::new(tx.session())
        .within_transaction()
        .changeset(|s| async move {
            s.execute("DELETE FROM t WHERE id = 2", &[]).await?;
            Err::<(), _>(Error::TransactionEnded)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TransactionEnded), "{err}");
    assert_eq!(live_session_objects(&path), 0);
    let left = tx.session().query("SELECT count(*) FROM t", &[]).await;
    assert_eq!(left.unwrap()[0].values()[0], Value::Integer(1));
    tx.rollback().await.unwrap();
    assert_eq!(dump(&db, "t").await, before);

    // The closure may not end the owner's transaction.
    let tx = db.begin_immediate().await.unwrap();
    let err = Capture::new(tx.session())
        .within_transaction()
        .changeset(|s| async move {
            s.execute_batch("UPDATE t SET name = 'y' WHERE id = 1; COMMIT")
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TransactionEnded), "{err}");
    drop(tx);
    assert_eq!(live_session_objects(&path), 0);

    // Outside a transaction, capture opens and commits its own.
    let cs = Capture::new(&db)
        .within_transaction()
        .changeset(|s| async move {
            s.execute("UPDATE t SET name = 'z' WHERE id = 2", &[])
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(summary(&cs), [(2, ChangeOp::Update, false)]);
    let after = db
        .query("SELECT name FROM t WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(after[0].values()[0], Value::Text("z".into()));
}
