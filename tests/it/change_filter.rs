//! `Apply::filter_change`: a filter per change, run by SQLite's `sqlite3changeset_apply_v3`
//! where linked (the bundled cell) and by liteorm before SQLite applies elsewhere (the system
//! cell): both cells run these tests, so both paths give these results.

use std::sync::{Arc, Mutex};

use liteorm_changeset::{Change, ChangeOp, Changeset, Error, SkipReason, apply, stream};
use liteorm_core::{Session, Value};

use crate::support::{captured, dump, file_db, seed};

const MIX: &str = "UPDATE t SET name = 'one' WHERE id = 1; DELETE FROM t WHERE id = 2; \
                   INSERT INTO t VALUES (9, 'nine', 9.0, X'09'); UPDATE t SET score = 0 WHERE id = 3";

/// Rows 100..=1200 more: enough for a changeset applied on a blocking thread with its tables
/// listed meanwhile.
const BULK: &str = "WITH RECURSIVE c(i) AS (SELECT 100 UNION ALL SELECT i + 1 FROM c WHERE i < 1200) \
    INSERT INTO t SELECT i, 'bulk-' || i, i / 4.0, NULL FROM c";

/// A seeded target, and what it holds after the changes of `cs` that `keep` keeps.
async fn expected(cs: &Changeset, keep: impl Fn(&Change) -> bool) -> Vec<Vec<Value>> {
    let (db, _dir) = file_db().await;
    seed(&db, 4).await;
    let mut builder = Changeset::builder();
    for change in cs.changes().unwrap().iter().filter(|c| keep(c)) {
        builder.push(change).unwrap();
    }
    apply(&db, &builder.finish().unwrap()).await.unwrap();
    dump(&db, "t").await
}

#[tokio::test]
async fn only_the_changes_the_filter_keeps_are_applied_and_counted() {
    let (source, _dir) = file_db().await;
    seed(&source, 4).await;
    let cs = captured(&source, &["t"], MIX).await;
    let (target, _tdir) = file_db().await;
    seed(&target, 4).await;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let report = apply(&target, &cs)
        .filter_change(move |c| {
            log.lock().unwrap().push((c.op, c.primary_key()));
            c.op != ChangeOp::Delete
        })
        .await
        .unwrap();
    assert_eq!(
        (
            report.changes,
            report.attempted,
            report.applied,
            report.filtered_changes
        ),
        (4, 3, 3, 1)
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "every change was offered once"
    );
    assert_eq!(
        dump(&target, "t").await,
        expected(&cs, |c| c.op != ChangeOp::Delete).await
    );
}

#[tokio::test]
async fn the_filter_sees_typed_values_and_streams_and_large_blobs_filter_alike() {
    let (source, _dir) = file_db().await;
    seed(&source, 4).await;
    source.execute_batch(BULK).await.unwrap();
    let cs = captured(
        &source,
        &["t"],
        "UPDATE t SET name = 'even' WHERE id % 2 = 0; DELETE FROM t WHERE id % 3 = 0",
    )
    .await;
    assert!(cs.len() > 16 * 1024, "{} bytes", cs.len());
    let odd_keys = |c: &Change| matches!(c.primary_key()[..], [Value::Integer(id)] if id % 2 == 1);

    let mut results = Vec::new();
    for streamed in [false, true] {
        let (target, _tdir) = file_db().await;
        seed(&target, 4).await;
        target.execute_batch(BULK).await.unwrap();
        let report = if streamed {
            stream::apply(&target, std::io::Cursor::new(cs.as_bytes().to_vec()))
                .filter_change(odd_keys)
                .await
        } else {
            apply(&target, &cs).filter_change(odd_keys).await
        }
        .unwrap();
        let kept = cs.changes().unwrap().iter().filter(|c| odd_keys(c)).count();
        assert_eq!(report.attempted, kept);
        assert_eq!(report.filtered_changes, report.changes - kept);
        results.push(dump(&target, "t").await);
    }
    assert_eq!(results[0], results[1]);
    assert!(
        results[0]
            .iter()
            .any(|row| row[1] == Value::from("bulk-102")),
        "even rows untouched"
    );
    assert!(
        !results[0].iter().any(|row| row[0] == Value::Integer(105)),
        "odd deletes applied"
    );
}

#[tokio::test]
async fn the_table_filter_and_the_schema_check_come_first() {
    let (source, _dir) = file_db().await;
    seed(&source, 4).await;
    source
        .execute_batch(
            "CREATE TABLE u(id INTEGER PRIMARY KEY); CREATE TABLE v(id INTEGER PRIMARY KEY)",
        )
        .await
        .unwrap();
    let cs = captured(
        &source,
        &["t", "u", "v"],
        "INSERT INTO u VALUES (1); INSERT INTO v VALUES (1); DELETE FROM t WHERE id = 4",
    )
    .await;
    // The target has no table v.
    let (target, _tdir) = file_db().await;
    seed(&target, 4).await;
    target
        .execute_batch("CREATE TABLE u(id INTEGER PRIMARY KEY)")
        .await
        .unwrap();

    let offered = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&offered);
    let report = apply(&target, &cs)
        .filter(|table| table != "u")
        .filter_change(move |c| {
            log.lock().unwrap().push(c.table.to_string());
            true
        })
        .await
        .unwrap();
    assert_eq!(*offered.lock().unwrap(), ["t"]);
    assert_eq!(report.filtered_tables, ["u"]);
    assert_eq!(report.skipped_tables.len(), 1);
    assert_eq!(report.skipped_tables[0].table, "v");
    assert_eq!(report.skipped_tables[0].reason, SkipReason::Missing);
    assert_eq!(
        (report.attempted, report.applied, report.filtered_changes),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn an_inverting_apply_filters_the_inverted_changes() {
    let (db, _dir) = file_db().await;
    seed(&db, 4).await;
    let cs = captured(&db, &["t"], MIX).await;
    let ops = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&ops);
    // Undo everything but the insert of row 9 (a delete, inverted).
    let report = apply(&db, &cs)
        .invert()
        .filter_change(move |c| {
            log.lock().unwrap().push(c.op);
            c.op != ChangeOp::Delete
        })
        .await
        .unwrap();
    let mut ops = ops.lock().unwrap().clone();
    ops.sort();
    assert_eq!(
        ops,
        [
            ChangeOp::Insert,
            ChangeOp::Update,
            ChangeOp::Update,
            ChangeOp::Delete
        ]
    );
    assert_eq!(report.filtered_changes, 1);
    let (fresh, _fdir) = file_db().await;
    seed(&fresh, 4).await;
    fresh
        .execute("INSERT INTO t VALUES (9, 'nine', 9.0, X'09')", &[])
        .await
        .unwrap();
    assert_eq!(dump(&db, "t").await, dump(&fresh, "t").await);
}

#[tokio::test]
async fn a_panicking_change_filter_aborts_and_applies_nothing() {
    let (source, _dir) = file_db().await;
    seed(&source, 4).await;
    let cs = captured(&source, &["t"], MIX).await;
    let (target, _tdir) = file_db().await;
    seed(&target, 4).await;
    let before = dump(&target, "t").await;
    let mut calls = 0;
    let err = apply(&target, &cs)
        .filter_change(move |_| {
            calls += 1;
            assert!(calls < 2, "the filter gives up");
            true
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::CallbackPanicked { callback: "change filter", message } if message.contains("gives up")),
        "{err:?}"
    );
    assert_eq!(dump(&target, "t").await, before);
    // The connection is usable afterwards.
    assert_eq!(apply(&target, &cs).await.unwrap().applied, 4);
}
