//! Apply: atomicity, the report, the filter, panicking callbacks, schema mismatches, and what the
//! executor does meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use liteorm_changeset::{ConflictAction, ConflictKind, Error, SkipReason, apply, capture};
use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;
use sqlx::sqlite::SqlitePoolOptions;

use crate::support::{captured, dump, file_db, seed};

/// A changeset over `t` (seeded with 3 rows): update 1, delete 2, insert 4.
async fn three_changes() -> liteorm_changeset::Changeset {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    capture(&db, &["t"], |s| async move {
        s.execute_batch(
            "UPDATE t SET name = 'one' WHERE id = 1; DELETE FROM t WHERE id = 2; \
             INSERT INTO t VALUES (4, 'four', 2.0, NULL)",
        )
        .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn clean_apply_reports_every_change_applied() {
    let cs = three_changes().await;
    let (target, _dir) = file_db().await;
    seed(&target, 3).await;
    let report = apply(&target, &cs).await.unwrap();
    assert_eq!(
        (
            report.changes,
            report.attempted,
            report.applied,
            report.omitted
        ),
        (3, 3, 3, 0)
    );
    assert!(report.conflicts.is_empty());
    let ids: Vec<Value> = dump(&target, "t")
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        ids,
        [Value::Integer(1), Value::Integer(3), Value::Integer(4)]
    );
}

#[tokio::test]
async fn without_a_handler_any_conflict_aborts_and_nothing_is_applied() {
    let cs = three_changes().await;
    let (target, _dir) = file_db().await;
    seed(&target, 3).await;
    // Row 4 already exists: the insert conflicts, after the update and delete went through.
    target
        .execute("INSERT INTO t VALUES (4, 'present', 0.0, NULL)", &[])
        .await
        .unwrap();
    let before = dump(&target, "t").await;
    let err = apply(&target, &cs).await.unwrap_err();
    let Error::Aborted { conflict } = &err else {
        panic!("expected Aborted, got {err}")
    };
    assert_eq!(conflict.kind, ConflictKind::Conflict);
    assert_eq!(conflict.table(), Some("t"));
    assert_eq!(
        conflict.conflicting_row.as_ref().unwrap()[1],
        Value::Text("present".into())
    );
    assert!(err.to_string().contains("nothing was applied"), "{err}");
    assert_eq!(dump(&target, "t").await, before);
}

#[tokio::test]
async fn omitted_and_replaced_conflicts_are_counted_per_kind() {
    let cs = three_changes().await;
    let (target, _dir) = file_db().await;
    seed(&target, 3).await;
    target
        .execute_batch("UPDATE t SET name = 'changed' WHERE id = 1; DELETE FROM t WHERE id = 2")
        .await
        .unwrap();
    let report = apply(&target, &cs)
        .on_conflict(|c| match c.kind {
            ConflictKind::Data => ConflictAction::Replace,
            _ => ConflictAction::Omit,
        })
        .log_conflicts()
        .await
        .unwrap();
    assert_eq!(
        (
            report.attempted,
            report.applied,
            report.omitted,
            report.replaced
        ),
        (3, 2, 1, 1)
    );
    assert_eq!(report.conflicts[&ConflictKind::Data].replaced, 1);
    assert_eq!(report.conflicts[&ConflictKind::NotFound].omitted, 1);
    assert_eq!(report.conflict_log.len(), 2);
    let rows = dump(&target, "t").await;
    assert_eq!(
        rows[0][1],
        Value::Text("one".into()),
        "Replace overwrote the changed row"
    );

    // The lazy handler counts and logs the same (it decodes only for the log).
    let (lazy_target, _dir) = file_db().await;
    seed(&lazy_target, 3).await;
    lazy_target
        .execute_batch("UPDATE t SET name = 'changed' WHERE id = 1; DELETE FROM t WHERE id = 2")
        .await
        .unwrap();
    let lazy = apply(&lazy_target, &cs)
        .on_conflict_ref(|c| match c.kind {
            ConflictKind::Data => ConflictAction::Replace,
            _ => ConflictAction::Omit,
        })
        .log_conflicts()
        .await
        .unwrap();
    assert_eq!(lazy, report);
    assert_eq!(dump(&lazy_target, "t").await, rows);
}

#[tokio::test]
async fn filter_restricts_the_tables_applied() {
    let (src, _d1) = file_db().await;
    seed(&src, 0).await;
    src.execute_batch("CREATE TABLE u(k TEXT PRIMARY KEY)")
        .await
        .unwrap();
    let cs = captured(
        &src,
        &[],
        "INSERT INTO t VALUES (1, 'a', 0.0, NULL); INSERT INTO u VALUES ('x')",
    )
    .await;
    let (target, _d2) = file_db().await;
    seed(&target, 0).await;
    target
        .execute_batch("CREATE TABLE u(k TEXT PRIMARY KEY)")
        .await
        .unwrap();
    let report = apply(&target, &cs)
        .filter(|table| table == "u")
        .await
        .unwrap();
    assert_eq!(report.filtered_tables, ["t"]);
    assert_eq!(
        (report.changes, report.attempted, report.applied),
        (2, 1, 1)
    );
    assert!(dump(&target, "t").await.is_empty());
    assert_eq!(dump(&target, "u").await.len(), 1);
}

#[tokio::test]
async fn panicking_conflict_handler_rolls_back_and_reports() {
    let cs = three_changes().await;
    let (target, _dir) = file_db().await;
    seed(&target, 3).await;
    target
        .execute("INSERT INTO t VALUES (4, 'present', 0.0, NULL)", &[])
        .await
        .unwrap();
    let before = dump(&target, "t").await;
    let err = apply(&target, &cs)
        .on_conflict(|_| panic!("handler bug"))
        .await
        .unwrap_err();
    match &err {
        Error::CallbackPanicked { callback, message } => {
            assert_eq!(*callback, "conflict handler");
            assert_eq!(message, "handler bug");
        }
        other => panic!("expected CallbackPanicked, got {other}"),
    }
    assert_eq!(dump(&target, "t").await, before);
    apply(&target, &cs)
        .on_conflict(|_| ConflictAction::Omit)
        .await
        .unwrap();
}

#[tokio::test]
async fn panicking_filter_rolls_back_everything_already_applied() {
    let (cs, target, _dirs) = two_table_changeset_and_target().await;
    // The filter passes the first table and panics on the second: the first table's changes,
    // already applied by then, must be rolled back too.
    let calls = AtomicUsize::new(0);
    let err = apply(&target, &cs)
        .filter(move |_| {
            assert!(calls.fetch_add(1, Ordering::Relaxed) == 0, "filter bug");
            true
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::CallbackPanicked {
                callback: "table filter",
                ..
            }
        ),
        "{err}"
    );
    assert!(dump(&target, "t").await.is_empty());
    assert!(dump(&target, "u").await.is_empty());
}

#[tokio::test]
async fn replace_where_sqlite_forbids_it_is_a_clear_error() {
    let cs = three_changes().await;
    let (target, _dir) = file_db().await;
    seed(&target, 3).await;
    target
        .execute("DELETE FROM t WHERE id = 1", &[])
        .await
        .unwrap(); // update of 1: NotFound
    let before = dump(&target, "t").await;
    let err = apply(&target, &cs)
        .on_conflict(|_| ConflictAction::Replace)
        .await
        .unwrap_err();
    let Error::IllegalReplace { conflict } = &err else {
        panic!("expected IllegalReplace, got {err}")
    };
    assert_eq!(conflict.kind, ConflictKind::NotFound);
    assert!(!conflict.kind.allows_replace());
    assert_eq!(dump(&target, "t").await, before);
}

#[tokio::test]
async fn incompatible_tables_are_skipped_and_reported() {
    let (src, _d1) = file_db().await;
    src.execute_batch(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, x); CREATE TABLE b(id INTEGER PRIMARY KEY, x, y); \
         CREATE TABLE c(id INTEGER PRIMARY KEY, x); CREATE TABLE d(id INTEGER PRIMARY KEY, x)",
    )
    .await
    .unwrap();
    let cs = capture(&src, &[], |s| async move {
        s.execute_batch(
            "INSERT INTO a VALUES (1, 1); INSERT INTO b VALUES (1, 1, 1); \
             INSERT INTO c VALUES (1, 1); INSERT INTO d VALUES (1, 1)",
        )
        .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let (target, _d2) = file_db().await;
    target
        .execute_batch(
            // a missing; b has fewer columns; c has its key elsewhere; d matches (and has more).
            "CREATE TABLE b(id INTEGER PRIMARY KEY, x); CREATE TABLE c(id, x PRIMARY KEY); \
             CREATE TABLE d(id INTEGER PRIMARY KEY, x, extra DEFAULT 'dflt')",
        )
        .await
        .unwrap();
    let report = apply(&target, &cs).await.unwrap();
    let mut skipped: Vec<(String, SkipReason)> = report
        .skipped_tables
        .iter()
        .map(|s| (s.table.clone(), s.reason.clone()))
        .collect();
    skipped.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        skipped,
        [
            ("a".to_owned(), SkipReason::Missing),
            (
                "b".to_owned(),
                SkipReason::TooFewColumns {
                    expected: 3,
                    found: 2
                }
            ),
            ("c".to_owned(), SkipReason::PrimaryKeyMismatch),
        ]
    );
    assert_eq!(
        (report.changes, report.attempted, report.applied),
        (4, 1, 1)
    );
    assert_eq!(
        dump(&target, "d").await,
        [[
            Value::Integer(1),
            Value::Integer(1),
            Value::Text("dflt".into())
        ]]
    );
    assert!(dump(&target, "b").await.is_empty());
}

/// A blob over 16 KiB is listed on another thread while SQLite applies it (SQLite then skips
/// the incompatible tables itself), a smaller one before: both must report the same. The two
/// changesets differ only in the size of one value.
#[tokio::test]
async fn a_large_blob_reports_what_a_small_one_reports() {
    async fn applied(
        pad: i64,
        in_transaction: bool,
    ) -> (liteorm_changeset::ApplyReport, Vec<Value>) {
        let (src, _d1) = file_db().await;
        src.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE gone(id INTEGER PRIMARY KEY); \
             CREATE TABLE other(id INTEGER PRIMARY KEY); CREATE TABLE b(id INTEGER PRIMARY KEY, x, y)",
        )
        .await
        .unwrap();
        let cs = capture(&src, &[], move |s| async move {
            s.execute(
                "INSERT INTO t VALUES (1, zeroblob(?1))",
                &[Value::Integer(pad)],
            )
            .await?;
            s.execute_batch(
                "INSERT INTO t VALUES (2, 'theirs'); INSERT INTO gone VALUES (1), (2); \
                 INSERT INTO other VALUES (1); INSERT INTO b VALUES (1, 1, 1)",
            )
            .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(cs.len() > 16 * 1024, pad > 16 * 1024, "pad {pad}");
        let (target, _d2) = file_db().await;
        target
            .execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (2, 'mine'); \
                 CREATE TABLE other(id INTEGER PRIMARY KEY); CREATE TABLE b(id INTEGER PRIMARY KEY, x)",
            )
            .await
            .unwrap();
        fn applying<'a>(
            session: &'a dyn Session,
            cs: &liteorm_changeset::Changeset,
        ) -> liteorm_changeset::Apply<'a> {
            apply(session, cs)
                .filter(|table| table != "other")
                .on_conflict(|_| ConflictAction::Replace)
        }
        let report = if in_transaction {
            let tx = target.begin().await.unwrap();
            let report = applying(tx.as_session(), &cs).await.unwrap();
            tx.commit().await.unwrap();
            report
        } else {
            applying(&target, &cs).await.unwrap()
        };
        let rows = target
            .query("SELECT length(v) FROM t ORDER BY id", &[])
            .await
            .unwrap()
            .into_iter()
            .flat_map(|row| row.into_values())
            .collect();
        (report, rows)
    }
    for in_transaction in [false, true] {
        let (small, small_rows) = applied(10, in_transaction).await;
        let (large, large_rows) = applied(20_000, in_transaction).await;
        assert_eq!(large, small, "in a transaction: {in_transaction}");
        assert_eq!(
            (
                large.changes,
                large.attempted,
                large.applied,
                large.replaced
            ),
            (6, 2, 2, 1)
        );
        assert_eq!(large.filtered_tables, ["other"]);
        let mut skipped: Vec<_> = large
            .skipped_tables
            .iter()
            .map(|s| (s.table.as_str(), s.changes, s.reason.clone()))
            .collect();
        skipped.sort_by_key(|s| s.0);
        assert_eq!(
            skipped,
            [
                (
                    "b",
                    1,
                    SkipReason::TooFewColumns {
                        expected: 3,
                        found: 2
                    }
                ),
                ("gone", 2, SkipReason::Missing),
            ]
        );
        assert_eq!(small_rows, [Value::Integer(10), Value::Integer(6)]);
        assert_eq!(large_rows, [Value::Integer(20_000), Value::Integer(6)]);
    }
}

