//! Rebasing: local changes rewritten with the conflict resolutions of an apply of remote changes
//! apply cleanly on the remote side, and both sides converge.

use std::io::{self, Read};

use liteorm_changeset::{
    Changeset, ColumnNames, ConflictAction, Error, RebaseBuffer, Rebaser, apply,
};
use liteorm_core::{Session, Value};
use serde::Serialize;

use crate::support::{FailsAfter, Full, captured, cursor, dump, file_db, trickle};

const BASE: &str = "CREATE TABLE doc(id INTEGER PRIMARY KEY, title TEXT); \
                    INSERT INTO doc VALUES (1, 'draft'), (2, 'untouched')";

#[derive(Serialize)]
struct Outcome {
    resolution: String,
    rebased_local: Vec<String>,
    here: Vec<String>,
    there: Vec<String>,
}

fn rows(rows: Vec<Vec<Value>>) -> Vec<String> {
    rows.into_iter()
        .map(|r| {
            r.iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

/// Both sides edit row 1 and insert row 3; here applies theirs resolving every conflict with
/// `action`, then sends its own changes rebased.
async fn scenario(action: ConflictAction) -> Outcome {
    let (here, _d1) = file_db().await;
    let (there, _d2) = file_db().await;
    for db in [&here, &there] {
        db.execute_batch(BASE).await.unwrap();
    }
    let local = captured(
        &here,
        &["doc"],
        "UPDATE doc SET title = 'ours' WHERE id = 1; INSERT INTO doc VALUES (3, 'ours too')",
    )
    .await;
    let remote = captured(
        &there,
        &["doc"],
        "UPDATE doc SET title = 'theirs' WHERE id = 1; INSERT INTO doc VALUES (3, 'theirs too')",
    )
    .await;
    let report = apply(&here, &remote)
        .on_conflict(move |_| action)
        .rebase_buffer()
        .await
        .unwrap();
    assert_eq!(report.conflicts.values().map(|c| c.seen).sum::<usize>(), 2);
    assert!(!report.rebase.is_empty());

    let mut rebaser = Rebaser::new().unwrap();
    rebaser.configure(&report.rebase).unwrap();
    let rebased = rebaser.rebase(&local).unwrap();
    // Over streams, in chunks that split changes: the same bytes.
    let streamed = rebaser
        .rebase_stream(trickle(local.as_bytes()), Vec::new())
        .unwrap();
    assert_eq!(
        streamed,
        rebased.as_bytes(),
        "stream and blob rebase differ"
    );
    // No handler: any conflict would abort this apply.
    apply(&there, &rebased).await.unwrap();

    let mut rebased_local: Vec<String> = rebased
        .to_sql(&ColumnNames::of(&here).await.unwrap())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    rebased_local.sort();
    Outcome {
        resolution: format!("{action:?}"),
        rebased_local,
        here: rows(dump(&here, "doc").await),
        there: rows(dump(&there, "doc").await),
    }
}

fn snapshot(name: &str, outcome: &Outcome) {
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_yaml_snapshot!(name, outcome);
    });
}

#[tokio::test]
async fn rebased_local_changes_converge_when_local_won() {
    let outcome = scenario(ConflictAction::Omit).await;
    assert_eq!(outcome.here, outcome.there);
    snapshot("rebase_local_won_omit", &outcome);
}

#[tokio::test]
async fn rebased_local_changes_converge_when_remote_won() {
    let outcome = scenario(ConflictAction::Replace).await;
    assert_eq!(outcome.here, outcome.there);
    snapshot("rebase_remote_won_replace", &outcome);
}

/// SQLite copies every resolved conflict into the rebase buffer only when asked: without
/// `rebase_buffer()` the same resolutions leave it empty (and the apply is the same).
#[tokio::test]
async fn the_rebase_buffer_is_only_kept_when_asked_for() {
    let remote_and_target = || async {
        let (here, d1) = file_db().await;
        let (there, d2) = file_db().await;
        for db in [&here, &there] {
            db.execute_batch(BASE).await.unwrap();
        }
        here.execute_batch("UPDATE doc SET title = 'ours' WHERE id = 1")
            .await
            .unwrap();
        let remote = captured(
            &there,
            &["doc"],
            "UPDATE doc SET title = 'theirs' WHERE id = 1",
        )
        .await;
        (here, remote, [d1, d2])
    };
    let (plain_db, remote, _d1) = remote_and_target().await;
    let plain = apply(&plain_db, &remote)
        .on_conflict(|_| ConflictAction::Omit)
        .await
        .unwrap();
    let (asked_db, remote, _d2) = remote_and_target().await;
    let asked = apply(&asked_db, &remote)
        .on_conflict(|_| ConflictAction::Omit)
        .rebase_buffer()
        .await
        .unwrap();
    assert_eq!((plain.omitted, asked.omitted), (1, 1));
    assert!(plain.rebase.is_empty());
    assert!(!asked.rebase.is_empty());
    assert_eq!(dump(&plain_db, "doc").await, dump(&asked_db, "doc").await);
}

#[tokio::test]
async fn without_rebasing_the_local_changes_conflict_on_the_other_side() {
    let (here, _d1) = file_db().await;
    let (there, _d2) = file_db().await;
    for db in [&here, &there] {
        db.execute_batch(BASE).await.unwrap();
    }
    let local = captured(
        &here,
        &["doc"],
        "UPDATE doc SET title = 'ours' WHERE id = 1",
    )
    .await;
    let remote = captured(
        &there,
        &["doc"],
        "UPDATE doc SET title = 'theirs' WHERE id = 1",
    )
    .await;
    apply(&here, &remote)
        .on_conflict(|_| ConflictAction::Omit)
        .await
        .unwrap();
    let err = apply(&there, &local).await.unwrap_err();
    assert!(matches!(err, Error::Aborted { .. }), "{err}");
}

#[tokio::test]
async fn a_patchset_apply_has_an_empty_rebase_buffer_even_with_omitted_conflicts() {
    let (db, _dir) = file_db().await;
    db.execute_batch(BASE).await.unwrap();
    let ps = liteorm_changeset::Capture::new(&db)
        .tables(["doc"])
        .patchset(|s| async move {
            s.execute("DELETE FROM doc WHERE id = 2", &[]).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    // The row is gone already: the delete conflicts, and the handler omits it.
    let report = apply(&db, &ps)
        .on_conflict(|_| ConflictAction::Omit)
        .rebase_buffer()
        .await
        .unwrap();
    assert_eq!(report.omitted, 1);
    assert!(report.rebase.is_empty());
}

#[tokio::test]
async fn an_apply_without_resolved_conflicts_has_an_empty_rebase_buffer() {
    let (db, _dir) = file_db().await;
    db.execute_batch(BASE).await.unwrap();
    let cs = captured(&db, &["doc"], "DELETE FROM doc WHERE id = 2").await;
    apply(&db, &cs.invert().unwrap()).await.unwrap();
    let report = apply(&db, &cs).rebase_buffer().await.unwrap();
    assert!(report.rebase.is_empty());
    let mut rebaser = Rebaser::new().unwrap();
    rebaser.configure(&report.rebase).unwrap();
    assert_eq!(rebaser.rebase(&cs).unwrap(), cs, "nothing to rebase over");
}

#[test]
fn a_rebase_buffer_from_untrusted_bytes_is_validated() {
    let err = RebaseBuffer::from_bytes(&b"T\x02\x01\x00doc"[..]).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Invalid {
                kind: "rebase buffer",
                offset: Some(_),
                ..
            }
        ),
        "{err}"
    );
    let ok = RebaseBuffer::from_bytes(
        &b"T\x01\x01doc\x00\x09\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02"[..],
    )
    .unwrap();
    let mut rebaser = Rebaser::new().unwrap();
    rebaser.configure(&ok).unwrap();
}

/// A rebaser configured with the resolutions of an apply where the remote side's update of
/// the even rows of `t(id, name)` (1..=n) won over local updates (`Replace`), and the local
/// changes: updates of every row.
async fn many_rows_to_rebase(n: i64) -> (Rebaser, Changeset) {
    let (here, _d1) = file_db().await;
    let (there, _d2) = file_db().await;
    let populate = format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
         INSERT INTO t SELECT i, 'row' || i FROM n"
    );
    for db in [&here, &there] {
        db.execute_batch(&populate).await.unwrap();
    }
    let local = captured(&here, &["t"], "UPDATE t SET name = 'ours' || id").await;
    let remote = captured(
        &there,
        &["t"],
        "UPDATE t SET name = 'theirs' || id WHERE id % 2 = 0",
    )
    .await;
    let report = apply(&here, &remote)
        .on_conflict(|_| ConflictAction::Replace)
        .rebase_buffer()
        .await
        .unwrap();
    assert_eq!(report.replaced, usize::try_from(n / 2).unwrap());
    let mut rebaser = Rebaser::new().unwrap();
    rebaser.configure(&report.rebase).unwrap();
    (rebaser, local)
}

