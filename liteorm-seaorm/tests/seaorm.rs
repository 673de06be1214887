//! SeaORM entities on the recording connection: every write API recorded and replayed on a
//! replica, nested transactions, failing, panicking and cancelled closures, concurrency.

// Test helpers panic on unexpected errors on purpose.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use liteorm_changeset::{Capture, ChangeOp, ColumnNames, live_session_objects};
use liteorm_replication::{ChangeLog, ConflictPolicy, LogTableSource, Meta, Replica};
use liteorm_seaorm::{EntityColumns, Error, SeaSession, sqlite_session};
use liteorm_sqlite::SqliteSession;
use liteorm_tests::DropAfter;
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend, QueryOrder, Schema, SqlErr, Statement,
    TransactionSession, TransactionTrait,
};
use tempfile::TempDir;

#[allow(unreachable_pub)]
mod author {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "author")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(has_many = "super::book::Entity")]
        Book,
    }

    impl Related<super::book::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Book.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

#[allow(unreachable_pub)]
mod book {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "book")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub author_id: i64,
        pub title: String,
        pub price: f64,
        pub note: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(
            belongs_to = "super::author::Entity",
            from = "Column::AuthorId",
            to = "super::author::Column::Id"
        )]
        Author,
    }

    impl Related<super::author::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Author.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// A SeaORM connection to a new database file (WAL, foreign keys on) with both tables.
async fn open(dir: &TempDir, name: &str, max_connections: u32) -> DatabaseConnection {
    let path = dir.path().join(name);
    let mut options = ConnectOptions::new(format!("sqlite://{}?mode=rwc", path.to_str().unwrap()));
    options
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    let db = Database::connect(options).await.unwrap();
    db.execute_unprepared("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON")
        .await
        .unwrap();
    let schema = Schema::new(DbBackend::Sqlite);
    db.execute(&schema.create_table_from_entity(author::Entity))
        .await
        .unwrap();
    db.execute(&schema.create_table_from_entity(book::Entity))
        .await
        .unwrap();
    db
}

/// Both tables, sorted by key.
async fn snapshot(db: &impl ConnectionTrait) -> (Vec<author::Model>, Vec<book::Model>) {
    let authors = author::Entity::find()
        .order_by_asc(author::Column::Id)
        .all(db)
        .await
        .unwrap();
    let books = book::Entity::find()
        .order_by_asc(book::Column::Id)
        .all(db)
        .await
        .unwrap();
    (authors, books)
}

async fn path_of(session: &SqliteSession) -> String {
    let rows = session
        .query(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            &[],
        )
        .await
        .unwrap();
    rows[0].try_get(0).unwrap()
}

/// A book to insert. Prices are not integral on purpose: SeaORM inserts with `RETURNING`, and
/// the system cell's SQLite 3.40.1 returns an integral value of a REAL column as an INTEGER
/// there, which sqlx refuses to decode as `f64` (the bundled 3.51.3 does not). That breaks plain
/// SeaORM on that SQLite just the same; it is not liteorm's to fix.
fn book(id: i64, author_id: i64, title: &str, price: f64) -> book::ActiveModel {
    book::ActiveModel {
        id: Set(id),
        author_id: Set(author_id),
        title: Set(title.into()),
        price: Set(price),
        note: Set(None),
    }
}

/// Inserts author 1 with books 1 and 2, outside any capture.
async fn seed(db: &DatabaseConnection) {
    author::ActiveModel {
        id: Set(1),
        name: Set("ada".into()),
    }
    .insert(db)
    .await
    .unwrap();
    book::Entity::insert_many([book(1, 1, "notes", 10.25), book(2, 1, "engine", 20.25)])
        .exec(db)
        .await
        .unwrap();
}

