//! Invert and concat: pure functions over the blob, no connection needed.

use liteorm_changeset::{ChangeOp, Changeset, Error, Patchset, apply};
use liteorm_core::Value;

use crate::support::{captured, dump, file_db, seed};

#[tokio::test]
async fn invert_swaps_ops_and_applying_it_restores_the_original() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let original = dump(&db, "t").await;
    let cs = captured(&db, &["t"], "INSERT INTO t VALUES (4, 'd', 0.0, NULL); UPDATE t SET name = 'x' WHERE id = 1; DELETE FROM t WHERE id = 2",
    )
    .await;
    let inverse = cs.invert().unwrap();
    let mut ops: Vec<(ChangeOp, Vec<Value>)> = inverse
        .changes()
        .unwrap()
        .into_iter()
        .map(|c| (c.op, c.primary_key()))
        .collect();
    ops.sort_by_key(|(_, pk)| pk[0].to_string());
    assert_eq!(
        ops,
        [
            (ChangeOp::Update, vec![Value::Integer(1)]),
            (ChangeOp::Insert, vec![Value::Integer(2)]),
            (ChangeOp::Delete, vec![Value::Integer(4)]),
        ]
    );
    assert_eq!(
        inverse.invert().unwrap(),
        cs,
        "invert is an involution, byte for byte"
    );
    apply(&db, &inverse).await.unwrap();
    assert_eq!(dump(&db, "t").await, original);
}

#[tokio::test]
async fn concat_applied_equals_applying_both_in_order() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let (copy, _dir2) = file_db().await;
    seed(&copy, 3).await;
    let a = captured(
        &db,
        &["t"],
        "UPDATE t SET name = 'a' WHERE id = 1; INSERT INTO t VALUES (9, 'nine', 0.0, NULL)",
    )
    .await;
    let b = captured(&db, &["t"], "UPDATE t SET name = 'b' WHERE id = 1; DELETE FROM t WHERE id = 9; DELETE FROM t WHERE id = 3").await;
    let both = a.concat(&b).unwrap();
    // Insert-then-delete of row 9 cancels out; the two updates of row 1 merge into one.
    assert_eq!(both.changes().unwrap().len(), 2);
    apply(&copy, &both).await.unwrap();
    assert_eq!(dump(&copy, "t").await, dump(&db, "t").await);
}

#[tokio::test]
async fn join_keeps_every_change_and_applied_equals_applying_each_in_order() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let (copy, _dir2) = file_db().await;
    seed(&copy, 3).await;
    let a = captured(
        &db,
        &["t"],
        "UPDATE t SET name = 'a' WHERE id = 1; INSERT INTO t VALUES (9, 'nine', 0.0, NULL)",
    )
    .await;
    let b = captured(
        &db,
        &["t"],
        "UPDATE t SET name = 'b' WHERE id = 1; DELETE FROM t WHERE id = 9",
    )
    .await;
    let joined = Changeset::join([&a, &b]);
    // Nothing merges: both updates of row 1, the insert and the delete of row 9.
    assert_eq!(joined.as_bytes(), [a.as_bytes(), b.as_bytes()].concat());
    assert_eq!(Changeset::validate(joined.as_bytes()).unwrap(), 4);
    let ops: Vec<ChangeOp> = joined.changes().unwrap().iter().map(|c| c.op).collect();
    assert_eq!(ops.iter().filter(|&&op| op == ChangeOp::Update).count(), 2);
    apply(&copy, &joined).await.unwrap();
    assert_eq!(dump(&copy, "t").await, dump(&db, "t").await);
    assert_eq!(Changeset::join([&a]), a);
    assert!(Changeset::join([]).is_empty());
}

#[tokio::test]
async fn changesets_are_owned_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Changeset>();
    assert_send_sync::<Patchset>();
    let (db, _dir) = file_db().await;
    seed(&db, 1).await;
    let cs = captured(&db, &["t"], "DELETE FROM t").await;
    let clone = cs.clone();
    assert_eq!(
        clone.as_bytes().as_ptr(),
        cs.as_bytes().as_ptr(),
        "clones share the bytes"
    );
    let moved = std::thread::spawn(move || clone.invert().map(|i| i.len()))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(moved, cs.len());
}

#[test]
fn corrupt_input_to_invert_and_concat_is_an_error_not_a_crash() {
    // `from_bytes` refuses these; a caller holding raw bytes can only get a Changeset through it.
    for bytes in [
        &b"T"[..],
        b"T\x03\x01\x00\x00t\x00\x12",
        b"\xff\xff\xff",
        b"T\x7f\x7f\x7f",
    ] {
        assert!(Changeset::from_bytes(bytes).is_err(), "{bytes:?} accepted");
    }
    let valid = Changeset::default();
    assert!(valid.invert().unwrap().is_empty());
    assert!(valid.concat(&valid).unwrap().is_empty());
}

#[test]
fn unterminated_table_name_is_rejected_before_sqlite_can_loop_on_it() {
    // Regression: SQLite 3.51.3's in-memory iterator spins forever in
    // sessionChangesetBufferTblhdr on a header whose name has no NUL (found by this suite).
    for bytes in [&b"T\x7f\x7f\x7f"[..], b"T\x01\x01abc", b"T\x02\x01\x00"] {
        let err = Changeset::from_bytes(bytes).unwrap_err();
        let Error::Invalid {
            offset: Some(_), ..
        } = err
        else {
            panic!("{err}")
        };
    }
    let err = Patchset::from_bytes(&b"P\x01\x01t"[..]).unwrap_err();
    assert!(err.to_string().contains("not NUL-terminated"), "{err}");
}

#[tokio::test]
async fn inverted_iteration_reads_the_inverse_without_building_it() {
    let (db, _dir) = crate::support::file_db().await;
    crate::support::seed(&db, 4).await;
    let cs = crate::support::captured(
        &db,
        &["t"],
        "UPDATE t SET name = 'x', score = NULL WHERE id = 1; DELETE FROM t WHERE id = 2; \
         INSERT INTO t VALUES (9, 'nine', 9.5, NULL)",
    )
    .await;
    let inverted: Vec<_> = cs.iter_inverted().collect::<Result<_, _>>().unwrap();
    assert_eq!(inverted.len(), 3);
    assert_eq!(inverted, cs.invert().unwrap().changes().unwrap());
}
