//! Capture: what is recorded, what is not, and what happens on errors and cancellation.

use std::time::Duration;

use liteorm_changeset::{Capture, ChangeOp, Error, capture, live_session_objects};
use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;
use sqlx::sqlite::SqlitePoolOptions;

use crate::support::{captured, db_path, dump, file_db, seed};

#[tokio::test]
async fn capture_records_inserts_updates_and_deletes() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let cs = capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (10, 'new', 1.5, NULL)", &[])
            .await?;
        s.execute("UPDATE t SET name = 'renamed' WHERE id = 1", &[])
            .await?;
        s.execute("DELETE FROM t WHERE id = 2", &[]).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let mut changes = cs.changes().unwrap();
    changes.sort_by_key(|c| c.primary_key()[0].clone().to_string());
    let ops: Vec<_> = changes.iter().map(|c| (c.op, c.primary_key())).collect();
    assert_eq!(
        ops,
        [
            (ChangeOp::Update, vec![Value::Integer(1)]),
            (ChangeOp::Insert, vec![Value::Integer(10)]),
            (ChangeOp::Delete, vec![Value::Integer(2)]),
        ]
    );
    let update = &changes[0];
    // An update records the key and the changed column; other columns are "not recorded".
    assert_eq!(update.old[1], Some(Value::Text("row-1".into())));
    assert_eq!(update.new[1], Some(Value::Text("renamed".into())));
    assert_eq!(update.old[2], None);
    assert_eq!(update.new[2], None);
    // An insert records SQL NULL as a value, distinct from "not recorded".
    assert_eq!(changes[1].new[3], Some(Value::Null));
    assert!(changes[1].old.is_empty());
    assert_eq!(live_session_objects(&db_path(&db).await), 0);
}

#[tokio::test]
async fn capture_commits_the_closure_writes() {
    let (db, _dir) = file_db().await;
    seed(&db, 1).await;
    capture(&db, &[], |s| async move {
        s.execute("INSERT INTO t VALUES (2, 'b', 0.0, NULL)", &[])
            .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(dump(&db, "t").await.len(), 2);
}

#[tokio::test]
async fn capture_with_no_tables_records_every_table_with_a_primary_key() {
    let (db, _dir) = file_db().await;
    seed(&db, 0).await;
    db.execute_batch("CREATE TABLE u(k TEXT PRIMARY KEY, v); CREATE TABLE nopk(x)")
        .await
        .unwrap();
    let cs = captured(&db, &[], "INSERT INTO t VALUES (1, 'a', 0.0, NULL); INSERT INTO u VALUES ('k', 1); INSERT INTO nopk VALUES (1)").await;
    let mut tables: Vec<String> = cs
        .changes()
        .unwrap()
        .iter()
        .map(|c| c.table.to_string())
        .collect();
    tables.sort();
    assert_eq!(tables, ["t", "u"]);
}

#[tokio::test]
async fn capture_of_listed_tables_ignores_the_others() {
    let (db, _dir) = file_db().await;
    seed(&db, 0).await;
    db.execute_batch("CREATE TABLE u(k TEXT PRIMARY KEY, v)")
        .await
        .unwrap();
    let cs = captured(
        &db,
        &["u"],
        "INSERT INTO t VALUES (1, 'a', 0.0, NULL); INSERT INTO u VALUES ('k', 1)",
    )
    .await;
    let changes = cs.changes().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(&*changes[0].table, "u");
}

#[derive(Debug, PartialEq)]
enum AppError {
    Business(&'static str),
    Capture(String),
}

impl From<Error> for AppError {
    fn from(err: Error) -> Self {
        AppError::Capture(err.to_string())
    }
}

impl From<liteorm_core::Error> for AppError {
    fn from(err: liteorm_core::Error) -> Self {
        AppError::Capture(err.to_string())
    }
}

#[tokio::test]
async fn closure_error_is_returned_as_is_and_its_writes_rolled_back() {
    let (db, _dir) = file_db().await;
    seed(&db, 1).await;
    let err = capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (2, 'b', 0.0, NULL)", &[])
            .await?;
        Err::<(), _>(AppError::Business("refused"))
    })
    .await
    .unwrap_err();
    assert_eq!(err, AppError::Business("refused"));
    assert_eq!(dump(&db, "t").await.len(), 1);
    assert_eq!(live_session_objects(&db_path(&db).await), 0);
}

#[tokio::test]
async fn cancelled_capture_rolls_back_deletes_the_session_and_frees_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.db");
    // One connection: if cancellation leaked it, the next capture would wait forever.
    let db = SqliteSession::connect_with(
        SqliteSession::options(path.to_str().unwrap()).unwrap(),
        SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    seed(&db, 0).await;
    let (written_tx, written_rx) = tokio::sync::oneshot::channel();
    let pending = capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (1, 'lost', 0.0, NULL)", &[])
            .await?;
        let _ = written_tx.send(());
        std::future::pending::<()>().await;
        Ok::<_, Error>(())
    });
    tokio::select! {
        _ = pending => panic!("the closure never finishes"),
        _ = written_rx => {}
    }
    // The capture future is dropped here, at the closure's await point.
    assert_eq!(
        live_session_objects(&db_path(&db).await),
        0,
        "the session object is deleted on drop"
    );
    assert!(
        dump(&db, "t").await.is_empty(),
        "the cancelled write is rolled back"
    );
    let cs = capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (2, 'kept', 0.0, NULL)", &[])
            .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let changes = cs.changes().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].primary_key(), [Value::Integer(2)]);
}

