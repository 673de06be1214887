//! Writes made during a capture through other handles than the closure's session: routed and
//! recorded when they use the same pool on the capture's task, refused (never silently
//! unrecorded) when they use another connection.

use std::time::Duration;

use liteorm_changeset::{Changeset, capture};
use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;
use sqlx::sqlite::SqlitePoolOptions;

use crate::support::{db_path, dump};

/// A pool-backed session on a new file whose connections give up after `busy` on a lock.
async fn file_db(busy: Duration) -> (SqliteSession, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("routing.db");
    let options = SqliteSession::options(path.to_str().expect("utf-8"))
        .expect("options")
        .busy_timeout(busy);
    let db = SqliteSession::connect_with(options, SqliteSession::pool_options())
        .await
        .expect("open");
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, who TEXT)")
        .await
        .expect("create");
    (db, dir)
}

/// The (id, who) pairs a changeset inserts, sorted (changeset order is not defined).
fn inserted(changes: &Changeset) -> Vec<(i64, String)> {
    let mut rows: Vec<(i64, String)> = changes
        .iter()
        .map(|change| {
            let change = change.expect("decodes");
            match (&change.new[0], &change.new[1]) {
                (Some(Value::Integer(id)), Some(Value::Text(who))) => (*id, who.to_string()),
                other => panic!("unexpected row {other:?}"),
            }
        })
        .collect();
    rows.sort();
    rows
}

