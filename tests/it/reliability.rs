//! Reliability under hostile conditions: futures dropped at every await point, callbacks that
//! panic at every call, concurrent captures and applies on one small pool, and resource errors
//! (disk full, read-only, locked) during an apply. After each, the database holds either all of
//! the work or none of it, no session object is left alive and the pool is usable.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::{Duration, Instant};

use liteorm_changeset::{Capture, Changeset, ConflictAction, Error, apply};
use liteorm_core::{Session, Value};
use liteorm_replication::{ChangeLog, LogFilter, Meta};
use liteorm_sqlite::SqliteSession;
use sqlx::sqlite::SqlitePoolOptions;
use tempfile::TempDir;

use liteorm_tests::DropAfter;

use crate::support::{db_path, dump};

/// Connections in the pools of these tests.
const POOL_SIZE: u32 = 2;

/// The most polls any operation here needs; a harness that gets this far without the future
/// completing is stuck.
const MAX_POLLS: usize = 2_000;

/// How long cleanup after a dropped future may take before the test fails.
const SETTLE: Duration = Duration::from_secs(10);

/// A file database with a pool of [`POOL_SIZE`] connections and a 1 s busy timeout (a lock
/// left behind shows up as an error, not as a hang).
async fn small_pool() -> (SqliteSession, String, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rel.db");
    let options = SqliteSession::options(path.to_str().unwrap())
        .unwrap()
        .busy_timeout(Duration::from_secs(1));
    let pool = SqlitePoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(SETTLE);
    let db = SqliteSession::connect_with(options, pool).await.unwrap();
    let path = db_path(&db).await;
    (db, path, dir)
}

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)";

/// Rows 1..=3 of `t`, the starting point of every attempt.
async fn reset(db: &SqliteSession) {
    db.execute_batch("DELETE FROM t; INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)")
        .await
        .unwrap();
}

