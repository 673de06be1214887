//! `replication --iters K` (issue 8, not in WORKLOADS.md): K one-row transactions recorded with
//! `ChangeLog::record` on a primary, then applied by a `Replica` catching up from the primary's
//! log table. liteorm only: there is no raw baseline, the target (≥ 20 000 transactions/s
//! recorded and applied) is absolute.

use std::time::Instant;

use liteorm_core::{Session, Value};
use liteorm_replication::{ChangeLog, LogTableSource, Meta, Replica};
use tokio::runtime::Runtime;

use crate::common::{
    BenchResult, CREATE_TABLE, Common, DbMode, INSERT, Line, RowData, fingerprint, median, ms,
    per_s,
};
use crate::lite::{self, LiteDb};

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

    let start = Instant::now();
    for row in rows {
        log.record(Meta::actor("bench"), |s| async move {
            s.execute(INSERT, row).await?;
            Ok::<_, liteorm_replication::Error>(())
        })
        .await?;
    }
    let record_ms = ms(start.elapsed());

    let start = Instant::now();
    let caught_up = replica
        .catch_up(&mut LogTableSource::new(&primary.session))
        .await?;
    let apply_ms = ms(start.elapsed());

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

/// Runs the workload and prints the liteorm line.
pub(crate) fn run(rt: &Runtime, common: &Common, iters: usize) -> BenchResult<()> {
    let last = i64::try_from(iters)?;
    let rows: Vec<[Value; 5]> = (1..=last)
        .map(|id| lite::values(&RowData::new(id)))
        .collect();
    let (reps, _) = common.run_reps(|| rt.block_on(rep(common.db, &rows)), || Ok(()))?;
    if reps.is_empty() {
        // `--impl raw`: there is no raw side to this workload.
        return Ok(());
    }
    let med = |f: &dyn Fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let record_ms = med(&|r| r.record_ms);
    let apply_ms = med(&|r| r.apply_ms);
    let total_ms = med(&|r| r.record_ms + r.apply_ms);
    let tx = iters as u64;
    let mut line = Line::new("replication", "liteorm", common);
    line.int("iters", tx)
        .ms("record_ms", record_ms)
        .rate("record_tx_per_s", per_s(tx, record_ms))
        .ms("apply_ms", apply_ms)
        .rate("apply_tx_per_s", per_s(tx, apply_ms))
        .ms("total_ms", total_ms)
        .rate("total_tx_per_s", per_s(tx, total_ms))
        .int("log_bytes_per_tx", reps[0].log_bytes / tx.max(1))
        .str("content_checks", "passed");
    line.print();
    Ok(())
}