/// The work of the replay test: every SeaORM write API, a find, a raw statement, and liteorm
/// and sqlx statements on the same connection.
async fn every_write_api(conn: SeaSession) -> Result<(), Error> {
    // ActiveModel::insert with an auto-increment key (RETURNING gives the id).
    let grace = author::ActiveModel {
        id: NotSet,
        name: Set("grace".into()),
    }
    .insert(&conn)
    .await?;
    assert_eq!(grace.id, 2);
    // Entity::insert_many.
    book::Entity::insert_many([
        book(3, grace.id, "cobol", 30.25),
        book(4, grace.id, "compilers", 40.25),
        book(5, grace.id, "bugs", 5.25),
    ])
    .exec(&conn)
    .await?;
    // find sees the writes of this transaction.
    let mine = book::Entity::find()
        .filter(book::Column::AuthorId.eq(grace.id))
        .count(&conn)
        .await?;
    assert_eq!(mine, 3);
    // ActiveModel::update.
    let mut notes: book::ActiveModel = book::Entity::find_by_id(1)
        .one(&conn)
        .await?
        .unwrap()
        .into();
    notes.title = Set("notes on the engine".into());
    notes.update(&conn).await?;
    // ActiveModel::save: an update of a loaded model, and an insert of a new one.
    let mut engine: book::ActiveModel = book::Entity::find_by_id(2)
        .one(&conn)
        .await?
        .unwrap()
        .into();
    engine.note = Set(Some("first program".into()));
    engine.save(&conn).await?;
    // (`save` inserts when the key is `NotSet`; a set key means update.)
    let linus = author::ActiveModel {
        id: NotSet,
        name: Set("linus".into()),
    }
    .save(&conn)
    .await?;
    assert_eq!(linus.id.clone().unwrap(), 3);
    book(6, 1, "letters", 6.25).insert(&conn).await?;
    // Entity::update_many.
    book::Entity::update_many()
        .col_expr(book::Column::Price, Expr::col(book::Column::Price).mul(2))
        .filter(book::Column::AuthorId.eq(grace.id))
        .exec(&conn)
        .await?;
    // ActiveModel::delete and Entity::delete_many.
    book::Entity::find_by_id(5)
        .one(&conn)
        .await?
        .unwrap()
        .delete(&conn)
        .await?;
    book::Entity::delete_many()
        .filter(book::Column::Title.eq("letters"))
        .exec(&conn)
        .await?;
    // A raw statement, liteorm and sqlx on the same connection.
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "UPDATE book SET note = ? WHERE id = ?",
        ["raw".into(), 3_i64.into()],
    ))
    .await?;
    conn.session()
        .execute("UPDATE book SET note = 'liteorm' WHERE id = 4", &[])
        .await?;
    sqlx::query("UPDATE author SET name = 'Ada' WHERE id = 1")
        .execute(conn.session())
        .await
        .map_err(|e| Error::Session(liteorm_core::Error::Driver(Box::new(e))))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entity_write_api_is_recorded_and_replays_to_an_identical_replica() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "primary.db", 4).await;
    let replica_db = open(&dir, "replica.db", 2).await;
    seed(&db).await;
    seed(&replica_db).await;
    let primary = sqlite_session(&db).await.unwrap();
    let log = ChangeLog::open(&primary).await.unwrap();

    let seq = liteorm_seaorm::record(&log, Meta::actor("test"), every_write_api)
        .await
        .unwrap();
    assert_eq!(seq, Some(1));
    let entry = log.entry(1).await.unwrap();
    let mut tables = entry.tables.clone();
    tables.sort();
    assert_eq!(tables, ["author", "book"]);

    // The audit trail, with the entities' column names (the same the database reports).
    let names = ColumnNames::new()
        .entity::<author::Entity>()
        .entity::<book::Entity>();
    let from_db = ColumnNames::of(&primary).await.unwrap();
    assert_eq!(names.get("book"), from_db.get("book"));
    assert_eq!(names.get("author"), from_db.get("author"));
    let mut sql: Vec<String> = entry
        .changeset
        .changes()
        .unwrap()
        .iter()
        .map(|c| c.to_sql(&names))
        .collect();
    sql.sort();
    assert!(
        sql.iter()
            .any(|s| s.contains("author_id") && s.contains("compilers")),
        "{sql:#?}"
    );

    // Replay on the replica: identical tables.
    let replica = Replica::open(&sqlite_session(&replica_db).await.unwrap())
        .await
        .unwrap();
    let done = replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap();
    assert_eq!(done.last_seq, 1);
    let expected = snapshot(&db).await;
    assert_eq!(snapshot(&replica_db).await, expected);
    assert_eq!(expected.0.len(), 3, "{expected:#?}");
    assert_eq!(expected.1.len(), 4, "{expected:#?}");

    // Revert the entry: back to the seed, on the primary and (after catch-up) the replica.
    log.revert(1, ConflictPolicy::abort(), Meta::actor("test"))
        .await
        .unwrap();
    replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap();
    let seeded = snapshot(&db).await;
    assert_eq!(seeded.0.len(), 1);
    assert_eq!(seeded.0[0].name, "ada");
    assert_eq!(seeded.1.len(), 2);
    assert_eq!(snapshot(&replica_db).await, seeded);
    assert_eq!(live_session_objects(&path_of(&primary).await), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_nested_transaction_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "nested.db", 2).await;
    seed(&db).await;
    let session = sqlite_session(&db).await.unwrap();
    let cs = liteorm_seaorm::capture(&session, &["author", "book"], |conn| async move {
        let tx = conn.begin().await?;
        book(10, 1, "undone", 1.25).insert(&tx).await?;
        // Nested again inside the savepoint, committed, then the outer savepoint rolls back.
        let inner = tx.begin().await?;
        book(11, 1, "undone too", 1.25).insert(&inner).await?;
        inner.commit().await?;
        tx.rollback().await?;
        // `transaction` whose callback fails: rolled back too.
        let failed = conn
            .transaction::<_, (), DbErr>(|tx| {
                Box::pin(async move {
                    book(12, 1, "failed", 1.25).insert(tx).await?;
                    Err(DbErr::Custom("no".into()))
                })
            })
            .await;
        assert!(failed.is_err());
        // A committed one is recorded.
        let tx = conn.begin().await?;
        book(13, 1, "kept", 1.25).insert(&tx).await?;
        tx.commit().await?;
        // Dropped without commit: rolled back.
        let tx = conn.begin().await?;
        book(14, 1, "dropped", 1.25).insert(&tx).await?;
        drop(tx);
        Ok::<_, DbErr>(())
    })
    .await
    .unwrap();
    let changes = cs.changes().unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].op, ChangeOp::Insert);
    assert_eq!(changes[0].new[0], Some(liteorm_core::Value::Integer(13)));
    let (_, books) = snapshot(&db).await;
    assert_eq!(books.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 2, 13]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_closure_rolls_back_and_its_dberr_comes_back_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "fail.db", 2).await;
    seed(&db).await;
    let session = sqlite_session(&db).await.unwrap();
    let before = snapshot(&db).await;
    let err = liteorm_seaorm::capture(&session, &[], |conn| async move {
        book::Entity::update_many()
            .col_expr(book::Column::Price, Expr::value(0.0))
            .exec(&conn)
            .await?;
        // A duplicate key: SeaORM's error, classified as sea-orm's own driver would.
        book(1, 1, "duplicate", 1.25).insert(&conn).await?;
        Ok::<_, DbErr>(())
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
        "{err:?}"
    );
    // A foreign key violation, with this crate's error type.
    let err = liteorm_seaorm::capture(&session, &[], |conn| async move {
        book(20, 99, "orphan", 1.25).insert(&conn).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Db(_)), "{err:?}");
    assert_eq!(snapshot(&db).await, before);
    assert_eq!(live_session_objects(&path_of(&session).await), 0);
    a_later_capture_records_its_write(&session, 30).await;
}