#[tokio::test]
async fn patchset_is_smaller_and_omits_old_values() {
    let (db, _dir) = file_db().await;
    seed(&db, 5).await;
    let work = |s: SqliteSession| async move {
        s.execute("UPDATE t SET score = score + 1", &[]).await?;
        s.execute("DELETE FROM t WHERE id = 1", &[]).await?;
        Ok::<_, Error>(())
    };
    let ps = Capture::new(&db)
        .tables(["t"])
        .patchset(work)
        .await
        .unwrap();
    let (copy, _dir2) = file_db().await;
    seed(&copy, 5).await;
    let cs = Capture::new(&copy)
        .tables(["t"])
        .changeset(work)
        .await
        .unwrap();
    assert!(
        ps.len() < cs.len(),
        "patchset {} bytes, changeset {} bytes",
        ps.len(),
        cs.len()
    );
    let delete = ps
        .changes()
        .unwrap()
        .into_iter()
        .find(|c| c.op == ChangeOp::Delete)
        .unwrap();
    assert_eq!(delete.old[0], Some(Value::Integer(1)));
    assert_eq!(
        delete.old[1], None,
        "a patchset delete carries only the key"
    );
    assert!(liteorm_changeset::Changeset::from_bytes(ps.as_bytes().to_vec()).is_err());
}

#[tokio::test]
async fn capturing_a_missing_table_or_one_without_a_key_is_an_error() {
    let (db, _dir) = file_db().await;
    db.execute_batch("CREATE TABLE nopk(x)").await.unwrap();
    let ok = |_s: SqliteSession| async { Ok::<_, Error>(()) };
    let err = capture(&db, &["missing"], ok).await.unwrap_err();
    assert!(
        matches!(err, Error::NoSuchTable(ref t) if t == "missing"),
        "{err}"
    );
    let err = capture(&db, &["nopk"], ok).await.unwrap_err();
    assert!(
        matches!(err, Error::NoPrimaryKey(ref t) if t == "nopk"),
        "{err}"
    );
    assert_eq!(live_session_objects(&db_path(&db).await), 0);
}

#[tokio::test]
async fn capture_inside_a_transaction_joins_it() {
    let (db, _dir) = file_db().await;
    seed(&db, 0).await;
    let tx = db.begin().await.unwrap();
    let cs = capture(tx.as_session(), &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (1, 'a', 0.0, NULL)", &[])
            .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(cs.changes().unwrap().len(), 1);
    tx.rollback().await.unwrap();
    assert!(
        dump(&db, "t").await.is_empty(),
        "the outer rollback undoes the captured write"
    );
}

#[tokio::test]
async fn closure_that_ends_capture_transaction_gets_a_clear_error() {
    let (db, _dir) = file_db().await;
    seed(&db, 0).await;
    let err = capture(&db, &["t"], |s| async move {
        s.execute_batch("INSERT INTO t VALUES (1, 'a', 0.0, NULL); COMMIT")
            .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::TransactionEnded), "{err}");
    assert_eq!(live_session_objects(&db_path(&db).await), 0);
    // The connection is still usable afterwards.
    capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (2, 'b', 0.0, NULL)", &[])
            .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
}

/// The schema check reads a statement kept on the connection, which a parked connection keeps
/// between captures: it must see schema changes made in between, through any connection.
#[tokio::test]
async fn the_table_check_sees_schema_changes_between_captures() {
    let (db, _dir) = file_db().await;
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .await
        .unwrap();
    let insert = |sql: &'static str| {
        move |s: SqliteSession| async move { s.execute(sql, &[]).await.map(drop).map_err(Error::from) }
    };
    // Another connection of the pool, taken first so that the captures run on a different one
    // (which stays parked with its statements between them).
    let other = db.pin().await.unwrap();
    let cs = capture(&db, &["t"], insert("INSERT INTO t VALUES (1, 'a')"))
        .await
        .unwrap();
    assert_eq!(cs.changes().unwrap().len(), 1);
    other
        .session()
        .execute_batch("DROP TABLE t; CREATE TABLE t(id, v)")
        .await
        .unwrap();
    let err = capture(&db, &["t"], insert("INSERT INTO t VALUES (2, 'b')"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NoPrimaryKey(ref t) if t == "t"),
        "{err}"
    );
    other.release().await;
    db.execute_batch("DROP TABLE t").await.unwrap();
    let err = capture(&db, &["t"], insert("SELECT 1")).await.unwrap_err();
    assert!(
        matches!(err, Error::NoSuchTable(ref t) if t == "t"),
        "{err}"
    );
    db.execute_batch("CREATE TABLE t(a, b, PRIMARY KEY(b, a))")
        .await
        .unwrap();
    let cs = capture(&db, &["t"], insert("INSERT INTO t VALUES (3, 'c')"))
        .await
        .unwrap();
    assert_eq!(cs.changes().unwrap().len(), 1);
}