/// A large blob (listed alongside SQLite's apply) reports every change: with a table in two runs
/// (changesets concatenated byte for byte) and an omitted conflict, and with a table SQLite
/// skips because the target lacks it.
#[tokio::test]
async fn a_large_blob_reports_every_change_of_a_table_in_two_runs() {
    let (src, _d1) = file_db().await;
    src.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE u(id INTEGER PRIMARY KEY, w)",
    )
    .await
    .unwrap();
    let first = capture(&src, &[], |s| async move {
        s.execute_batch(
            "INSERT INTO t VALUES (1, zeroblob(20000)), (2, 'b'), (3, 'c'); \
             INSERT INTO u VALUES (1, 'theirs'), (2, 'x')",
        )
        .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let second = capture(&src, &[], |s| async move {
        s.execute_batch("UPDATE t SET v = 'bb' WHERE id = 2; DELETE FROM u WHERE id = 2")
            .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let both = [first.as_bytes(), second.as_bytes()].concat();
    let cs = liteorm_changeset::Changeset::from_bytes(both).unwrap();
    assert!(cs.len() > 16 * 1024);
    assert_eq!(cs.tables().unwrap(), ["t", "u"]);

    let (target, _d2) = file_db().await;
    target
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE u(id INTEGER PRIMARY KEY, w); \
             INSERT INTO u VALUES (1, 'mine')",
        )
        .await
        .unwrap();
    let report = apply(&target, &cs)
        .on_conflict(|_| ConflictAction::Omit)
        .await
        .unwrap();
    assert_eq!(
        (
            report.changes,
            report.attempted,
            report.applied,
            report.omitted,
            report.conflicts[&ConflictKind::Conflict].seen
        ),
        (7, 7, 6, 1, 1)
    );
    assert!(report.skipped_tables.is_empty() && report.filtered_tables.is_empty());
    let lengths: Vec<_> = target
        .query("SELECT id, length(v) FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.into_values())
        .collect();
    let int = |pair: [i64; 2]| pair.map(Value::Integer).to_vec();
    assert_eq!(lengths, [int([1, 20_000]), int([2, 2]), int([3, 1])]);
    assert_eq!(
        dump(&target, "u").await,
        [vec![Value::Integer(1), Value::Text("mine".into())]]
    );

    let (no_u, _d3) = file_db().await;
    no_u.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .await
        .unwrap();
    let report = apply(&no_u, &cs).await.unwrap();
    assert_eq!(
        (report.changes, report.attempted, report.applied),
        (7, 4, 4)
    );
    let skipped: Vec<_> = report
        .skipped_tables
        .iter()
        .map(|s| (s.table.as_str(), s.changes, s.reason.clone()))
        .collect();
    assert_eq!(skipped, [("u", 3, SkipReason::Missing)]);
}

#[tokio::test]
async fn apply_on_a_transaction_joins_it() {
    let cs = three_changes().await;
    let (target, _dir) = file_db().await;
    seed(&target, 3).await;
    let before = dump(&target, "t").await;
    let tx = target.begin().await.unwrap();
    apply(tx.as_session(), &cs).await.unwrap();
    assert_ne!(dump(tx.as_session(), "t").await, before);
    tx.rollback().await.unwrap();
    assert_eq!(dump(&target, "t").await, before);
}

#[tokio::test]
async fn a_failed_apply_on_a_transaction_undoes_itself_and_keeps_the_transaction() {
    let (cs, target, _dirs) = two_table_changeset_and_target().await;
    let tx = target.begin().await.unwrap();
    tx.execute("INSERT INTO t VALUES (7, 'mine', 0.0, NULL)", &[])
        .await
        .unwrap();
    let mine = dump(tx.as_session(), "t").await;
    // The filter passes the first table and panics on the second, after the first table's
    // changes were applied: those go, the transaction's own row stays.
    let calls = AtomicUsize::new(0);
    let err = apply(tx.as_session(), &cs)
        .filter(move |_| {
            assert!(calls.fetch_add(1, Ordering::Relaxed) == 0, "filter bug");
            true
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CallbackPanicked { .. }), "{err}");
    assert_eq!(dump(tx.as_session(), "t").await, mine);
    assert!(dump(tx.as_session(), "u").await.is_empty());
    // A conflict aborts the apply alone too.
    tx.execute("INSERT INTO u VALUES ('x')", &[]).await.unwrap();
    let err = apply(tx.as_session(), &cs).await.unwrap_err();
    assert!(matches!(err, Error::Aborted { .. }), "{err}");
    assert_eq!(dump(tx.as_session(), "t").await, mine);
    tx.commit().await.unwrap();
    assert_eq!(dump(&target, "t").await, mine);
    assert_eq!(dump(&target, "u").await, [[Value::Text("x".into())]]);
}

/// A changeset inserting rows `1..=n` into `t`.
async fn bulk_insert(n: i64) -> liteorm_changeset::Changeset {
    let (db, _dir) = file_db().await;
    seed(&db, 0).await;
    capture(&db, &["t"], move |s| async move {
        s.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) \
             INSERT INTO t SELECT i, 'row-' || i, i * 0.5, randomblob(16) FROM c",
            &[n.into()],
        )
        .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn large_apply_runs_off_the_executor() {
    let cs = bulk_insert(100_000).await;
    let (target, _dir) = file_db().await;
    seed(&target, 0).await;
    // On a single-threaded runtime, this task only runs while the apply task is not blocking
    // the executor thread.
    let done = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn({
        let (done, polls) = (Arc::clone(&done), Arc::clone(&polls));
        async move {
            while !done.load(Ordering::Relaxed) {
                polls.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    });
    tokio::task::yield_now().await;
    let before = polls.load(Ordering::Relaxed);
    let report = apply(&target, &cs).await.unwrap();
    let during = polls.load(Ordering::Relaxed) - before;
    done.store(true, Ordering::Relaxed);
    ticker.await.unwrap();
    assert_eq!(report.applied, 100_000);
    assert!(
        during > 100,
        "other tasks were polled only {during} times during the apply"
    );
}

#[tokio::test]
async fn cancelled_apply_is_rolled_back_and_frees_the_connection() {
    let cs = bulk_insert(200_000).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.db");
    let target = SqliteSession::connect_with(
        SqliteSession::options(path.to_str().unwrap()).unwrap(),
        SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    seed(&target, 0).await;
    // SQLite calls the filter when it starts on the table: drop the future right then.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut started_tx = Some(started_tx);
    let slow = apply(&target, &cs).filter(move |_| {
        if let Some(tx) = started_tx.take() {
            let _ = tx.send(());
        }
        true
    });
    tokio::select! {
        result = slow => panic!("the apply finished before it could be cancelled: {result:?}"),
        _ = started_rx => {}
    }
    // The next statement waits for the (only) connection, which comes back after the
    // interrupted apply rolled back.
    assert!(dump(&target, "t").await.is_empty());
    let report = apply(&target, &cs).await.unwrap();
    assert_eq!(report.applied, 200_000);
}

#[tokio::test]
async fn corrupt_bytes_are_rejected_before_anything_is_written() {
    let cs = three_changes().await;
    let mut bytes = cs.as_bytes().to_vec();
    bytes.truncate(bytes.len() - 3);
    let err = liteorm_changeset::Changeset::from_bytes(bytes).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(liteorm_changeset::Changeset::from_bytes(b"garbage".to_vec()).is_err());
    assert!(
        liteorm_changeset::Changeset::from_bytes(Vec::new()).is_ok(),
        "empty is a valid changeset"
    );
}

/// The target's key layouts are kept on a parked connection between applies; a schema change
/// made through another connection in between must be seen.
#[tokio::test]
async fn apply_sees_schema_changes_between_applies() {
    let (db, _dir) = file_db().await;
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .await
        .unwrap();
    let other = db.pin().await.unwrap();
    let cs = liteorm_changeset::capture(&db, &["t"], |s: SqliteSession| async move {
        s.execute("INSERT INTO t VALUES (1, 'a')", &[]).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    other
        .session()
        .execute_batch("DELETE FROM t")
        .await
        .unwrap();
    let report = liteorm_changeset::apply(&db, &cs).await.unwrap();
    assert_eq!((report.applied, report.skipped_tables.len()), (1, 0));
    other
        .session()
        .execute_batch("DROP TABLE t; CREATE TABLE t(id, v, PRIMARY KEY(v))")
        .await
        .unwrap();
    let report = liteorm_changeset::apply(&db, &cs).await.unwrap();
    assert_eq!(report.applied, 0);
    assert_eq!(report.skipped_tables.len(), 1, "{report:?}");
    assert_eq!(
        report.skipped_tables[0].reason,
        SkipReason::PrimaryKeyMismatch
    );
    other.release().await;
}

/// A changeset inserting one row into `t` and one into `u`, and a target that has both tables
/// (empty); the temporary directories live as long as the returned value.
async fn two_table_changeset_and_target() -> (
    liteorm_changeset::Changeset,
    SqliteSession,
    [tempfile::TempDir; 2],
) {
    let (src, d1) = file_db().await;
    seed(&src, 0).await;
    src.execute_batch("CREATE TABLE u(k TEXT PRIMARY KEY)")
        .await
        .unwrap();
    let cs = captured(
        &src,
        &["t", "u"],
        "INSERT INTO t VALUES (1, 'a', 0.0, NULL); INSERT INTO u VALUES ('x')",
    )
    .await;
    let (target, d2) = file_db().await;
    seed(&target, 0).await;
    target
        .execute_batch("CREATE TABLE u(k TEXT PRIMARY KEY)")
        .await
        .unwrap();
    (cs, target, [d1, d2])
}
