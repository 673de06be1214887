//! Changegroups: merging many changesets or patchsets into one, picking single changes, and
//! conforming changes recorded before a schema change to the current schema.

use liteorm_changeset::{
    Capture, Changegroup, Changeset, Error, Patchset, SchemaChangegroup, apply,
};
use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;
use tempfile::TempDir;

use crate::support::{captured, dump, file_db, seed, trickle};

const STEPS: [&str; 5] = [
    "INSERT INTO t VALUES (10, 'ten', 1.0, NULL), (11, 'eleven', 1.0, NULL)",
    "UPDATE t SET name = 'TEN' WHERE id = 10; UPDATE t SET score = 9.5 WHERE id = 1",
    "DELETE FROM t WHERE id = 11; DELETE FROM t WHERE id = 2",
    "UPDATE t SET name = 'one' WHERE id = 1; INSERT INTO t VALUES (2, 'two again', 0.0, NULL)",
    "UPDATE t SET data = X'FF' WHERE id IN (1, 2, 3, 10)",
];

#[tokio::test]
async fn merging_many_changesets_equals_applying_them_in_order() {
    let (primary, _dir) = file_db().await;
    seed(&primary, 3).await;
    let (replica, _dir2) = file_db().await;
    seed(&replica, 3).await;
    let mut steps = Vec::new();
    for sql in STEPS {
        steps.push(captured(&primary, &["t"], sql).await);
    }
    let merged: Changeset = Changegroup::merge(&steps).unwrap();
    let separately: usize = steps.iter().map(|s| s.changes().unwrap().len()).sum();
    // 11 is inserted then deleted (gone); 10 inserted then updated (one insert); 1 and 2 merge.
    assert_eq!(merged.changes().unwrap().len(), 4, "from {separately}");
    apply(&replica, &merged).await.unwrap();
    assert_eq!(dump(&replica, "t").await, dump(&primary, "t").await);

    // Adding one at a time gives the same bytes; concat is the two-input case.
    let mut group = Changegroup::new().unwrap();
    for step in &steps {
        group.add(step).unwrap();
    }
    assert_eq!(group.output().unwrap(), merged);
    assert_eq!(
        Changegroup::merge([&steps[0], &steps[1]]).unwrap(),
        steps[0].concat(&steps[1]).unwrap()
    );
}

#[tokio::test]
async fn merging_patchsets() {
    let (primary, _dir) = file_db().await;
    seed(&primary, 3).await;
    let (replica, _dir2) = file_db().await;
    seed(&replica, 3).await;
    let mut steps: Vec<Patchset> = Vec::new();
    for sql in STEPS {
        steps.push(
            Capture::new(&primary)
                .tables(["t"])
                .patchset(move |s| async move {
                    s.execute_batch(sql).await?;
                    Ok::<_, Error>(())
                })
                .await
                .unwrap(),
        );
    }
    let merged = Changegroup::merge(&steps).unwrap();
    apply(&replica, &merged).await.unwrap();
    assert_eq!(dump(&replica, "t").await, dump(&primary, "t").await);
}

#[tokio::test]
async fn a_table_recorded_with_other_columns_is_a_schema_mismatch() {
    let (db, _dir) = file_db().await;
    seed(&db, 2).await;
    let before = captured(&db, &["t"], "UPDATE t SET name = 'x' WHERE id = 1").await;
    db.execute_batch("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'dflt'")
        .await
        .unwrap();
    let after = captured(&db, &["t"], "UPDATE t SET name = 'y' WHERE id = 2").await;
    let mut group = Changegroup::new().unwrap();
    group.add(&before).unwrap();
    let err = group.add(&after).unwrap_err();
    match &err {
        Error::SchemaMismatch { table, detail } => {
            assert_eq!(table, "t");
            assert!(
                detail.contains("record 4 columns") && detail.contains("record 5"),
                "{detail}"
            );
        }
        other => panic!("{other}"),
    }
    // SQLite leaves the group undefined after a failed add: it is refused from then on.
    assert!(matches!(group.output(), Err(Error::Misuse(_))));
}

/// A seeded database, a changeset recorded on it, then `ALTER TABLE t ADD COLUMN extra TEXT
/// DEFAULT 'dflt'`, then a changeset recorded after that.
async fn before_and_after_a_new_column() -> (SqliteSession, TempDir, Changeset, Changeset) {
    let (db, dir) = file_db().await;
    seed(&db, 2).await;
    let before = captured(&db, &["t"], "INSERT INTO t VALUES (3, 'three', 3.0, NULL)").await;
    db.execute_batch("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'dflt'")
        .await
        .unwrap();
    let after = captured(&db, &["t"], "UPDATE t SET extra = 'set' WHERE id = 1").await;
    (db, dir, before, after)
}