/// The pool is usable after a failed capture: a capture afterwards records its one write.
async fn a_later_capture_records_its_write(session: &SqliteSession, id: i64) {
    let cs = liteorm_seaorm::capture(session, &[], |conn| async move {
        book(id, 1, "after", 1.25).insert(&conn).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(cs.changes().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_closure_rolls_back_and_leaves_the_pool_usable() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "panic.db", 1).await;
    seed(&db).await;
    let session = sqlite_session(&db).await.unwrap();
    let before = snapshot(&db).await;
    let task_session = session.clone();
    let joined = tokio::spawn(async move {
        liteorm_seaorm::capture(&task_session, &[], |conn| async move {
            book(40, 1, "lost", 1.25).insert(&conn).await?;
            if conn.session().is_pinned() {
                panic!("the closure panics after a write");
            }
            Ok::<_, Error>(())
        })
        .await
    })
    .await;
    assert!(joined.unwrap_err().is_panic(), "the panic propagates");
    // One pool connection: if the panic had leaked it, this would time out.
    assert_eq!(snapshot(&db).await, before);
    assert_eq!(live_session_objects(&path_of(&session).await), 0);
    a_later_capture_records_its_write(&session, 41).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_dropped_at_every_await_point_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "cancel.db", 2).await;
    seed(&db).await;
    let session = sqlite_session(&db).await.unwrap();
    let path = path_of(&session).await;
    let before = snapshot(&db).await;
    let mut dropped = 0;
    for polls in 0..2_000 {
        let work = liteorm_seaorm::capture(&session, &[], |conn| async move {
            book(50, 1, "new", 1.25).insert(&conn).await?;
            book::Entity::update_many()
                .col_expr(book::Column::Price, Expr::value(7.0))
                .exec(&conn)
                .await?;
            let tx = conn.begin().await?;
            book::Entity::delete_by_id(2).exec(&tx).await?;
            tx.commit().await?;
            assert_eq!(book::Entity::find().count(&conn).await?, 2);
            Ok::<_, Error>(())
        });
        let outcome = DropAfter::new(work, polls).await;
        let start = Instant::now();
        while live_session_objects(&path) != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "a session object outlived its capture"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        match outcome {
            None => {
                dropped += 1;
                // Nothing half-written, and both pool connections come back out of any
                // transaction (the write lock can be taken within the busy timeout).
                assert_eq!(snapshot(&db).await, before, "after {polls} polls");
                let tx = db.begin().await.unwrap();
                tx.execute_unprepared("UPDATE author SET name = name")
                    .await
                    .unwrap();
                tx.rollback().await.unwrap();
            }
            Some(changes) => {
                assert_eq!(changes.unwrap().changes().unwrap().len(), 3);
                let (_, books) = snapshot(&db).await;
                assert_eq!(books.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 50]);
                assert!(dropped >= 4, "only {dropped} await points");
                return;
            }
        }
    }
    panic!("the capture never completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_captures_on_one_pool_each_get_exactly_their_own_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "concurrent.db", 4).await;
    let session = sqlite_session(&db).await.unwrap();
    let mut tasks = Vec::new();
    for n in 1..=8_i64 {
        let session = session.clone();
        tasks.push(tokio::spawn(async move {
            let cs = liteorm_seaorm::changeset(Capture::new(&session), move |conn| async move {
                author::ActiveModel {
                    id: Set(n),
                    name: Set(format!("author {n}")),
                }
                .insert(&conn)
                .await?;
                for b in 0..5 {
                    book(n * 100 + b, n, "draft", 1.25).insert(&conn).await?;
                    tokio::task::yield_now().await;
                }
                book::Entity::update_many()
                    .col_expr(book::Column::Title, Expr::value(format!("by {n}")))
                    .filter(book::Column::AuthorId.eq(n))
                    .exec(&conn)
                    .await?;
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
            (n, cs)
        }));
    }
    for task in tasks {
        let (n, cs) = task.await.unwrap();
        let mut keys: Vec<(String, i64)> = cs
            .changes()
            .unwrap()
            .iter()
            .map(|c| {
                assert_eq!(c.op, ChangeOp::Insert);
                match &c.new[0] {
                    Some(liteorm_core::Value::Integer(id)) => (c.table.to_string(), *id),
                    other => panic!("unexpected key {other:?}"),
                }
            })
            .collect();
        keys.sort();
        let mut expected: Vec<(String, i64)> =
            (0..5).map(|b| ("book".to_owned(), n * 100 + b)).collect();
        expected.insert(0, ("author".to_owned(), n));
        assert_eq!(keys, expected, "capture {n}");
    }
    let (authors, books) = snapshot(&db).await;
    assert_eq!((authors.len(), books.len()), (8, 40));
}

#[tokio::test]
async fn a_connection_that_is_not_a_sqlx_sqlite_pool_is_a_typed_error() {
    let err = sqlite_session(&DatabaseConnection::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotSqlite(_)), "{err}");
}

/// A seeded database file whose pool (two connections, shared by SeaORM and liteorm) gives up
/// after 200 ms on a lock, and the liteorm session on that pool.
async fn seeded_with_short_busy_timeout() -> (tempfile::TempDir, DatabaseConnection, SqliteSession)
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outer.db");
    let options = SqliteSession::options(path.to_str().unwrap())
        .unwrap()
        .busy_timeout(Duration::from_millis(200));
    let pool = SqliteSession::pool_options()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let db = DatabaseConnection::from(pool);
    let schema = Schema::new(DbBackend::Sqlite);
    db.execute(&schema.create_table_from_entity(author::Entity))
        .await
        .unwrap();
    db.execute(&schema.create_table_from_entity(book::Entity))
        .await
        .unwrap();
    seed(&db).await;
    let session = sqlite_session(&db).await.unwrap();
    (dir, db, session)
}

/// Inside `record` (which holds the write lock from its `BEGIN IMMEDIATE`), a write through the
/// app's own `DatabaseConnection` cannot slip in unrecorded: it runs on another pool
/// connection, waits the busy timeout, and fails with "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_the_outer_connection_during_record_fails_instead_of_going_unrecorded() {
    let (_dir, db, session) = seeded_with_short_busy_timeout().await;
    let log = ChangeLog::open(&session).await.unwrap();
    let outer = db.clone();
    let seq = liteorm_seaorm::record(&log, Meta::actor("test"), |conn| async move {
        book(60, 1, "recorded", 1.25).insert(&conn).await?;
        let err = book(61, 1, "outer", 1.25).insert(&outer).await.unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let changes = log
        .entry(seq.unwrap())
        .await
        .unwrap()
        .changeset
        .changes()
        .unwrap();
    assert_eq!(changes.len(), 1);
    let (_, books) = snapshot(&db).await;
    assert_eq!(books.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 2, 60]);
}

/// The same for a bare capture, even before the closure's first write: capture takes the write
/// lock when it starts, so the outer write cannot commit unrecorded ahead of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_the_outer_connection_during_capture_fails_even_before_the_first_write() {
    let (_dir, db, session) = seeded_with_short_busy_timeout().await;
    let outer = db.clone();
    let changes = liteorm_seaorm::capture(&session, &[], |conn| async move {
        let err = book(61, 1, "outer", 1.25).insert(&outer).await.unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
        book(60, 1, "recorded", 1.25).insert(&conn).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    assert_eq!(changes.changes().unwrap().len(), 1);
    let (_, books) = snapshot(&db).await;
    assert_eq!(books.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 2, 60]);
}
