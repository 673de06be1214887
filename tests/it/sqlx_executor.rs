//! sqlx's query API on liteorm sessions (`impl sqlx::Executor for &SqliteSession`): recorded
//! inside a capture, interleaved with liteorm statements, and safe to drop midway.
//!
//! This crate builds sqlx with its `macros` feature (which turns on sqlx-core's `offline`, under
//! which `Executor::describe` is a required method): that these tests compile proves the impl
//! builds for apps that use the `query!` macros.

use futures::TryStreamExt as _;
use liteorm_changeset::{Capture, Error, apply, capture, live_session_objects};
use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;

use crate::support::{db_path, dump, file_db};

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)";

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Item {
    id: i64,
    name: String,
}

/// liteorm and sqlx statements alternate on the capture's connection; each sees the previous
/// ones' effects, and the changeset, replayed on a second file, gives the same table.
#[tokio::test]
async fn sqlx_and_liteorm_statements_interleave_in_one_capture_and_are_all_recorded() {
    let (db, _dir) = file_db().await;
    let (replica, _replica_dir) = file_db().await;
    db.execute_batch(SCHEMA).await.unwrap();
    replica.execute_batch(SCHEMA).await.unwrap();
    db.execute("INSERT INTO t VALUES (9, 'old', 0.0, NULL)", &[])
        .await
        .unwrap();
    replica
        .execute("INSERT INTO t VALUES (9, 'old', 0.0, NULL)", &[])
        .await
        .unwrap();

    let cs = capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (1, 'liteorm', 1.0, NULL)", &[])
            .await?;
        let done = sqlx::query("INSERT INTO t(id, name, score) VALUES (?, ?, ?)")
            .bind(2_i64)
            .bind("sqlx")
            .bind(2.5_f64)
            .execute(&s)
            .await?;
        assert_eq!(done.rows_affected(), 1);
        // sqlx sees liteorm's write, and liteorm sees sqlx's: one connection, one transaction.
        sqlx::query("UPDATE t SET name = name || '+sqlx' WHERE id = 1")
            .execute(&s)
            .await?;
        s.execute("UPDATE t SET name = name || '+liteorm' WHERE id = 2", &[])
            .await?;
        let items: Vec<Item> = sqlx::query_as("SELECT id, name FROM t ORDER BY id")
            .fetch_all(&s)
            .await?;
        assert_eq!(
            items,
            [
                Item {
                    id: 1,
                    name: "liteorm+sqlx".into()
                },
                Item {
                    id: 2,
                    name: "sqlx+liteorm".into()
                },
                Item {
                    id: 9,
                    name: "old".into()
                },
            ]
        );
        let one: Item = sqlx::query_as("SELECT id, name FROM t WHERE id = ?")
            .bind(9_i64)
            .fetch_one(&s)
            .await?;
        assert_eq!(one.name, "old");
        let none: Option<(i64,)> = sqlx::query_as("SELECT id FROM t WHERE id = 100")
            .fetch_optional(&s)
            .await?;
        assert_eq!(none, None);
        let ids: Vec<i64> = sqlx::query_scalar::<_, i64>("SELECT id FROM t ORDER BY id")
            .fetch(&s)
            .try_collect()
            .await?;
        assert_eq!(ids, [1, 2, 9]);
        sqlx::query("DELETE FROM t WHERE id = 9")
            .execute(&s)
            .await?;
        // A liteorm query after sqlx's commands still runs (inline, handle lock taken again).
        let count = s.query("SELECT count(*) FROM t", &[]).await?;
        assert_eq!(count[0].try_get::<i64>(0)?, 2);
        Ok::<_, Error>(())
    })
    .await
    .unwrap();

    let mut ops: Vec<String> = cs
        .iter()
        .map(|c| c.map(|c| format!("{:?}", c.op)))
        .collect::<Result<_, _>>()
        .unwrap();
    ops.sort();
    assert_eq!(ops, ["Delete", "Insert", "Insert"]);
    apply(&replica, &cs).await.unwrap();
    assert_eq!(dump(&replica, "t").await, dump(&db, "t").await);
    assert_eq!(live_session_objects(&db_path(&db).await), 0);
}

