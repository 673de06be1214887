//! Changesets and patchsets built by hand: they apply like the statements they describe, invert
//! like captured ones, and a change that breaks SQLite's rules is refused with its reason.

use liteorm_changeset::{Change, ChangeOp, Changeset, Error, Patchset, apply};
use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;

use crate::support::{dump, seed};

/// `t` seeded with rows 1..=3 (see [`seed`]), in memory.
async fn seeded() -> SqliteSession {
    let db = SqliteSession::open_in_memory().await.unwrap();
    seed(&db, 3).await;
    db
}

fn row(id: i64) -> [Value; 4] {
    [
        id.into(),
        format!("row-{id}").into(),
        (id as f64 / 2.0).into(),
        id.to_le_bytes().to_vec().into(),
    ]
}

const STATEMENTS: &str = "INSERT INTO t VALUES (10, 'ten', NULL, X'0A'); \
    UPDATE t SET name = 'TWO', score = 2.25 WHERE id = 2; DELETE FROM t WHERE id = 3";

#[tokio::test]
async fn a_built_changeset_applies_like_the_statements_it_describes_and_inverts() {
    let mut builder = Changeset::builder();
    builder
        .table("t", [1, 0, 0, 0])
        .unwrap()
        .insert([10.into(), "ten".into(), Value::Null, vec![10u8].into()])
        .unwrap()
        .update(
            [Some(2.into()), Some("row-2".into()), Some(1.0.into()), None],
            [None, Some("TWO".into()), Some(2.25.into()), None],
        )
        .unwrap()
        .delete(row(3))
        .unwrap();
    assert_eq!(builder.len(), 3);
    let built = builder.finish().unwrap();

    let expected = seeded().await;
    expected.execute_batch(STATEMENTS).await.unwrap();
    let target = seeded().await;
    let report = apply(&target, &built).await.unwrap();
    assert_eq!((report.changes, report.applied), (3, 3));
    assert_eq!(dump(&target, "t").await, dump(&expected, "t").await);

    // It is what SQLite itself records for those statements (one change per row, so the order
    // within the table does not matter once sorted).
    let source = seeded().await;
    let captured = crate::support::captured(&source, &["t"], STATEMENTS).await;
    let mut sqlite_changes = captured.changes().unwrap();
    let mut built_changes = built.changes().unwrap();
    for changes in [&mut sqlite_changes, &mut built_changes] {
        changes.sort_by_key(|c| match c.primary_key()[..] {
            [Value::Integer(id)] => id,
            ref other => panic!("unexpected key {other:?}"),
        });
    }
    assert_eq!(built_changes, sqlite_changes);

    apply(&target, &built.invert().unwrap()).await.unwrap();
    assert_eq!(dump(&target, "t").await, dump(&seeded().await, "t").await);
}