#[tokio::test]
async fn merge_with_schema_fills_in_columns_added_since_and_needs_sqlite_3_44() {
    let (db, _dir, before, after) = before_and_after_a_new_column().await;
    let merged = Changegroup::merge_with_schema(&db, [before.clone(), after.clone()]).await;
    if db.info().version_number < 3_044_000 {
        let err = merged.unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { capability, .. } if capability.contains(">= 3.44.0")),
            "{err}"
        );
        return;
    }
    let mut changes = merged.unwrap().changes().unwrap();
    changes.sort_by_key(|c| c.primary_key()[0].to_string());
    assert!(changes.iter().all(|c| c.column_count() == 5));
    // The old insert got the new column's default.
    assert_eq!(changes[1].new[4], Some(Value::Text("dflt".into())));
    assert_eq!(changes[0].new[4], Some(Value::Text("set".into())));

    // A changeset for a table the database does not have cannot be conformed.
    let (other, _dir2) = file_db().await;
    other
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let err = Changegroup::merge_with_schema(&other, [after])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::SchemaMismatch { table, .. } if table == "t"),
        "{err}"
    );
}

#[tokio::test]
async fn add_filtered_keeps_the_chosen_changes_and_needs_sqlite_3_46() {
    let (db, _dir) = file_db().await;
    seed(&db, 4).await;
    let cs = captured(&db, &["t"], "UPDATE t SET name = 'changed'").await;
    let mut group = Changegroup::new().unwrap();
    let added = group
        .add_filtered(&cs, |change| change.primary_key()[0] == Value::Integer(2))
        .map(|_| ());
    if db.info().version_number < 3_046_000 {
        let err = added.unwrap_err();
        assert!(
            matches!(&err, Error::Unsupported { capability, .. } if capability.contains(">= 3.46.0")),
            "{err}"
        );
        return;
    }
    added.unwrap();
    let kept = group.output().unwrap().changes().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].primary_key(), [Value::Integer(2)]);
}

#[tokio::test]
async fn a_group_adds_from_streams_and_writes_to_one_as_from_blobs() {
    let (primary, _dir) = file_db().await;
    seed(&primary, 3).await;
    let mut steps = Vec::new();
    for sql in STEPS {
        steps.push(captured(&primary, &["t"], sql).await);
    }
    let merged: Changeset = Changegroup::merge(&steps).unwrap();

    let mut group = Changegroup::<Changeset>::new().unwrap();
    for step in &steps {
        group.add_stream(trickle(step.as_bytes())).unwrap();
    }
    assert_eq!(group.output().unwrap(), merged);
    let written = group.output_stream(Vec::new()).unwrap();
    assert_eq!(written, merged.as_bytes());

    // A patchset stream in a group of changesets, and a truncated stream, are refused, and the
    // group is unusable afterwards (part of the input may be in it).
    let patch = Capture::new(&primary)
        .tables(["t"])
        .patchset(|s| async move {
            s.execute("DELETE FROM t WHERE id = 3", &[]).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let mut group = Changegroup::<Changeset>::new().unwrap();
    let err = group.add_stream(patch.as_bytes()).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(matches!(group.output(), Err(Error::Misuse(_))));
    let bytes = steps[0].as_bytes();
    let mut group = Changegroup::<Changeset>::new().unwrap();
    let err = group.add_stream(&bytes[..bytes.len() - 3]).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
}

#[tokio::test]
async fn a_schema_changegroup_takes_inputs_one_at_a_time() {
    let (db, _dir, before, after) = before_and_after_a_new_column().await;
    let group = SchemaChangegroup::<Changeset>::new(&db).await;
    if db.info().version_number < 3_044_000 {
        assert!(matches!(group.unwrap_err(), Error::Unsupported { .. }));
        return;
    }
    let mut group = group.unwrap();
    group.add(&before).await.unwrap();
    group.add(&after).await.unwrap();
    let one_call = Changegroup::merge_with_schema(&db, [before.clone(), after.clone()])
        .await
        .unwrap();
    assert_eq!(group.output().unwrap(), one_call);
    drop(group);
    // The connection it held is back: the database takes writes.
    db.execute("DELETE FROM t WHERE id = 2", &[]).await.unwrap();

    // A table the database does not have: named, and the group is unusable afterwards.
    let (other, _dir2) = file_db().await;
    other
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let mut group = SchemaChangegroup::<Changeset>::new(&other).await.unwrap();
    let err = group.add(&after).await.unwrap_err();
    assert!(
        matches!(&err, Error::SchemaMismatch { table, .. } if table == "t"),
        "{err}"
    );
    assert!(matches!(group.output(), Err(Error::Misuse(_))));
}
