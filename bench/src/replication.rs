//! `replication --iters K` (issue 8, not in WORKLOADS.md): K one-row transactions recorded with
//! `ChangeLog::record` on a primary, then applied by a `Replica` catching up from the primary's
//! log table. The target (≥ 20 000 transactions/s recorded and applied) is absolute; the raw
//! side does the same work with direct SQLite calls on one connection per database, which is
//! the floor of any implementation on this machine and this SQLite.

use liteorm_core::{Session, Value};
use liteorm_replication::{ChangeLog, LogTableSource, Meta, Replica};
use tokio::runtime::Runtime;

use crate::common::{
    BenchResult, CREATE_TABLE, Common, DbMode, INSERT, Line, RowData, fingerprint, median, per_s,
    query_i64,
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
    // The raw side hashes exactly what liteorm hashes: its encoding gives liteorm's first hash.
    let first = log.entry(1).await?;
    let hash = chain_hash(
        &[0; 32],
        1,
        first.committed_at_ms,
        first.changeset.as_bytes(),
    );
    assert_eq!(
        &hash,
        first.hash.as_bytes(),
        "content check failed: chain hash"
    );
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
     blob BLOB NOT NULL, hash BLOB)";

/// The chain hash of a raw log entry: SHA-256 over the same fields in the same encoding as
/// liteorm's (`liteorm_replication`'s chain module, version 1), for this workload's entries
/// (kind `change`, no ref_seq, actor `bench`, no reason, table `t`). The primary computes it
/// for every entry it appends, and the replica checks it before applying, as liteorm's do.
fn chain_hash(prev: &[u8; 32], seq: i64, committed_at_ms: i64, changeset: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let bytes = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    bytes(&mut h, b"liteorm-changes/v1");
    h.update(prev);
    h.update(seq.to_be_bytes());
    bytes(&mut h, b"change");
    h.update([0]); // no ref_seq
    h.update(committed_at_ms.to_be_bytes());
    h.update([1]);
    bytes(&mut h, b"bench");
    h.update([0]); // no reason
    h.update(1_u64.to_be_bytes());
    bytes(&mut h, b"t");
    bytes(&mut h, changeset);
    h.finalize().into()
}

/// Entries a replica applies per transaction, as `Replica`'s default batch.
const RAW_BATCH: i64 = 256;

/// The same work without liteorm: per transaction `BEGIN IMMEDIATE`, a session on `t`, the
/// insert, `sqlite3session_changeset`, the log row with its chain hash (the previous one kept in
/// memory), `COMMIT`; then the replica reads the log in seq order, checks each entry's chain
/// hash and applies its changeset with `sqlite3changeset_apply` (conflicts abort), 256 entries
/// per transaction, each batch also writing the replica's cursor row.
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
        "INSERT INTO log(seq, committed_at, actor, reason, tables, kind, ref_seq, blob, hash) \
         VALUES (?, ?, 'bench', NULL, ',t,', 'change', NULL, ?, ?)",
    )?;

    let start = Timer::start();
    let (mut head_seq, mut head_hash) = (0, [0; 32]);
    for row in rows {
        p.exec("BEGIN IMMEDIATE")?;
        let recording = p.session("t")?;
        insert.bind_row(row)?;
        insert.run()?;
        let changeset = recording.changeset()?;
        drop(recording);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let now = i64::try_from(now.as_millis())?;
        let hash = chain_hash(&head_hash, head_seq + 1, now, &changeset);
        append.bind_i64(1, head_seq + 1)?;
        append.bind_i64(2, now)?;
        append.bind_blob(3, &changeset)?;
        append.bind_blob(4, &hash)?;
        append.run()?;
        p.exec("COMMIT")?;
        (head_seq, head_hash) = (head_seq + 1, hash);
    }
    let record_ms = start.stop(c"record_ms");

    let mut fetch = p.prepare(
        "SELECT seq, committed_at, blob, hash FROM log WHERE seq > ? ORDER BY seq LIMIT ?",
    )?;
    let mut cursor = r.prepare("UPDATE cursor SET last_seq = ? WHERE name = 'bench'")?;
    let mut calls = 0;
    let start = Timer::start();
    let (mut last, mut last_hash) = (0, [0; 32]);
    loop {
        fetch.bind_i64(1, last)?;
        fetch.bind_i64(2, RAW_BATCH)?;
        let before = last;
        r.exec("BEGIN IMMEDIATE")?;
        while fetch.step()? {
            let (
                raw::ValueRef::Integer(seq),
                raw::ValueRef::Integer(at),
                raw::ValueRef::Blob(blob),
                raw::ValueRef::Blob(hash),
            ) = (
                fetch.column(0),
                fetch.column(1),
                fetch.column(2),
                fetch.column(3),
            )
            else {
                return Err("content check failed: a log row is not (seq, at, blob, hash)".into());
            };
            if seq != last + 1 || chain_hash(&last_hash, seq, at, blob) != hash {
                return Err(format!("content check failed: entry {seq} does not follow").into());
            }
            r.apply(blob, raw::abort_counting, &mut calls)?;
            last_hash.copy_from_slice(hash);
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
        &lite,
        &raw,
        &[
            "record_ms",
            "record_tx_per_s",
            "apply_ms",
            "apply_tx_per_s",
            "total_tx_per_s",
        ],
        |imp, reps| line(common, imp, iters, reps),
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