#[tokio::test]
async fn a_large_changeset_rebases_over_files_as_in_memory() {
    let (mut rebaser, local) = many_rows_to_rebase(20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("local.bin"), dir.path().join("rebased.bin"));
    std::fs::write(&input, local.as_bytes()).unwrap();
    let file = rebaser
        .rebase_stream(
            std::fs::File::open(&input).unwrap(),
            io::BufWriter::new(std::fs::File::create(&output).unwrap()),
        )
        .unwrap();
    drop(file);
    let in_memory = rebaser.rebase(&local).unwrap();
    assert_eq!(std::fs::read(&output).unwrap(), in_memory.as_bytes());
    // The rows the remote side won lost their local update: half the changes are left.
    assert_eq!(Changeset::validate(in_memory.as_bytes()).unwrap(), 10_000);
}

#[tokio::test]
async fn an_empty_stream_rebases_to_an_empty_changeset() {
    let (mut rebaser, _) = many_rows_to_rebase(2).await;
    let out = rebaser.rebase_stream(io::empty(), Vec::new()).unwrap();
    assert!(out.is_empty());
}

/// Stream input is untrusted like a blob: truncated or corrupt input, a patchset, and a table
/// whose layout differs from the resolutions' are refused with typed errors, and failures of
/// the reader or writer are returned as such; the rebaser stays usable.
#[tokio::test]
async fn bad_rebase_streams_give_typed_errors() {
    let (mut rebaser, local) = many_rows_to_rebase(4).await;
    let bytes = local.as_bytes();

    let err = rebaser
        .rebase_stream(trickle(&bytes[..bytes.len() - 3]), Vec::new())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { kind: "changeset stream", reason, .. } if reason.contains("truncated")),
        "{err}"
    );

    let mut patchset = bytes.to_vec();
    patchset[0] = b'P';
    let err = rebaser
        .rebase_stream(cursor(&patchset), Vec::new())
        .unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");

    // `t` with one column where the resolutions' has two: refused before SQLite reads a record
    // of it (it would read them with the resolutions' layout).
    let narrow = b"T\x01\x01t\x00\x12\x00\x01\x00\x00\x00\x00\x00\x00\x00\x09";
    Changeset::from_bytes(&narrow[..]).unwrap();
    let mut written = Vec::new();
    let err = rebaser
        .rebase_stream(trickle(narrow), &mut written)
        .unwrap_err();
    match &err {
        Error::SchemaMismatch { table, .. } => assert_eq!(table, "t"),
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
    assert!(
        written.is_empty(),
        "nothing reached the output: {written:?}"
    );

    let err = rebaser
        .rebase_stream(FailsAfter(bytes.to_vec(), 20), Vec::new())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.to_string() == "disk on fire"),
        "{err}"
    );

    let err = rebaser.rebase_stream(cursor(bytes), Full).unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::StorageFull),
        "{err}"
    );

    struct Panics;
    impl Read for Panics {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("reader blew up")
        }
    }
    let err = rebaser.rebase_stream(Panics, Vec::new()).unwrap_err();
    assert!(
        matches!(&err, Error::CallbackPanicked { message, .. } if message == "reader blew up"),
        "{err}"
    );

    // Still usable, with the same resolutions.
    let again = rebaser.rebase_stream(cursor(bytes), Vec::new()).unwrap();
    assert_eq!(again, rebaser.rebase(&local).unwrap().as_bytes());
}
