//! Inspect: changes as typed entries, the stable JSON format and SQL rendering (snapshotted),
//! the lazy iterator, and validation errors that name the change and byte.

use liteorm_changeset::{Capture, ChangeOp, Changeset, ColumnNames, Error, Patchset};
use liteorm_core::{Session, Value};

use crate::support::{captured, file_db, seed};

/// `kv(k TEXT PRIMARY KEY, v)`: `v` has no type affinity, so every value keeps its type.
const KV: &str = "CREATE TABLE kv(k TEXT PRIMARY KEY, v)";

/// Sorted lines: the order of rows within a table is not defined.
fn sorted(lines: impl IntoIterator<Item = String>) -> String {
    let mut lines: Vec<String> = lines.into_iter().collect();
    lines.sort();
    lines.join("\n")
}

fn json_lines(changes: &Changeset) -> String {
    sorted(
        changes
            .iter()
            .map(|c| serde_json::to_string(&c.unwrap()).unwrap()),
    )
}

fn snapshot(name: &str, text: &str) {
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

#[tokio::test]
async fn json_keeps_every_storage_class_apart() {
    let (db, _dir) = file_db().await;
    db.execute_batch(KV).await.unwrap();
    let cs = captured(
        &db,
        &["kv"],
        "INSERT INTO kv VALUES ('integer', 1), ('real', 1.0), ('null', NULL), ('text', '1'), \
         ('blob', X'00FF'), ('empty blob', X''), ('big', 9007199254740993), ('inf', 9e999), \
         ('quote', 'say \"hi\"')",
    )
    .await;
    snapshot("inspect_json_value_types", &json_lines(&cs));
}

#[tokio::test]
async fn json_tells_not_recorded_from_null_in_updates_and_patchset_deletes() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let sql = "UPDATE t SET name = NULL WHERE id = 1; UPDATE t SET score = 7.5 WHERE id = 2; \
               DELETE FROM t WHERE id = 3";
    let cs = captured(&db, &["t"], sql).await;
    snapshot("inspect_json_changeset_update_delete", &json_lines(&cs));

    // The same statements as a patchset: no old values except the key.
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let ps = Capture::new(&db)
        .tables(["t"])
        .patchset(|s| async move {
            s.execute_batch(sql).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let lines = sorted(
        ps.iter()
            .map(|c| serde_json::to_string(&c.unwrap()).unwrap()),
    );
    snapshot("inspect_json_patchset_update_delete", &lines);
}

#[tokio::test]
async fn to_json_is_an_array_of_the_per_change_objects() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let cs = captured(
        &db,
        &["t"],
        "DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (9, 'x', NULL, NULL)",
    )
    .await;
    let json = cs.to_json().unwrap();
    let parsed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let each: Vec<serde_json::Value> = cs
        .iter()
        .map(|c| serde_json::to_value(c.unwrap()).unwrap())
        .collect();
    assert_eq!(parsed, each);
    assert_eq!(
        json.lines().count(),
        2 + 2,
        "one change per line, between brackets"
    );
    assert_eq!(Changeset::default().to_json().unwrap(), "[]");
}

#[tokio::test]
async fn sql_rendering_with_and_without_column_names() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    db.execute_batch(KV).await.unwrap();
    let cs = Capture::new(&db)
        .changeset_with(|s, recorder| async move {
            s.execute_batch(
                "INSERT INTO t VALUES (10, 'it''s', 2.5, X'00FF'); \
                 UPDATE t SET name = NULL, score = 1 WHERE id = 1; \
                 DELETE FROM t WHERE id = 2; \
                 INSERT INTO kv VALUES ('k', 1.0)",
            )
            .await?;
            recorder.set_indirect(true).await?;
            s.execute("UPDATE t SET name = 'side effect' WHERE id = 3", &[])
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let names = ColumnNames::of(&db).await.unwrap();
    assert_eq!(
        names.get("t").unwrap(),
        ["id", "name", "score", "data"].map(String::from)
    );
    let named = sorted(cs.to_sql(&names).unwrap().lines().map(String::from));
    snapshot("inspect_sql_with_column_names", &named);
    let positional = sorted(
        cs.to_sql(&ColumnNames::new())
            .unwrap()
            .lines()
            .map(String::from),
    );
    snapshot("inspect_sql_positional_columns", &positional);
}

#[tokio::test]
async fn rendered_sql_replays_the_changes() {
    let (primary, _dir) = file_db().await;
    seed(&primary, 5).await;
    let (replica, _dir2) = file_db().await;
    seed(&replica, 5).await;
    let cs = captured(
        &primary,
        &["t"],
        "INSERT INTO t VALUES (6, 'six', NULL, X'06'); UPDATE t SET name = 'one', score = NULL \
         WHERE id = 1; DELETE FROM t WHERE id = 4",
    )
    .await;
    let sql = cs
        .to_sql(&ColumnNames::of(&primary).await.unwrap())
        .unwrap();
    replica.execute_batch(&sql).await.unwrap();
    assert_eq!(
        crate::support::dump(&replica, "t").await,
        crate::support::dump(&primary, "t").await
    );
}

#[tokio::test]
async fn the_iterator_yields_what_changes_collects() {
    let (db, _dir) = file_db().await;
    seed(&db, 50).await;
    let cs = captured(
        &db,
        &["t"],
        "UPDATE t SET score = score * 2 WHERE id % 3 = 0",
    )
    .await;
    let collected = cs.changes().unwrap();
    let iterated: Vec<_> = cs.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(iterated, collected);
    let mut by_ref = 0;
    for change in &cs {
        assert_eq!(change.unwrap().op, ChangeOp::Update);
        by_ref += 1;
    }
    assert_eq!(by_ref, 16);
    // Lazy: taking one change decodes one.
    assert_eq!(cs.iter().take(1).count(), 1);
}

#[tokio::test]
async fn validation_names_the_change_and_byte_of_a_corruption() {
    let (db, _dir) = file_db().await;
    seed(&db, 0).await;
    let cs = captured(
        &db,
        &["t"],
        "INSERT INTO t VALUES (1, 'a', 1.0, NULL), (2, 'b', 2.0, NULL), (3, 'c', 3.0, NULL)",
    )
    .await;
    let bytes = cs.as_bytes();
    // The prefixes that validate end between two changes: after the header and each change.
    let boundaries: Vec<usize> = (1..=bytes.len())
        .filter(|&n| Changeset::validate(&bytes[..n]).is_ok())
        .collect();
    assert_eq!(boundaries.len(), 4, "{boundaries:?}");

    // An unknown op byte at the start of the second change.
    let mut bad_op = bytes.to_vec();
    bad_op[boundaries[1]] = 0x42;
    match Changeset::from_bytes(bad_op).unwrap_err() {
        Error::Invalid {
            entry,
            offset,
            reason,
            ..
        } => {
            assert_eq!((entry, offset), (1, Some(boundaries[1])));
            assert_eq!(reason, "unknown op byte 0x42");
        }
        other => panic!("{other}"),
    }
    // Cut in the middle of the third change.
    let cut = (boundaries[2] + boundaries[3]) / 2;
    let err = Changeset::from_bytes(&bytes[..cut]).unwrap_err();
    assert!(
        matches!(err, Error::Invalid { entry: 2, offset: Some(o), .. } if o == cut),
        "{err}"
    );
    assert!(err.to_string().contains("change #2"), "{err}");
    // A changeset is not a patchset.
    assert!(Patchset::from_bytes(bytes).is_err());
}

#[tokio::test]
async fn column_names_of_another_dialect_is_unsupported() {
    let err = ColumnNames::of(&liteorm_tests::MemSession::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    // Without names a change still renders, by position.
    let change = liteorm_changeset::Change {
        table: "t".into(),
        op: ChangeOp::Delete,
        indirect: false,
        pk: vec![1, 0],
        old: vec![Some(Value::Integer(1)), Some(Value::Null)],
        new: Vec::new(),
    };
    assert_eq!(
        change.to_sql(&ColumnNames::new()),
        r#"DELETE FROM "t" WHERE "column1" = 1 AND "column2" IS NULL;"#
    );
}