/// After a dropped (or finished) operation: the session objects are gone, every pooled
/// connection is out of any transaction and can take the write lock, and the table holds one of
/// `allowed` contents. Returns which.
async fn settled(db: &SqliteSession, path: &str, allowed: &[&[Vec<Value>]]) -> usize {
    let start = Instant::now();
    while liteorm_changeset::live_session_objects(path) != 0 {
        assert!(
            start.elapsed() < SETTLE,
            "a session object outlived its capture"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Hold every connection of the pool at once, so that each one is checked. `BEGIN` fails
    // inside a transaction; `IMMEDIATE` fails while another connection holds the write lock.
    let mut pins = Vec::new();
    for _ in 0..POOL_SIZE {
        let pinned = tokio::time::timeout(SETTLE, db.pin())
            .await
            .expect("a connection never came back to the pool")
            .unwrap();
        let mut guard = pinned.lock().await.unwrap();
        guard.execute_batch("BEGIN IMMEDIATE").await.unwrap();
        guard.execute_batch("ROLLBACK").await.unwrap();
        drop(guard);
        pins.push(pinned);
    }
    for pinned in pins {
        pinned.release().await;
    }
    let rows = dump(db, "t").await;
    allowed
        .iter()
        .position(|content| *content == rows.as_slice())
        .unwrap_or_else(|| panic!("half done: {rows:?}, expected one of {allowed:?}"))
}

fn rows(rows: &[(i64, &str, i64)]) -> Vec<Vec<Value>> {
    rows.iter()
        .map(|&(id, v, n)| vec![id.into(), v.into(), n.into()])
        .collect()
}

fn before() -> Vec<Vec<Value>> {
    rows(&[(1, "a", 1), (2, "b", 2), (3, "c", 3)])
}

/// What [`writes`] leaves.
fn after_writes() -> Vec<Vec<Value>> {
    rows(&[(1, "a", 10), (3, "c", 3), (4, "d", 4)])
}

/// The unit of work the capture tests cancel: three statements. Inside capture's write
/// transaction they run inline on the pinned connection, so they need not suspend at all.
async fn writes(s: SqliteSession) -> Result<(), Error> {
    s.execute("UPDATE t SET n = 10 WHERE id = 1", &[]).await?;
    s.execute("DELETE FROM t WHERE id = 2", &[]).await?;
    s.execute("INSERT INTO t VALUES (4, 'd', 4)", &[]).await?;
    Ok(())
}

/// Runs `operation` and drops it after 0, 1, 2, ... polls until it completes; after every
/// attempt the database must be [`settled`] in one of `allowed`, and the finished run must give
/// `finished` (an index into `allowed`). Returns how many attempts were dropped.
async fn drop_at_every_await<F, Fut, T>(
    db: &SqliteSession,
    path: &str,
    mut operation: F,
    allowed: &[&[Vec<Value>]],
    finished: usize,
) -> usize
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    for polls in 0..MAX_POLLS {
        reset(db).await;
        match DropAfter::new(operation(), polls).await {
            None => {
                settled(db, path, allowed).await;
            }
            Some(_) => {
                assert_eq!(settled(db, path, allowed).await, finished);
                return polls;
            }
        }
    }
    panic!("the operation did not complete in {MAX_POLLS} polls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_dropped_at_every_await_leaves_nothing_behind() {
    capture_dropped_at_every_await(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patchset_capture_dropped_at_every_await_leaves_nothing_behind() {
    capture_dropped_at_every_await(true).await;
}

/// [`writes`] through sqlx's query API on the capture's session, with a stream read partway
/// and a liteorm query in between: the await points inside sqlx's commands (its worker's
/// answers) are dropped at too.
async fn sqlx_writes(s: SqliteSession) -> Result<(), Error> {
    let driver = |e: sqlx::Error| Error::Session(liteorm_core::Error::Driver(Box::new(e)));
    sqlx::query("UPDATE t SET n = ? WHERE id = 1")
        .bind(10_i64)
        .execute(&s)
        .await
        .map_err(driver)?;
    {
        let mut ids = sqlx::query_scalar::<_, i64>("SELECT id FROM t ORDER BY id").fetch(&s);
        futures::TryStreamExt::try_next(&mut ids)
            .await
            .map_err(driver)?;
    }
    s.query("SELECT count(*) FROM t", &[]).await?;
    sqlx::query("DELETE FROM t WHERE id = 2")
        .execute(&s)
        .await
        .map_err(driver)?;
    s.execute("INSERT INTO t VALUES (4, 'd', 4)", &[]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_of_sqlx_queries_dropped_at_every_await_leaves_nothing_behind() {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    let dropped = drop_at_every_await(
        &db,
        &path,
        || async {
            let changes = Capture::new(&db)
                .tables(["t"])
                .changeset(sqlx_writes)
                .await
                .unwrap();
            assert_eq!(changes.changes().unwrap().len(), 3);
        },
        &[&before(), &after_writes()],
        1,
    )
    .await;
    assert!(dropped >= 4, "only {dropped} await points");
}

/// Drops a changeset (or patchset) capture of [`writes`] at every await point.
async fn capture_dropped_at_every_await(patchset: bool) {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    let dropped = drop_at_every_await(
        &db,
        &path,
        || async {
            let capture = Capture::new(&db).tables(["t"]);
            let changes = if patchset {
                capture
                    .patchset(writes)
                    .await
                    .unwrap()
                    .changes()
                    .unwrap()
                    .len()
            } else {
                capture
                    .changeset(writes)
                    .await
                    .unwrap()
                    .changes()
                    .unwrap()
                    .len()
            };
            assert_eq!(changes, 3);
        },
        &[&before(), &after_writes()],
        1,
    )
    .await;
    // Only a guard against a vacuous harness: the count falls as round trips to sqlx's worker
    // are removed (statements, BEGIN IMMEDIATE and COMMIT run inline unless they must wait).
    assert!(dropped >= 2, "only {dropped} await points");
}

/// A capture large enough (over 256 KiB of recorded data) that the changeset is generated on a
/// blocking thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_capture_dropped_at_every_await_leaves_nothing_behind() {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    let big = "x".repeat(400 * 1024);
    let with_big = rows(&[(1, &big, 1), (2, "b", 2), (3, "c", 3)]);
    let dropped = drop_at_every_await(
        &db,
        &path,
        || async {
            let big = big.clone();
            let cs = Capture::new(&db)
                .tables(["t"])
                .changeset(|s| async move {
                    // As in the change log test: the closure's own await point, since liteorm's
                    // statements have none when nothing contends for the database.
                    tokio::task::yield_now().await;
                    s.execute("UPDATE t SET v = ? WHERE id = 1", &[big.into()])
                        .await?;
                    Ok::<_, Error>(())
                })
                .await
                .unwrap();
            assert_eq!(cs.changes().unwrap().len(), 1);
        },
        &[&before(), &with_big],
        1,
    )
    .await;
    assert!(dropped >= 3, "only {dropped} await points");
}

/// The changeset of [`writes`] on a copy of the starting rows.
async fn writes_changeset() -> Changeset {
    let db = SqliteSession::open_in_memory().await.unwrap();
    db.execute_batch(SCHEMA).await.unwrap();
    reset(&db).await;
    Capture::new(&db)
        .tables(["t"])
        .changeset(writes)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_dropped_at_every_await_is_all_or_nothing() {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    let cs = writes_changeset().await;
    assert!(cs.len() <= 16 * 1024, "applied inline");
    let dropped = drop_at_every_await(
        &db,
        &path,
        || async {
            let report = apply(&db, &cs).await.unwrap();
            assert_eq!(report.applied, 3);
        },
        &[&before(), &after_writes()],
        1,
    )
    .await;
    assert!(dropped >= 2, "only {dropped} await points");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_apply_dropped_at_every_await_is_all_or_nothing() {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    // Over 16 KiB: applied on a blocking thread that owns the connection.
    let source = SqliteSession::open_in_memory().await.unwrap();
    source.execute_batch(SCHEMA).await.unwrap();
    reset(&source).await;
    let cs = Capture::new(&source)
        .tables(["t"])
        .changeset(|s| async move {
            for id in 100..400_i64 {
                s.execute(
                    "INSERT INTO t VALUES (?, ?, ?)",
                    &[id.into(), "y".repeat(100).into(), id.into()],
                )
                .await?;
            }
            writes(s).await
        })
        .await
        .unwrap();
    assert!(cs.len() > 16 * 1024, "applied on a blocking thread");
    let after = dump(&source, "t").await;
    let dropped = drop_at_every_await(
        &db,
        &path,
        || async {
            let report = apply(&db, &cs).await.unwrap();
            assert_eq!(report.applied, 303);
        },
        &[&before(), &after],
        1,
    )
    .await;
    assert!(dropped >= 2, "only {dropped} await points");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_log_record_dropped_at_every_await_logs_exactly_what_committed() {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    let log = ChangeLog::open(&db).await.unwrap();
    for polls in 0..MAX_POLLS {
        reset(&db).await;
        let logged = log.last_seq().await.unwrap();
        // The unit of work yields before and after its writes, as application code that awaits
        // anything else does: liteorm's own part has no await point left when nothing contends
        // for the database (its statements run inline), so only these let the harness drop the
        // record with the transaction open and the capture live.
        let recorded = DropAfter::new(
            log.record(Meta::actor("rel"), |s| async move {
                tokio::task::yield_now().await;
                writes(s).await?;
                tokio::task::yield_now().await;
                Ok::<_, liteorm_replication::Error>(())
            }),
            polls,
        )
        .await;
        let content = settled(&db, &path, &[&before(), &after_writes()]).await;
        // The log has a new entry exactly when the data changed, and its seq is the next one.
        let entries = log
            .entries(&LogFilter::all().seqs(logged + 1, u64::MAX))
            .await
            .unwrap();
        assert_eq!(
            entries.len(),
            content,
            "data and log entry: both or neither"
        );
        if let Some(entry) = entries.first() {
            assert_eq!(entry.seq, logged + 1);
            assert_eq!(entry.changeset.changes().unwrap().len(), 3);
        }
        if let Some(result) = recorded {
            assert_eq!(result.unwrap(), Some(logged + 1));
            // A guard against a vacuous harness (see the capture tests).
            assert!(polls >= 2, "only {polls} await points");
            return;
        }
    }
    panic!("record did not complete in {MAX_POLLS} polls");
}

// ---------------------------------------------------------------------------------------------
// panics in callbacks

/// Tables `a`, `b`, `c`, each `(id INTEGER PRIMARY KEY, v)`, for the filter tests.
const THREE_TABLES: &str = "CREATE TABLE a(id INTEGER PRIMARY KEY, v); \
    CREATE TABLE b(id INTEGER PRIMARY KEY, v); \
    CREATE TABLE c(id INTEGER PRIMARY KEY, v)";

async fn three_tables(db: &SqliteSession) -> Vec<Vec<Vec<Value>>> {
    let mut all = Vec::new();
    for table in ["a", "b", "c"] {
        all.push(dump(db, table).await);
    }
    all
}

/// A counter of calls that panics on call number `panic_at` (0-based; `usize::MAX`: never).
fn calls(panic_at: usize) -> (Arc<AtomicUsize>, impl Fn() + Send + Sync + 'static) {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let call = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        assert_ne!(n, panic_at, "callback panics on call {n}");
    };
    (count, call)
}

fn assert_panicked(err: &Error, which: &str) {
    match err {
        Error::CallbackPanicked { callback, message } => {
            assert_eq!(*callback, which);
            assert!(message.contains("callback panics on call"), "{message}");
        }
        other => panic!("expected a {which} panic, got {other:?}"),
    }
}

/// A changeset that updates rows 1..=3 of `t` and inserts row 4 (plus `padding` more rows),
/// and `t` diverged so that applying it raises four conflicts: three DATA, one CONFLICT.
async fn conflicting_changeset(padding: i64) -> Changeset {
    let source = SqliteSession::open_in_memory().await.unwrap();
    source.execute_batch(SCHEMA).await.unwrap();
    reset(&source).await;
    Capture::new(&source)
        .tables(["t"])
        .changeset(move |s| async move {
            s.execute("UPDATE t SET n = n + 100", &[]).await?;
            s.execute("INSERT INTO t VALUES (4, 'd', 4)", &[]).await?;
            for id in 0..padding {
                s.execute(
                    "INSERT INTO t VALUES (?, ?, 0)",
                    &[(1000 + id).into(), "z".repeat(100).into()],
                )
                .await?;
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap()
}

const DIVERGE: &str = "UPDATE t SET n = n + 1; INSERT INTO t VALUES (4, 'x', 0)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_handler_panicking_at_every_call_rolls_back() {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    // Inline (under 16 KiB) and on a blocking thread (over).
    for padding in [0, 300] {
        let cs = conflicting_changeset(padding).await;
        assert_eq!(cs.len() > 16 * 1024, padding > 0);
        reset(&db).await;
        db.execute_batch(DIVERGE).await.unwrap();
        let diverged = dump(&db, "t").await;
        let (count, call) = calls(usize::MAX);
        let handler = move |_: &liteorm_changeset::Conflict| {
            call();
            ConflictAction::Replace
        };
        // A run that does not panic, on a scratch copy of the state: how many calls there are.
        let scratch = SqliteSession::open_in_memory().await.unwrap();
        scratch.execute_batch(SCHEMA).await.unwrap();
        reset(&scratch).await;
        scratch.execute_batch(DIVERGE).await.unwrap();
        let report = apply(&scratch, &cs).on_conflict(handler).await.unwrap();
        let total = count.load(Ordering::SeqCst);
        assert_eq!(total, 4, "{report:?}");
        for panic_at in 0..total {
            let (_, call) = calls(panic_at);
            let err = apply(&db, &cs)
                .on_conflict(move |_| {
                    call();
                    ConflictAction::Replace
                })
                .await
                .unwrap_err();
            assert_panicked(&err, "conflict handler");
            settled(&db, &path, &[&diverged]).await;
        }
        // The connection that saw the panics applies the same changeset cleanly.
        let again = apply(&db, &cs)
            .on_conflict(|_| ConflictAction::Replace)
            .await
            .unwrap();
        assert_eq!(again.conflicts, report.conflicts);
        assert_eq!(dump(&db, "t").await, dump(&scratch, "t").await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_filter_panicking_at_every_call_rolls_back() {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    db.execute_batch(THREE_TABLES).await.unwrap();
    let source = SqliteSession::open_in_memory().await.unwrap();
    source.execute_batch(THREE_TABLES).await.unwrap();
    let cs = Capture::new(&source)
        .changeset(|s| async move {
            s.execute_batch(
                "INSERT INTO a VALUES (1, 'a'); INSERT INTO b VALUES (1, 'b'); \
                 INSERT INTO c VALUES (1, 'c'); INSERT INTO a VALUES (2, 'a')",
            )
            .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let (count, call) = calls(usize::MAX);
    let scratch = SqliteSession::open_in_memory().await.unwrap();
    scratch.execute_batch(THREE_TABLES).await.unwrap();
    apply(&scratch, &cs)
        .filter(move |_| {
            call();
            true
        })
        .await
        .unwrap();
    let total = count.load(Ordering::SeqCst);
    assert!(total >= 3, "one call per table at least, got {total}");
    let empty = three_tables(&db).await;
    for panic_at in 0..total {
        let (_, call) = calls(panic_at);
        let err = apply(&db, &cs)
            .filter(move |_| {
                call();
                true
            })
            .await
            .unwrap_err();
        assert_panicked(&err, "table filter");
        assert_eq!(three_tables(&db).await, empty, "panic at call {panic_at}");
        reset(&db).await;
        settled(&db, &path, &[&before()]).await;
    }
    apply(&db, &cs).await.unwrap();
    assert_eq!(three_tables(&db).await, three_tables(&scratch).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_filter_panicking_at_every_call_rolls_back() {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    db.execute_batch(THREE_TABLES).await.unwrap();
    let work = |s: SqliteSession| async move {
        for table in ["a", "b", "c", "a"] {
            s.execute(&format!("INSERT INTO {table}(v) VALUES ('x')"), &[])
                .await?;
        }
        Ok::<_, Error>(())
    };
    let empty = three_tables(&db).await;
    let (count, call) = calls(usize::MAX);
    let cs = Capture::new(&db)
        .table_filter(move |_| {
            call();
            true
        })
        .changeset(work)
        .await
        .unwrap();
    assert_eq!(cs.changes().unwrap().len(), 4);
    let total = count.load(Ordering::SeqCst);
    assert_eq!(total, 3, "once per table");
    db.execute_batch("DELETE FROM a; DELETE FROM b; DELETE FROM c")
        .await
        .unwrap();
    for panic_at in 0..total {
        let (_, call) = calls(panic_at);
        let err = Capture::new(&db)
            .table_filter(move |_| {
                call();
                true
            })
            .changeset(work)
            .await
            .unwrap_err();
        assert_panicked(&err, "table filter");
        reset(&db).await;
        settled(&db, &path, &[&before()]).await;
        assert_eq!(three_tables(&db).await, empty, "panic at call {panic_at}");
    }
}

// ---------------------------------------------------------------------------------------------
// concurrency

/// Rows a concurrency task owns: ids `base..base + ROWS_PER_TASK`.
const ROWS_PER_TASK: i64 = 1_000_000;

async fn own_rows(db: &SqliteSession, base: i64) -> Vec<Vec<Value>> {
    db.query(
        "SELECT * FROM t WHERE id >= ? AND id < ? ORDER BY id",
        &[base.into(), (base + ROWS_PER_TASK).into()],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|row| row.into_values())
    .collect()
}

/// One task of the concurrency test: round after round until `deadline`, captures writes to its
/// own rows, checks that the changeset holds exactly those writes, undoes them by applying the
/// inverse and redoes them by applying the changeset, checking its rows after each. Returns
/// the number of rounds.
async fn owner_task(db: SqliteSession, task: i64, deadline: Instant) -> usize {
    let base = task * ROWS_PER_TASK;
    let mut round = 0_i64;
    while Instant::now() < deadline {
        let before = own_rows(&db, base).await;
        let (id, name) = (base + round, format!("{task}-{round}"));
        let cs = Capture::new(&db)
            .tables(["t"])
            .changeset({
                let name = name.clone();
                move |s| async move {
                    s.execute(
                        "INSERT INTO t VALUES (?, ?, ?)",
                        &[id.into(), name.into(), round.into()],
                    )
                    .await?;
                    if round >= 1 {
                        s.execute("UPDATE t SET n = n + 1000 WHERE id = ?", &[(id - 1).into()])
                            .await?;
                    }
                    if round >= 2 && round % 3 == 2 {
                        s.execute("DELETE FROM t WHERE id = ?", &[(id - 2).into()])
                            .await?;
                    }
                    Ok::<_, Error>(())
                }
            })
            .await
            .unwrap();

        // Exactly this round's writes: no other task's row, none missing.
        let mut seen: Vec<(liteorm_changeset::ChangeOp, Vec<Value>)> = cs
            .changes()
            .unwrap()
            .into_iter()
            .map(|change| {
                assert_eq!(&*change.table, "t");
                let values = match change.op {
                    liteorm_changeset::ChangeOp::Insert => change.new.clone(),
                    _ => change.old.clone(),
                };
                (change.op, values.into_iter().flatten().collect())
            })
            .collect();
        seen.sort_by_key(|(_, values)| format!("{values:?}"));
        let mut expected = vec![(
            liteorm_changeset::ChangeOp::Insert,
            vec![id.into(), name.clone().into(), round.into()],
        )];
        if round >= 1 {
            // The update's old record: the key and the old value of the changed column.
            let old = vec![(id - 1).into(), (round - 1).into()];
            expected.push((liteorm_changeset::ChangeOp::Update, old));
        }
        if round >= 2 && round % 3 == 2 {
            let deleted = vec![
                (id - 2).into(),
                format!("{task}-{}", round - 2).into(),
                (round - 2 + 1000).into(),
            ];
            expected.push((liteorm_changeset::ChangeOp::Delete, deleted));
        }
        expected.sort_by_key(|(_, values)| format!("{values:?}"));
        assert_eq!(seen, expected, "task {task} round {round}");

        let after = own_rows(&db, base).await;
        apply(&db, &cs.invert().unwrap()).await.unwrap();
        assert_eq!(
            own_rows(&db, base).await,
            before,
            "task {task} round {round}: undo"
        );
        apply(&db, &cs).await.unwrap();
        assert_eq!(
            own_rows(&db, base).await,
            after,
            "task {task} round {round}: redo"
        );
        round += 1;
    }
    usize::try_from(round).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_tasks_capture_and_apply_on_one_pool_of_four() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteSession::options(dir.path().join("busy.db").to_str().unwrap()).unwrap();
    let pool = SqlitePoolOptions::new().max_connections(4);
    let db = SqliteSession::connect_with(options, pool).await.unwrap();
    db.execute_batch(SCHEMA).await.unwrap();
    let path = db_path(&db).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let tasks: Vec<_> = (1..=8)
        .map(|task| tokio::spawn(owner_task(db.clone(), task, deadline)))
        .collect();
    let rounds = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .expect("deadlock: the tasks did not finish within 60 s of a 3 s run");
    for (task, rounds) in rounds.into_iter().enumerate() {
        let rounds = rounds.unwrap();
        assert!(rounds >= 3, "task {task} ran only {rounds} rounds");
    }
    assert_eq!(liteorm_changeset::live_session_objects(&path), 0);
}

// ---------------------------------------------------------------------------------------------
// crashes

/// Kills a process that records units of work through a change log (`log_writer`) with SIGKILL
/// at random moments, restarts it each time, and checks after every kill that data and log agree
/// (each unit's data is there exactly when its entry is, seqs have no gaps) and at the end that
/// replaying the log on an empty copy gives the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_log_writer_killed_at_random_points_stays_consistent() {
    const ENTRIES: u64 = 300;
    const LOG_SCHEMA: &str = "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER); \
        CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL); \
        INSERT INTO counter VALUES (1, 0)";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    {
        let db = SqliteSession::open(path.to_str().unwrap()).await.unwrap();
        db.execute_batch(LOG_SCHEMA).await.unwrap();
        ChangeLog::open(&db).await.unwrap();
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    println!("kill schedule seed: {seed}");
    let mut rng = seed | 1;
    let (mut kills, mut mid_way) = (0, 0);
    // The kill window widens with every attempt (a busy machine may take longer than the first
    // windows just to start the writer); the last attempt is never killed.
    const ATTEMPTS: u64 = 60;
    for attempt in 0..ATTEMPTS {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_log_writer"))
            .arg(&path)
            .arg(ENTRIES.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if attempt + 1 < ATTEMPTS {
            // xorshift: a kill delay between 0 and 40 ms x (1 + attempt / 10).
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            let window_us = 40_000 * (1 + attempt / 10);
            std::thread::sleep(Duration::from_micros(u64::from(rng) % window_us));
            if child.try_wait().unwrap().is_none() {
                // `Child::kill` sends SIGKILL on Unix.
                child.kill().unwrap();
                kills += 1;
            }
        }
        let status = child.wait().unwrap();
        if !status.success() {
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL),
                "the writer failed by itself: {status:?}"
            );
        }
        // Data and log agree after every kill.
        let db = SqliteSession::open(path.to_str().unwrap()).await.unwrap();
        let check = db.query("PRAGMA integrity_check", &[]).await.unwrap();
        assert_eq!(check[0].try_get::<String>(0).unwrap(), "ok");
        let log = ChangeLog::open(&db).await.unwrap();
        let last = log.last_seq().await.unwrap();
        let count: i64 = db
            .query("SELECT n FROM counter WHERE id = 1", &[])
            .await
            .unwrap()[0]
            .try_get(0)
            .unwrap();
        assert_eq!(
            u64::try_from(count).unwrap(),
            last,
            "data without its log entry, or the reverse"
        );
        let items = dump(&db, "item").await;
        assert_eq!(items.len(), usize::try_from(last).unwrap());
        let entries = log.entries(&LogFilter::all()).await.unwrap();
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "a gap in the log");
        if last > 0 && last < ENTRIES {
            mid_way += 1;
        }
        if status.success() {
            assert_eq!(last, ENTRIES);
            // The log replayed on an empty copy gives the same data.
            let copy = SqliteSession::open_in_memory().await.unwrap();
            copy.execute_batch(LOG_SCHEMA).await.unwrap();
            for entry in &entries {
                apply(&copy, &entry.changeset).await.unwrap();
            }
            assert_eq!(dump(&copy, "item").await, items);
            assert_eq!(dump(&copy, "counter").await, dump(&db, "counter").await);
            println!("writer killed {kills} times, {mid_way} of them with a partial log");
            assert!(mid_way > 0, "the writer was never killed part way");
            return;
        }
    }
    panic!("the writer never finished");
}

// ---------------------------------------------------------------------------------------------
// resource errors

/// SQLite's primary result code in `err`, from a session-extension call or a statement.
fn primary_code(err: &Error) -> Option<i32> {
    match err {
        Error::Sqlite { code, .. } => Some(code.primary().0),
        Error::Session(liteorm_core::Error::Database {
            code: Some(code), ..
        }) => Some(code.primary().0),
        _ => None,
    }
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_READONLY: i32 = 8;
const SQLITE_FULL: i32 = 13;

/// A changeset inserting `rows` rows of `t` whose `v` is `size` bytes long, and the rows.
async fn inserts(rows: i64, size: usize) -> (Changeset, Vec<Vec<Value>>) {
    let source = SqliteSession::open_in_memory().await.unwrap();
    source.execute_batch(SCHEMA).await.unwrap();
    reset(&source).await;
    let cs = Capture::new(&source)
        .tables(["t"])
        .changeset(move |s| async move {
            for id in 10..10 + rows {
                s.execute(
                    "INSERT INTO t VALUES (?, ?, ?)",
                    &[id.into(), "w".repeat(size).into(), id.into()],
                )
                .await?;
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    (cs, dump(&source, "t").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_during_apply_is_sqlite_full_and_applies_nothing() {
    // One connection, so that the page limit (a per-connection setting) covers every apply.
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteSession::options(dir.path().join("full.db").to_str().unwrap()).unwrap();
    let db = SqliteSession::connect_with(options, SqlitePoolOptions::new().max_connections(1))
        .await
        .unwrap();
    db.execute_batch(SCHEMA).await.unwrap();
    reset(&db).await;
    // Inline (one 12 KiB row) and on a blocking thread (300 rows of 1 KiB).
    for (rows, size) in [(1, 12 * 1024), (300, 1024)] {
        let (cs, after) = inserts(rows, size).await;
        assert_eq!(cs.len() > 16 * 1024, rows > 1);
        let pages: i64 = db.query("PRAGMA page_count", &[]).await.unwrap()[0]
            .try_get(0)
            .unwrap();
        db.execute_batch(&format!("PRAGMA max_page_count = {}", pages + 1))
            .await
            .unwrap();
        let err = apply(&db, &cs).await.unwrap_err();
        assert_eq!(primary_code(&err), Some(SQLITE_FULL), "{err}");
        assert_eq!(dump(&db, "t").await, before(), "nothing half-applied");
        // The same connection, given room, applies it.
        db.execute_batch("PRAGMA max_page_count = 1073741823")
            .await
            .unwrap();
        apply(&db, &cs).await.unwrap();
        assert_eq!(dump(&db, "t").await, after);
        reset(&db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_to_a_read_only_database_is_sqlite_readonly() {
    let (db, path, _dir) = small_pool().await;
    db.execute_batch(SCHEMA).await.unwrap();
    reset(&db).await;
    let reader = SqliteSession::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true),
        SqlitePoolOptions::new().max_connections(1),
    )
    .await
    .unwrap();
    for (rows, size) in [(1, 10), (300, 100)] {
        let (cs, _) = inserts(rows, size).await;
        let err = apply(&reader, &cs).await.unwrap_err();
        assert_eq!(primary_code(&err), Some(SQLITE_READONLY), "{err}");
        assert_eq!(dump(&reader, "t").await, before());
    }
    // Both the read-only connection and the writers are fine.
    let (cs, after) = inserts(2, 10).await;
    apply(&db, &cs).await.unwrap();
    assert_eq!(dump(&reader, "t").await, after);
    settled(&db, &path, &[&after]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_while_another_connection_holds_the_write_lock_is_sqlite_busy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("locked.db");
    let options = SqliteSession::options(file.to_str().unwrap())
        .unwrap()
        .busy_timeout(Duration::from_millis(200));
    let db = SqliteSession::connect_with(options, SqlitePoolOptions::new().max_connections(2))
        .await
        .unwrap();
    db.execute_batch(SCHEMA).await.unwrap();
    reset(&db).await;
    let path = db_path(&db).await;
    let other = SqliteSession::open(file.to_str().unwrap()).await.unwrap();
    for (rows, size) in [(1, 10), (300, 100)] {
        let (cs, after) = inserts(rows, size).await;
        let holder = other.begin_immediate().await.unwrap();
        let started = Instant::now();
        let err = apply(&db, &cs).await.unwrap_err();
        assert_eq!(primary_code(&err), Some(SQLITE_BUSY), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited the busy timeout only"
        );
        holder.rollback().await.unwrap();
        assert_eq!(dump(&db, "t").await, before(), "nothing half-applied");
        settled(&db, &path, &[&before()]).await;
        // The lock is free again: the same pool applies it.
        apply(&db, &cs).await.unwrap();
        assert_eq!(dump(&db, "t").await, after);
        reset(&db).await;
    }
}