/// A stream read partway and dropped, then liteorm and sqlx statements: nothing is stuck, and
/// only the writes are recorded.
#[tokio::test]
async fn a_sqlx_stream_dropped_midway_leaves_the_capture_connection_usable() {
    let (db, _dir) = file_db().await;
    db.execute_batch(SCHEMA).await.unwrap();
    db.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
         INSERT INTO t(id, name) SELECT i, 'row' FROM n",
    )
    .await
    .unwrap();
    let cs = capture(&db, &["t"], |s| async move {
        {
            let mut rows = sqlx::query_scalar::<_, i64>("SELECT id FROM t ORDER BY id").fetch(&s);
            assert_eq!(rows.try_next().await?, Some(1));
        }
        s.execute("UPDATE t SET name = 'liteorm' WHERE id = 1", &[])
            .await?;
        sqlx::query("UPDATE t SET name = 'sqlx' WHERE id = 2")
            .execute(&s)
            .await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(cs.changes().unwrap().len(), 2);
}

/// A savepoint (liteorm's `begin()` inside the capture) whose sqlx writes are rolled back is
/// not recorded; the one committed is.
#[tokio::test]
async fn sqlx_writes_in_a_rolled_back_savepoint_are_not_recorded() {
    let (db, _dir) = file_db().await;
    db.execute_batch(SCHEMA).await.unwrap();
    let cs = capture(&db, &["t"], |s| async move {
        let tx = s.begin().await?;
        let inner = tx
            .as_session()
            .as_any()
            .downcast_ref::<SqliteSession>()
            .unwrap();
        sqlx::query("INSERT INTO t(id, name) VALUES (1, 'undone')")
            .execute(inner)
            .await?;
        tx.rollback().await?;
        let tx = s.begin().await?;
        let inner = tx
            .as_session()
            .as_any()
            .downcast_ref::<SqliteSession>()
            .unwrap();
        sqlx::query("INSERT INTO t(id, name) VALUES (2, 'kept')")
            .execute(inner)
            .await?;
        tx.commit().await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let changes = cs.changes().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].new[0], Some(Value::Integer(2)));
    assert_eq!(dump(&db, "t").await.len(), 1);
}

/// sqlx transaction statements on the capture's connection: `BEGIN` fails (a transaction is
/// open), and a `COMMIT` that ends capture's transaction makes the capture fail with an error
/// instead of returning a changeset the caller would take for the whole story.
#[tokio::test]
async fn sqlx_transaction_statements_cannot_silently_end_the_capture() {
    let (db, _dir) = file_db().await;
    db.execute_batch(SCHEMA).await.unwrap();
    let begin = capture(&db, &["t"], |s| async move {
        sqlx::query("BEGIN").execute(&s).await?;
        Ok::<_, Error>(())
    })
    .await;
    assert!(begin.is_err(), "BEGIN inside capture's transaction fails");

    let committed = capture(&db, &["t"], |s| async move {
        sqlx::query("INSERT INTO t(id, name) VALUES (1, 'a')")
            .execute(&s)
            .await?;
        sqlx::query("COMMIT").execute(&s).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(committed, Error::TransactionEnded),
        "{committed:?}"
    );
    assert_eq!(live_session_objects(&db_path(&db).await), 0);
    // The connection is usable afterwards.
    let cs = Capture::new(&db)
        .tables(["t"])
        .changeset(|s| async move {
            sqlx::query("INSERT INTO t(id, name) VALUES (2, 'b')")
                .execute(&s)
                .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(cs.changes().unwrap().len(), 1);
}

/// On a pool-backed session each sqlx command takes a connection for its duration and gives
/// it back; liteorm statements on the same session still work between them.
#[tokio::test]
async fn sqlx_runs_on_a_pool_backed_session() {
    let (db, _dir) = file_db().await;
    sqlx::query(SCHEMA).execute(&db).await.unwrap();
    sqlx::query("INSERT INTO t(id, name) VALUES (1, 'a')")
        .execute(&db)
        .await
        .unwrap();
    db.execute("INSERT INTO t(id, name) VALUES (2, 'b')", &[])
        .await
        .unwrap();
    let items: Vec<Item> = sqlx::query_as("SELECT id, name FROM t ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    let mut stream = sqlx::query_as::<_, Item>("SELECT id, name FROM t").fetch(&db);
    assert!(stream.try_next().await.unwrap().is_some());
    drop(stream);
    assert_eq!(dump(&db, "t").await.len(), 2);
    let sql = sqlx::SqlSafeStr::into_sql_str("SELECT id, name FROM t");
    let described = sqlx::Executor::describe(&db, sql).await.unwrap();
    assert_eq!(described.columns().len(), 2);
}
