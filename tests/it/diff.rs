//! Diff: the changeset that turns a table of another database into the one in `main`, from a
//! file or an attached schema, and clear errors when the two do not match.

use liteorm_changeset::{Diff, Error, apply};
use liteorm_core::Session;
use liteorm_sqlite::SqliteSession;

use crate::support::{dump, file_db, seed};

fn snapshot(name: &str, text: &str) {
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

/// A `live` database and a `backup` that is `live` as it was before `changes`.
async fn live_and_backup(
    changes: &str,
) -> (
    SqliteSession,
    SqliteSession,
    String,
    tempfile::TempDir,
    tempfile::TempDir,
) {
    let (live, dir) = file_db().await;
    let (backup, backup_dir) = file_db().await;
    for db in [&live, &backup] {
        seed(db, 5).await;
    }
    live.execute_batch(changes).await.unwrap();
    let backup_path = backup_dir.path().join("test.db").display().to_string();
    (live, backup, backup_path, dir, backup_dir)
}

#[tokio::test]
async fn a_diff_from_a_file_turns_it_into_main() {
    let (live, backup, backup_path, _d1, _d2) = live_and_backup(
        "UPDATE t SET name = 'one' WHERE id = 1; DELETE FROM t WHERE id = 2; \
         INSERT INTO t VALUES (6, 'six', 3.0, NULL)",
    )
    .await;
    let cs = Diff::from_file(&live, &backup_path)
        .tables(["t"])
        .changeset()
        .await
        .unwrap();
    let mut sql: Vec<String> = cs
        .to_sql(&liteorm_changeset::ColumnNames::of(&live).await.unwrap())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    sql.sort();
    snapshot("diff_backup_to_live", &sql.join("\n"));
    apply(&backup, &cs).await.unwrap();
    assert_eq!(dump(&backup, "t").await, dump(&live, "t").await);

    // The file was detached again: a second diff (now empty) attaches it anew.
    let again = Diff::from_file(&live, &backup_path)
        .changeset()
        .await
        .unwrap();
    assert!(again.is_empty());
    let attached = live
        .query("SELECT name FROM pragma_database_list", &[])
        .await
        .unwrap();
    assert_eq!(attached.len(), 1, "only main");
}

#[tokio::test]
async fn a_diff_of_every_table_covers_the_keyed_ones_and_patchsets_work_too() {
    let (live, backup, backup_path, _d1, _d2) =
        live_and_backup("UPDATE t SET score = 0 WHERE id > 3").await;
    for db in [&live, &backup] {
        db.execute_batch("CREATE TABLE tags(name TEXT PRIMARY KEY); CREATE TABLE notes(body TEXT)")
            .await
            .unwrap();
    }
    live.execute_batch("INSERT INTO tags VALUES ('red'); INSERT INTO notes VALUES ('no key')")
        .await
        .unwrap();
    let ps = Diff::from_file(&live, &backup_path)
        .patchset()
        .await
        .unwrap();
    let mut tables: Vec<String> = ps.iter().map(|c| c.unwrap().table.to_string()).collect();
    tables.sort();
    assert_eq!(tables, ["t", "t", "tags"], "notes has no key");
    apply(&backup, &ps).await.unwrap();
    assert_eq!(dump(&backup, "t").await, dump(&live, "t").await);
    assert_eq!(dump(&backup, "tags").await, dump(&live, "tags").await);
}

#[tokio::test]
async fn a_diff_from_a_schema_attached_to_a_pinned_session() {
    let (live, _backup, backup_path, _d1, _d2) =
        live_and_backup("DELETE FROM t WHERE id = 5").await;
    let pinned = live.pin().await.unwrap();
    let session = pinned.session();
    session
        .execute("ATTACH DATABASE ? AS old", &[backup_path.as_str().into()])
        .await
        .unwrap();
    let cs = Diff::from_schema(&session, "old")
        .tables(["t"])
        .changeset()
        .await
        .unwrap();
    let changes = cs.changes().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].op, liteorm_changeset::ChangeOp::Delete);
    // A pool session has no such schema on its connections.
    let err = Diff::from_schema(&live, "old")
        .changeset()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchSchema(s) if s == "old"),
        "{err}"
    );
}

#[tokio::test]
async fn a_diff_of_tables_with_different_columns_says_how_they_differ() {
    let (live, _backup, backup_path, _d1, _d2) = live_and_backup("SELECT 1").await;
    let pinned = live.pin().await.unwrap();
    let session = pinned.session();
    session
        .execute("ATTACH DATABASE ? AS old", &[backup_path.as_str().into()])
        .await
        .unwrap();
    session
        .execute_batch(
            "ALTER TABLE main.t ADD COLUMN extra TEXT; \
             CREATE TABLE main.only_here(id INTEGER PRIMARY KEY)",
        )
        .await
        .unwrap();
    let columns = Diff::from_schema(&session, "old")
        .tables(["t"])
        .changeset()
        .await
        .unwrap_err();
    assert!(
        matches!(&columns, Error::SchemaMismatch { table, .. } if table == "t"),
        "{columns}"
    );
    snapshot("diff_schema_mismatch_columns", &columns.to_string());
    let missing = Diff::from_schema(&session, "old")
        .tables(["only_here"])
        .changeset()
        .await
        .unwrap_err();
    snapshot("diff_schema_mismatch_missing_table", &missing.to_string());
}

#[tokio::test]
async fn a_diff_from_a_missing_file_creates_nothing() {
    let (live, dir) = file_db().await;
    seed(&live, 1).await;
    let missing = dir.path().join("missing.db");
    let err = Diff::from_file(&live, &missing)
        .changeset()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(!missing.exists());
    let err = Diff::from_file(&live, dir.path().join("test.db"))
        .tables(["nope"])
        .changeset()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchTable(t) if t == "nope"),
        "{err}"
    );
}