#[tokio::test]
async fn tables_lists_each_changed_table_once_in_stored_order() {
    let (db, _dir) = file_db().await;
    db.execute_batch(
        "CREATE TABLE a(id INTEGER PRIMARY KEY); CREATE TABLE b(id INTEGER PRIMARY KEY);
         CREATE TABLE c(id INTEGER PRIMARY KEY)",
    )
    .await
    .unwrap();
    let cs = capture(&db, &[], |s: SqliteSession| async move {
        s.execute_batch(
            "INSERT INTO b VALUES (1), (2); INSERT INTO a VALUES (1); INSERT INTO b VALUES (3)",
        )
        .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let mut stored: Vec<String> = Vec::new();
    for change in cs.changes().unwrap() {
        if !stored.iter().any(|t| *t == *change.table) {
            stored.push(change.table.to_string());
        }
    }
    assert_eq!(stored.len(), 2);
    assert_eq!(cs.tables().unwrap(), stored);
    assert!(
        liteorm_changeset::Changeset::default()
            .tables()
            .unwrap()
            .is_empty()
    );
}

/// A table check made inside a transaction that changed the schema and then rolled back must
/// not outlive it, even when another connection then brings the schema cookie back to the same
/// number with a different table.
#[tokio::test]
async fn the_table_check_forgets_schema_read_in_a_rolled_back_transaction() {
    let (db, _dir) = file_db().await;
    let mine = db.pin().await.unwrap();
    let other = db.pin().await.unwrap();
    let s = mine.session();
    let tx = s.begin().await.unwrap();
    tx.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .await
        .unwrap();
    let cs = capture(tx.as_session(), &["t"], |s: SqliteSession| async move {
        s.execute("INSERT INTO t VALUES (1, 'a')", &[]).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(cs.changes().unwrap().len(), 1);
    tx.rollback().await.unwrap();
    // The same schema cookie as inside the rolled-back transaction, another table.
    other
        .session()
        .execute_batch("CREATE TABLE t(id, v)")
        .await
        .unwrap();
    let err = capture(&s, &["t"], |s: SqliteSession| async move {
        s.execute("INSERT INTO t VALUES (2, 'b')", &[]).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::NoPrimaryKey(ref t) if t == "t"),
        "{err}"
    );
    other.release().await;
    mine.release().await;
}

/// A writer that accepts `limit` bytes, then fails (or panics).
#[derive(Debug)]
struct FailAfter {
    limit: usize,
    written: usize,
    panic: bool,
}

impl std::io::Write for FailAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() > self.limit {
            assert!(!self.panic, "the writer gives up");
            return Err(std::io::Error::other("disk full"));
        }
        self.written += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const STREAMED_MIX: &str = "UPDATE t SET name = name || '!' WHERE id % 3 = 0; \
    DELETE FROM t WHERE id % 7 = 0; INSERT INTO t SELECT id + 1000, name, score, data FROM t";

#[tokio::test]
async fn a_capture_streamed_to_a_writer_writes_the_bytes_the_blob_would_have() {
    let mut blobs = Vec::new();
    let mut streamed = Vec::new();
    for patchset in [false, true] {
        let (a, _dir_a) = file_db().await;
        let (b, _dir_b) = file_db().await;
        seed(&a, 300).await;
        seed(&b, 300).await;
        let work = |s: liteorm_sqlite::SqliteSession| async move {
            s.execute_batch(STREAMED_MIX).await?;
            Ok::<_, Error>(())
        };
        if patchset {
            blobs.push(
                Capture::new(&a)
                    .patchset(work)
                    .await
                    .unwrap()
                    .as_bytes()
                    .to_vec(),
            );
            streamed.push(
                Capture::new(&b)
                    .patchset_to(Vec::new(), work)
                    .await
                    .unwrap(),
            );
        } else {
            blobs.push(
                Capture::new(&a)
                    .changeset(work)
                    .await
                    .unwrap()
                    .as_bytes()
                    .to_vec(),
            );
            streamed.push(
                Capture::new(&b)
                    .changeset_to(Vec::new(), work)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            dump(&b, "t").await,
            dump(&a, "t").await,
            "the writes committed"
        );
        assert_eq!(live_session_objects(&db_path(&b).await), 0);
    }
    assert!(blobs[0].len() > 10_000, "{} bytes", blobs[0].len());
    assert_eq!(streamed, blobs);
}

#[tokio::test]
async fn a_failing_or_panicking_writer_rolls_the_capture_back() {
    let (db, _dir) = file_db().await;
    seed(&db, 300).await;
    let before = dump(&db, "t").await;
    for panic in [false, true] {
        let writer = FailAfter {
            limit: 2000,
            written: 0,
            panic,
        };
        let err = Capture::new(&db)
            .changeset_to(writer, |s| async move {
                s.execute_batch(STREAMED_MIX).await?;
                Ok::<_, Error>(())
            })
            .await
            .unwrap_err();
        if panic {
            assert!(
                matches!(&err, Error::CallbackPanicked { message, .. } if message.contains("gives up")),
                "{err:?}"
            );
        } else {
            assert!(
                matches!(&err, Error::Io(e) if e.to_string() == "disk full"),
                "{err:?}"
            );
        }
        assert_eq!(dump(&db, "t").await, before, "nothing committed");
        assert_eq!(live_session_objects(&db_path(&db).await), 0);
    }
    // The connection and the database are fine afterwards.
    let cs = Capture::new(&db)
        .changeset(|s| async move {
            s.execute("DELETE FROM t WHERE id = 1", &[]).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(cs.changes().unwrap().len(), 1);
}

/// `changeset_then`: what the continuation writes commits with the captured changes, is not in
/// the changeset, and a failing continuation rolls back both (and leaves no session object).
#[tokio::test]
async fn changeset_then_writes_in_the_capture_transaction_or_not_at_all() {
    let (db, _dir) = file_db().await;
    seed(&db, 1).await;
    db.execute_batch("CREATE TABLE outbox(id INTEGER PRIMARY KEY, blob BLOB NOT NULL)")
        .await
        .unwrap();
    let session = &db;
    let insert = |id: i64| async move {
        let (inserted, stored) = Capture::new(session)
            .changeset_then(
                move |s| async move {
                    s.execute(
                        "INSERT INTO t VALUES (?, 'new', 1.0, NULL)",
                        &[Value::Integer(id)],
                    )
                    .await?;
                    Ok::<_, Error>(id)
                },
                |mut guard, changes| async move {
                    let blob = [liteorm_core::ValueRef::Blob(changes.as_bytes())];
                    let n = guard
                        .execute_refs("INSERT INTO outbox(blob) VALUES (?)", &blob)
                        .await?;
                    // A blob of an earlier unit of work fails the second insert.
                    if id == 3 {
                        guard
                            .execute_refs("INSERT INTO outbox(id, blob) VALUES (1, x'00')", &[])
                            .await?;
                    }
                    Ok((guard, (n, changes)))
                },
            )
            .await?;
        Ok::<_, Error>((inserted, stored))
    };
    let (id, (n, changes)) = insert(2).await.unwrap();
    assert_eq!((id, n), (2, 1));
    let ops: Vec<_> = changes
        .changes()
        .unwrap()
        .iter()
        .map(|c| (c.table.to_string(), c.op))
        .collect();
    assert_eq!(
        ops,
        [("t".to_owned(), ChangeOp::Insert)],
        "the outbox row is not recorded"
    );
    let stored = db.query("SELECT blob FROM outbox", &[]).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].try_get::<Vec<u8>>(0).unwrap(),
        changes.as_bytes(),
        "the continuation stored the changeset it was given"
    );

    let before = (dump(&db, "t").await, dump(&db, "outbox").await);
    let err = insert(3).await.unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    assert_eq!(
        (dump(&db, "t").await, dump(&db, "outbox").await),
        before,
        "data and outbox rolled back together"
    );
    let outbox = db.query("SELECT count(*) FROM outbox", &[]).await.unwrap();
    assert_eq!(outbox[0].try_get::<i64>(0).unwrap(), 1);

    // The guard of another connection handed back for the commit: refused, nothing committed.
    let other = db.pin().await.unwrap();
    let other = &other;
    let err = Capture::new(&db)
        .changeset_then(
            |s| async move {
                s.execute("INSERT INTO t VALUES (4, 'new', 1.0, NULL)", &[])
                    .await?;
                Ok::<_, Error>(())
            },
            |guard, _| async move {
                drop(guard);
                Ok((other.lock().await?, ()))
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");
    assert_eq!(dump(&db, "t").await, before.0);
    assert_eq!(live_session_objects(&db_path(&db).await), 0);
}
