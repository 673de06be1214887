//! The `sqlite3changeset_apply_v2` flags on `Apply`: invert, no savepoint, ignore no-ops and
//! foreign keys without actions, each with its version requirement.

use liteorm_changeset::{Capture, ConflictAction, ConflictKind, Error, apply};
use liteorm_core::Session;
use liteorm_sqlite::SqliteSession;

use crate::support::{captured, dump, file_db, seed};

const MIX: &str = "UPDATE t SET name = 'one' WHERE id = 1; DELETE FROM t WHERE id = 2; \
                   INSERT INTO t VALUES (9, 'nine', 9.0, X'09')";

#[tokio::test]
async fn invert_applies_the_inverse_without_building_it() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let original = dump(&db, "t").await;
    let cs = captured(&db, &["t"], MIX).await;
    let changed = dump(&db, "t").await;
    let report = apply(&db, &cs).invert().await.unwrap();
    assert_eq!(report.applied, 3);
    assert_eq!(dump(&db, "t").await, original);
    // The same as applying the inverted changeset, and inverting the inverse redoes it.
    apply(&db, &cs.invert().unwrap()).invert().await.unwrap();
    assert_eq!(dump(&db, "t").await, changed);
}

#[tokio::test]
async fn the_conflict_handler_sees_inverted_changes() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let cs = captured(&db, &["t"], "DELETE FROM t WHERE id = 2").await;
    // Undoing the delete re-inserts row 2, which now exists again: an insert conflict.
    db.execute("INSERT INTO t VALUES (2, 'back', 0.0, NULL)", &[])
        .await
        .unwrap();
    let report = apply(&db, &cs)
        .invert()
        .log_conflicts()
        .on_conflict(|_| ConflictAction::Omit)
        .await
        .unwrap();
    let (conflict, _) = &report.conflict_log[0];
    assert_eq!(conflict.kind, ConflictKind::Conflict);
    assert_eq!(
        conflict.change.as_ref().unwrap().op,
        liteorm_changeset::ChangeOp::Insert
    );
}

#[tokio::test]
async fn a_patchset_cannot_be_applied_inverted() {
    let (db, _dir) = file_db().await;
    seed(&db, 2).await;
    let ps = Capture::new(&db)
        .tables(["t"])
        .patchset(|s| async move {
            s.execute("DELETE FROM t WHERE id = 1", &[]).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let err = apply(&db, &ps).invert().await.unwrap_err();
    assert!(
        matches!(err, Error::Misuse(m) if m.contains("patchset")),
        "{err}"
    );
}

#[tokio::test]
async fn without_sqlites_own_savepoint_an_aborted_apply_still_changes_nothing() {
    // liteorm never asks SQLite for its own savepoint (`SQLITE_CHANGESETAPPLY_NOSAVEPOINT`).
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let cs = captured(&db, &["t"], MIX).await;
    let (target, _dir2) = file_db().await;
    seed(&target, 3).await;
    target
        .execute("INSERT INTO t VALUES (9, 'already', 0.0, NULL)", &[])
        .await
        .unwrap();
    let before = dump(&target, "t").await;
    let err = apply(&target, &cs).await.unwrap_err();
    assert!(matches!(err, Error::Aborted { .. }), "{err}");
    assert_eq!(dump(&target, "t").await, before);
    // And a clean one applies.
    let (clean, _dir3) = file_db().await;
    seed(&clean, 3).await;
    apply(&clean, &cs).await.unwrap();
    assert_eq!(dump(&clean, "t").await, dump(&db, "t").await);
}

#[tokio::test]
async fn ignore_noop_skips_conflicts_that_would_change_nothing() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let cs = captured(&db, &["t"], MIX).await;
    // The target already has every change: row 2 gone, row 9 there, row 1 renamed.
    let (target, _dir2) = file_db().await;
    seed(&target, 3).await;
    apply(&target, &cs).await.unwrap();

    let plain = apply(&target, &cs)
        .on_conflict(|_| ConflictAction::Omit)
        .await
        .unwrap();
    assert_eq!(plain.conflicts.values().map(|c| c.seen).sum::<usize>(), 3);

    let result = apply(&target, &cs).ignore_noop().await;
    if target.info().version_number < 3_042_000 {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { capability, .. } if capability.contains("IGNORENOOP")),
            "{err}"
        );
        return;
    }
    let report = result.unwrap();
    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    assert_eq!(dump(&target, "t").await, dump(&db, "t").await);
}

/// `parent` and `child` with ON DELETE CASCADE, one child per parent.
async fn family(db: &SqliteSession) {
    db.execute_batch(
        "CREATE TABLE parent(id INTEGER PRIMARY KEY); \
         CREATE TABLE child(id INTEGER PRIMARY KEY, \
                            parent INTEGER REFERENCES parent(id) ON DELETE CASCADE); \
         INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (10, 1), (20, 2)",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn fk_no_action_keeps_a_recorded_cascade_from_happening_twice() {
    let (primary, _dir) = file_db().await;
    family(&primary).await;
    // The cascade deletes child 10 too, and the session records that as an indirect change.
    let cs = captured(&primary, &[], "DELETE FROM parent WHERE id = 1").await;
    assert_eq!(cs.changes().unwrap().len(), 2);

    let (replica, _dir2) = file_db().await;
    family(&replica).await;
    // Applied as is, the replica cascades again and the recorded child delete finds no row.
    let err = apply(&replica, &cs).await.unwrap_err();
    assert!(
        matches!(&err, Error::Aborted { conflict } if conflict.kind == ConflictKind::NotFound),
        "{err}"
    );

    let result = apply(&replica, &cs).fk_no_action().await;
    if replica.info().version_number < 3_044_000 {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { capability, .. } if capability.contains("FKNOACTION")),
            "{err}"
        );
        return;
    }
    let report = result.unwrap();
    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    assert_eq!(dump(&replica, "child").await, dump(&primary, "child").await);
    assert_eq!(
        dump(&replica, "parent").await,
        dump(&primary, "parent").await
    );
}