fn is_locked(err: &liteorm_changeset::Error) -> bool {
    err.to_string().contains("locked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applications_own_session_used_inside_the_closure_is_recorded() {
    let (db, _dir) = file_db(Duration::from_secs(5)).await;
    let app = db.clone();
    let changes = capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (1, 'closure session')", &[])
            .await?;
        // The application keeps using its pool-backed handle: routed to the capture.
        app.execute("INSERT INTO t VALUES (2, 'app session')", &[])
            .await?;
        let tx = app.begin().await?;
        tx.execute("INSERT INTO t VALUES (3, 'app transaction')", &[])
            .await?;
        tx.commit().await?;
        let rolled_back = app.begin().await?;
        rolled_back
            .execute("INSERT INTO t VALUES (4, 'rolled back')", &[])
            .await?;
        rolled_back.rollback().await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await
    .expect("capture");
    assert_eq!(
        inserted(&changes),
        [
            (1, "closure session".to_owned()),
            (2, "app session".to_owned()),
            (3, "app transaction".to_owned()),
        ]
    );
    assert_eq!(dump(&db, "t").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_capture_rolls_back_routed_writes_too() {
    let (db, _dir) = file_db(Duration::from_secs(5)).await;
    let app = db.clone();
    let failed = capture(&db, &["t"], |_s| async move {
        app.execute("INSERT INTO t VALUES (1, 'app session')", &[])
            .await?;
        Err::<(), _>(liteorm_changeset::Error::NoSuchTable("on purpose".into()))
    })
    .await;
    assert!(failed.is_err());
    assert!(dump(&db, "t").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_another_pool_during_a_capture_fails_and_writes_nothing() {
    let (db, _dir) = file_db(Duration::from_secs(5)).await;
    let path = db_path(&db).await;
    let other_options = SqliteSession::options(&path)
        .expect("options")
        .busy_timeout(Duration::from_millis(100));
    let other = SqliteSession::connect_with(other_options, SqliteSession::pool_options())
        .await
        .expect("second pool");
    let other_in = other.clone();
    let (changes, refused) = {
        let mut refused = None;
        let changes = capture(&db, &["t"], |s| {
            let refused = &mut refused;
            async move {
                // Before the closure's first write, too: capture holds the write lock.
                *refused = Some(
                    other_in
                        .execute("INSERT INTO t VALUES (99, 'other pool')", &[])
                        .await,
                );
                s.execute("INSERT INTO t VALUES (1, 'closure session')", &[])
                    .await?;
                Ok::<_, liteorm_changeset::Error>(())
            }
        })
        .await
        .expect("capture");
        (changes, refused.expect("ran"))
    };
    let err = refused.expect_err("a write through another pool must not commit unrecorded");
    assert!(is_locked(&err.into()), "busy, not something else");
    assert_eq!(inserted(&changes), [(1, "closure session".to_owned())]);
    assert_eq!(
        dump(&other, "t").await,
        [vec![
            Value::Integer(1),
            Value::Text("closure session".into())
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_spawned_from_the_closure_is_not_routed_and_cannot_write_unrecorded() {
    let (db, _dir) = file_db(Duration::from_millis(100)).await;
    let app = db.clone();
    let changes = capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (1, 'closure session')", &[])
            .await?;
        let spawned = tokio::spawn(async move {
            app.execute("INSERT INTO t VALUES (2, 'spawned task')", &[])
                .await
        })
        .await
        .expect("task");
        let err = spawned.expect_err("a spawned task's write must not commit unrecorded");
        assert!(is_locked(&err.into()));
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await
    .expect("capture");
    assert_eq!(inserted(&changes), [(1, "closure session".to_owned())]);
    assert_eq!(dump(&db, "t").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sqlx_pool_write_during_a_capture_is_refused_not_lost() {
    let (db, _dir) = file_db(Duration::from_secs(5)).await;
    let path = db_path(&db).await;
    let options = SqliteSession::options(&path)
        .expect("options")
        .busy_timeout(Duration::from_millis(100));
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .expect("pool");
    let pool_in = pool.clone();
    let changes = capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (1, 'closure session')", &[])
            .await?;
        let err = sqlx::query("INSERT INTO t VALUES (2, 'plain sqlx pool')")
            .execute(&pool_in)
            .await
            .expect_err("refused while the capture holds the write lock");
        assert!(err.to_string().contains("locked"), "{err}");
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await
    .expect("capture");
    assert_eq!(inserted(&changes), [(1, "closure session".to_owned())]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_capture_undoes_routed_writes_and_frees_the_connection() {
    let (db, _dir) = file_db(Duration::from_secs(5)).await;
    for polls_before_drop in 1..40 {
        let app = db.clone();
        let run = capture(&db, &["t"], |_s| async move {
            for id in 0..20 {
                app.execute("INSERT INTO t VALUES (?, 'app session')", &[id.into()])
                    .await?;
                tokio::task::yield_now().await;
            }
            Ok::<_, liteorm_changeset::Error>(())
        });
        let mut run = Box::pin(run);
        let mut finished = false;
        for _ in 0..polls_before_drop {
            if futures::FutureExt::now_or_never(run.as_mut()).is_some() {
                finished = true;
                break;
            }
        }
        drop(run);
        if finished {
            db.execute("DELETE FROM t", &[]).await.expect("reset");
            continue;
        }
        assert!(
            dump(&db, "t").await.is_empty(),
            "after {polls_before_drop} polls"
        );
    }
    // The connection and the write lock are free again.
    let changes = capture(&db, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (1, 'after')", &[]).await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await
    .expect("capture after cancellations");
    assert_eq!(inserted(&changes), [(1, "after".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_log_records_writes_through_the_applications_own_session() {
    use liteorm_replication::{ChangeLog, LogFilter, Meta};

    let (db, _dir) = file_db(Duration::from_secs(5)).await;
    let log = ChangeLog::open(&db).await.expect("log");
    let app = db.clone();
    let seq = log
        .record(Meta::actor("ada"), |s| async move {
            s.execute("INSERT INTO t VALUES (1, 'closure session')", &[])
                .await?;
            app.execute("INSERT INTO t VALUES (2, 'app session')", &[])
                .await?;
            Ok::<_, liteorm_replication::Error>(())
        })
        .await
        .expect("record")
        .expect("something changed");
    let entries = log.entries(&LogFilter::all()).await.expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].seq, seq);
    assert_eq!(
        inserted(&entries[0].changeset),
        [
            (1, "closure session".to_owned()),
            (2, "app session".to_owned())
        ]
    );
}
