//! `replication --iters K` (issue 8, not in WORKLOADS.md): K one-row transactions recorded with
//! `ChangeLog::record` on a primary, then applied by a `Replica` catching up from the primary's
//! log table. The target (≥ 20 000 transactions/s recorded and applied) is absolute; the raw
//! side does the same work with direct SQLite calls on one connection per database, which is
//! the floor of any implementation on this machine and this SQLite.

use liteorm_core::{Session, Value};
use liteorm_replication::{ChangeLog, LogTableSource, Meta, Replica};
use tokio::runtime::Runtime;

use crate::common::{
    BenchResult, CREATE_TABLE, Common, DbMode, INSERT, Line, RowData, fingerprint, line_if, median,
    per_s, query_i64,
};
use crate::instr::Timer;
use crate::lite::{self, LiteDb};
use crate::raw::{self, Db};

/// One repetition's times.
struct Rep {
    record_ms: f64,
    apply_ms: f64,
    log_bytes: u64,
}

async fn rep(mode: DbMode, rows: &[[Value; 5]]) -> BenchResult<Rep> {
    let expected = u64::try_from(rows.len())?;
    let primary = LiteDb::open(mode).await?;
    let replica_db = LiteDb::open(mode).await?;
    for db in [&primary, &replica_db] {
        db.session.execute_batch(CREATE_TABLE).await?;
    }
    let log = ChangeLog::open(&primary.session).await?;
    let replica = Replica::open(&replica_db.session).await?;

    let start = Timer::start();
    for row in rows {
        log.record(Meta::actor("bench"), |s| async move {
            s.execute(INSERT, row).await?;
            Ok::<_, liteorm_replication::Error>(())
        })
        .await?;
    }
    let record_ms = start.stop(c"record_ms");

    let start = Timer::start();
    let caught_up = replica
        .catch_up(&mut LogTableSource::new(&primary.session))
        .await?;
    let apply_ms = start.stop(c"apply_ms");

    // Content checks (untimed): one log entry per transaction, all applied, same table.
    assert_eq!(log.last_seq().await?, expected, "content check failed");
    assert_eq!(
        (caught_up.applied, caught_up.last_seq),
        (expected, expected),
        "content check failed"
    );
    let source = primary.with_raw(fingerprint).await?;
    let copy = replica_db.with_raw(fingerprint).await?;
    assert_eq!(source.rows, expected, "content check failed");
    assert_eq!(source, copy, "content check failed: the replica differs");
    let log_bytes = primary
        .with_raw(|h| crate::common::query_i64(h, "SELECT sum(length(blob)) FROM liteorm_changes"))
        .await?;
    primary.close().await;
    replica_db.close().await;
    Ok(Rep {
        record_ms,
        apply_ms,
        log_bytes: u64::try_from(log_bytes)?,
    })
}

/// The raw log table: the columns and values of liteorm's (`liteorm_changes`).
const RAW_LOG: &str = "CREATE TABLE log(seq INTEGER PRIMARY KEY, committed_at INTEGER NOT NULL, \
     actor TEXT, reason TEXT, tables TEXT NOT NULL, kind TEXT NOT NULL, ref_seq INTEGER, \
     blob BLOB NOT NULL)";

/// Entries a replica applies per transaction, as `Replica`'s default batch.
const RAW_BATCH: i64 = 256;