#[tokio::test]
async fn a_built_patchset_keeps_only_the_key_of_a_delete_and_applies() {
    let mut builder = Patchset::builder();
    builder
        .table("t", [1, 0, 0, 0])
        .unwrap()
        // A full row is accepted; a patchset writes only its key.
        .delete(row(1))
        .unwrap()
        .update(
            [Some(2.into()), None, None, None],
            [None, Some("TWO".into()), None, None],
        )
        .unwrap();
    let built = builder.finish().unwrap();
    let changes = built.changes().unwrap();
    assert_eq!(changes[0].op, ChangeOp::Delete);
    assert_eq!(changes[0].old, [Some(1.into()), None, None, None]);

    let target = seeded().await;
    apply(&target, &built).await.unwrap();
    let expected = seeded().await;
    expected
        .execute_batch("DELETE FROM t WHERE id = 1; UPDATE t SET name = 'TWO' WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(dump(&target, "t").await, dump(&expected, "t").await);
}

#[tokio::test]
async fn a_conflicting_built_change_aborts_the_whole_apply() {
    let mut builder = Changeset::builder();
    builder
        .table("t", [1, 0, 0, 0])
        .unwrap()
        .insert(row(10))
        .unwrap()
        // Row 2 does not hold these old values on the target.
        .delete([2.into(), "not row-2".into(), 1.0.into(), Value::Null])
        .unwrap();
    let built = builder.finish().unwrap();
    let target = seeded().await;
    let before = dump(&target, "t").await;
    let err = apply(&target, &built).await.unwrap_err();
    assert!(matches!(err, Error::Aborted { .. }), "{err}");
    assert_eq!(dump(&target, "t").await, before, "nothing applied");
}

/// The reason a change is refused, and that the builder is unchanged by it.
fn refused(
    add: impl FnOnce(
        &mut liteorm_changeset::Builder<Changeset>,
    ) -> Result<&mut liteorm_changeset::Builder<Changeset>, Error>,
) -> String {
    let mut builder = Changeset::builder();
    builder
        .table("t", [1, 0])
        .unwrap()
        .insert([1.into(), 2.into()])
        .unwrap();
    let before = builder.clone().finish().unwrap();
    let err = add(&mut builder).map(drop).unwrap_err();
    assert!(matches!(err, Error::Invalid { entry: 1, .. }), "{err:?}");
    assert_eq!(builder.finish().unwrap(), before, "nothing written");
    err.to_string()
}

#[test]
fn a_change_that_breaks_a_rule_is_refused_with_its_reason() {
    let cases: [(&str, String); 9] = [
        (
            "2 values for 3 columns",
            refused(|b| b.table("u", [1, 0, 0])?.insert([1.into(), 2.into()])),
        ),
        (
            "key column 0 is NULL",
            refused(|b| b.insert([Value::Null, 2.into()])),
        ),
        (
            "new value of column 1 is missing",
            refused(|b| {
                b.push(&Change {
                    table: "t".into(),
                    op: ChangeOp::Insert,
                    indirect: false,
                    pk: vec![1, 0],
                    old: Vec::new(),
                    new: vec![Some(1.into()), None],
                })
            }),
        ),
        (
            "it changes no column",
            refused(|b| b.update([Some(1.into()), None], [None, None])),
        ),
        (
            "has an old value but not a new one",
            refused(|b| b.update([Some(1.into()), Some(2.into())], [None, None])),
        ),
        (
            "key column 0 has a new value",
            refused(|b| {
                b.update(
                    [Some(1.into()), Some(2.into())],
                    [Some(5.into()), Some(3.into())],
                )
            }),
        ),
        (
            "key column 0 has no old value",
            refused(|b| b.update([None, Some(2.into())], [None, Some(3.into())])),
        ),
        ("invalid table name", refused(|b| b.table("a\0b", [1]))),
        ("has no key column", refused(|b| b.table("u", [0, 0]))),
    ];
    for (expected, message) in cases {
        assert!(
            message.contains(expected),
            "{message:?} should say {expected:?}"
        );
    }
}

#[test]
fn changes_from_json_lines_build_the_blob_they_came_from() {
    let mut builder = Changeset::builder();
    builder
        .table("t", [1, 0])
        .unwrap()
        .insert([1.into(), Value::Real(0.1 + 0.2)])
        .unwrap()
        .table("u", [0, 1])
        .unwrap()
        .delete([Value::Blob(vec![1, 2]), "k".into()])
        .unwrap();
    let built = builder.finish().unwrap();
    let lines: String = built
        .changes()
        .unwrap()
        .iter()
        .map(|c| serde_json::to_string(c).unwrap() + "\n")
        .collect();
    assert_eq!(Changeset::from_json(&lines).unwrap(), built);
    assert_eq!(
        Changeset::from_json(&built.to_json().unwrap()).unwrap(),
        built
    );

    let err = Changeset::from_json(&format!("{lines}{{\"table\":\"t\",\"op\":\"UPSERT\"}}\n"))
        .unwrap_err();
    assert!(
        matches!(err, Error::Invalid { entry: 2, .. }) && err.to_string().contains("JSON line 3"),
        "{err}"
    );
}