/// The same work without liteorm: per transaction `BEGIN IMMEDIATE`, a session on `t`, the
/// insert, `sqlite3session_changeset`, the log row, `COMMIT`; then the replica reads the log in
/// seq order and applies each changeset with `sqlite3changeset_apply` (conflicts abort), 256
/// entries per transaction, each batch also writing the replica's cursor row.
fn raw_rep(mode: DbMode, rows: &[RowData]) -> BenchResult<Rep> {
    let expected = i64::try_from(rows.len())?;
    let primary = Db::open(mode)?;
    let replica = Db::open(mode)?;
    let (p, r) = (primary.handle(), replica.handle());
    p.exec(CREATE_TABLE)?;
    p.exec(RAW_LOG)?;
    r.exec(CREATE_TABLE)?;
    r.exec("CREATE TABLE cursor(name TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)")?;
    r.exec("INSERT INTO cursor VALUES ('bench', 0)")?;
    let mut insert = p.prepare(INSERT)?;
    let mut append = p.prepare(
        "INSERT INTO log(committed_at, actor, reason, tables, kind, ref_seq, blob) \
         VALUES (?, 'bench', NULL, ',t,', 'change', NULL, ?)",
    )?;

    let start = Timer::start();
    for row in rows {
        p.exec("BEGIN IMMEDIATE")?;
        let recording = p.session("t")?;
        insert.bind_row(row)?;
        insert.run()?;
        let changeset = recording.changeset()?;
        drop(recording);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        append.bind_i64(1, i64::try_from(now.as_millis())?)?;
        append.bind_blob(2, &changeset)?;
        append.run()?;
        p.exec("COMMIT")?;
    }
    let record_ms = start.stop(c"record_ms");

    let mut fetch = p.prepare("SELECT seq, blob FROM log WHERE seq > ? ORDER BY seq LIMIT ?")?;
    let mut cursor = r.prepare("UPDATE cursor SET last_seq = ? WHERE name = 'bench'")?;
    let mut calls = 0;
    let start = Timer::start();
    let mut last = 0;
    loop {
        fetch.bind_i64(1, last)?;
        fetch.bind_i64(2, RAW_BATCH)?;
        let before = last;
        r.exec("BEGIN IMMEDIATE")?;
        while fetch.step()? {
            let (raw::ValueRef::Integer(seq), raw::ValueRef::Blob(blob)) =
                (fetch.column(0), fetch.column(1))
            else {
                return Err("content check failed: a log row is not (seq, blob)".into());
            };
            r.apply(blob, raw::abort_counting, &mut calls)?;
            last = seq;
        }
        fetch.reset()?;
        cursor.bind_i64(1, last)?;
        cursor.run()?;
        r.exec("COMMIT")?;
        if last == before {
            break;
        }
    }
    let apply_ms = start.stop(c"apply_ms");

    // Content checks (untimed), as on the liteorm side.
    assert_eq!((last, calls), (expected, 0), "content check failed");
    let source = fingerprint(p)?;
    assert_eq!(
        source.rows,
        u64::try_from(expected)?,
        "content check failed"
    );
    assert_eq!(
        source,
        fingerprint(r)?,
        "content check failed: the replica differs"
    );
    let log_bytes = query_i64(p, "SELECT sum(length(blob)) FROM log")?;
    Ok(Rep {
        record_ms,
        apply_ms,
        log_bytes: u64::try_from(log_bytes)?,
    })
}

/// Runs the workload and prints the liteorm, raw and ratio lines.
pub(crate) fn run(rt: &Runtime, common: &Common, iters: usize) -> BenchResult<()> {
    let last = i64::try_from(iters)?;
    let raw_rows: Vec<RowData> = (1..=last).map(RowData::new).collect();
    let lite_rows: Vec<[Value; 5]> = raw_rows.iter().map(lite::values).collect();
    let (lite, raw) = common.run_reps(
        || rt.block_on(rep(common.db, &lite_rows)),
        || raw_rep(common.db, &raw_rows),
    )?;
    common.print(
        "replication",
        ("iters", iters as u64),
        line_if(&lite, |reps| line(common, "liteorm", iters, reps)),
        line_if(&raw, |reps| line(common, "raw", iters, reps)),
        &[
            "record_ms",
            "record_tx_per_s",
            "apply_ms",
            "apply_tx_per_s",
            "total_tx_per_s",
        ],
    );
    Ok(())
}

fn line(common: &Common, imp: &str, iters: usize, reps: &[Rep]) -> Line {
    let med = |f: &dyn Fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let record_ms = med(&|r| r.record_ms);
    let apply_ms = med(&|r| r.apply_ms);
    let total_ms = med(&|r| r.record_ms + r.apply_ms);
    let tx = iters as u64;
    let mut line = Line::new("replication", imp, common);
    line.int("iters", tx)
        .ms("record_ms", record_ms)
        .rate("record_tx_per_s", per_s(tx, record_ms))
        .ms("apply_ms", apply_ms)
        .rate("apply_tx_per_s", per_s(tx, apply_ms))
        .ms("total_ms", total_ms)
        .rate("total_tx_per_s", per_s(tx, total_ms))
        .int("log_bytes_per_tx", reps[0].log_bytes / tx.max(1))
        .str("content_checks", "passed");
    line
}
