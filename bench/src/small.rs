//! `small --iters K`: one-row autocommit transactions, plain and with a whole session cycle
//! (create, attach, insert, changeset, free, delete) per transaction.

use std::time::Instant;

use liteorm_core::{Session, Value};
use tokio::runtime::Runtime;

use crate::capture::count_ops;
use crate::common::{
    BenchResult, CREATE_TABLE, Common, DbMode, INSERT, Line, RowData, median, percentile,
    query_i64, us,
};
use crate::instr;
use crate::lite::{self, LiteDb};
use crate::raw::{Db, Handle};

/// One repetition: per-transaction latencies (µs) of each half, and changeset sizes.
struct Rep {
    plain: Vec<f64>,
    session: Vec<f64>,
    bytes: Vec<usize>,
}

fn raw_rep(mode: DbMode, rows: &[RowData]) -> BenchResult<Rep> {
    let expected = i64::try_from(rows.len())?;
    let db = Db::open(mode)?;
    let h = db.handle();
    h.exec(CREATE_TABLE)?;
    let mut insert = h.prepare(INSERT)?;
    let mut plain = Vec::with_capacity(rows.len());
    // Under `--callgrind`, a loop's K transactions are one counted segment.
    instr::begin();
    for row in rows {
        let start = Instant::now();
        insert.bind_row(row)?;
        insert.run()?;
        plain.push(us(start.elapsed()));
    }
    instr::end(c"plain_tx");
    drop(insert);
    assert_eq!(
        query_i64(h, "SELECT count(*) FROM t")?,
        expected,
        "content check failed"
    );
    drop(db);

    let db = Db::open(mode)?;
    let h = db.handle();
    h.exec(CREATE_TABLE)?;
    let mut insert = h.prepare(INSERT)?;
    let (mut session, mut bytes) = (Vec::with_capacity(rows.len()), Vec::new());
    instr::begin();
    for row in rows {
        let start = Instant::now();
        let recording = h.session("t")?;
        insert.bind_row(row)?;
        insert.run()?;
        let len = recording.changeset_len_and_free()?;
        drop(recording);
        session.push(us(start.elapsed()));
        bytes.push(len);
    }
    instr::end(c"session_tx");
    // The per-transaction changeset is freed inside the timer; check one outside it.
    let recording = h.session("t")?;
    insert.bind_row(&RowData::new(expected + 1))?;
    insert.run()?;
    let one = recording.changeset()?;
    drop(recording);
    drop(insert);
    let counts = count_ops(&one)?;
    assert_eq!(
        (counts.inserts, counts.total()),
        (1, 1),
        "content check failed"
    );
    assert_eq!(
        query_i64(h, "SELECT count(*) FROM t")?,
        expected + 1,
        "content check failed"
    );
    Ok(Rep {
        plain,
        session,
        bytes,
    })
}

async fn lite_rep(mode: DbMode, rows: &[[Value; 5]]) -> BenchResult<Rep> {
    let expected = i64::try_from(rows.len())?;
    let count = |h: Handle<'_>| query_i64(h, "SELECT count(*) FROM t");

    let db = LiteDb::open(mode).await?;
    db.session.execute_batch(CREATE_TABLE).await?;
    let mut plain = Vec::with_capacity(rows.len());
    // Under `--callgrind`, a loop's K transactions are one counted segment.
    instr::begin();
    for row in rows {
        let start = Instant::now();
        db.session.execute(INSERT, row).await?;
        plain.push(us(start.elapsed()));
    }
    instr::end(c"plain_tx");
    assert_eq!(db.with_raw(count).await?, expected, "content check failed");
    db.close().await;

    let db = LiteDb::open(mode).await?;
    db.session.execute_batch(CREATE_TABLE).await?;
    let (mut session, mut bytes) = (Vec::with_capacity(rows.len()), Vec::new());
    instr::begin();
    for row in rows {
        let start = Instant::now();
        let cs = liteorm_changeset::capture(&db.session, &["t"], |s| async move {
            s.execute(INSERT, row).await?;
            Ok::<_, liteorm_changeset::Error>(())
        })
        .await?;
        let len = cs.len();
        drop(cs);
        session.push(us(start.elapsed()));
        bytes.push(len);
    }
    instr::end(c"session_tx");
    // The per-transaction changeset is dropped inside the timer; check one outside it.
    let extra = lite::values(&RowData::new(expected + 1));
    let one = liteorm_changeset::capture(&db.session, &["t"], |s| async move {
        s.execute(INSERT, &extra).await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await?;
    let counts = count_ops(one.as_bytes())?;
    assert_eq!(
        (counts.inserts, counts.total()),
        (1, 1),
        "content check failed"
    );
    assert_eq!(
        db.with_raw(count).await?,
        expected + 1,
        "content check failed"
    );
    db.close().await;
    Ok(Rep {
        plain,
        session,
        bytes,
    })
}

/// Runs the workload and prints the liteorm, raw and ratio lines.
pub(crate) fn run(rt: &Runtime, common: &Common, iters: usize) -> BenchResult<()> {
    let last = i64::try_from(iters)?;
    let raw_rows: Vec<RowData> = (1..=last).map(RowData::new).collect();
    let lite_rows: Vec<[Value; 5]> = raw_rows.iter().map(lite::values).collect();
    let (lite, raw) = common.run_reps(
        || rt.block_on(lite_rep(common.db, &lite_rows)),
        || raw_rep(common.db, &raw_rows),
    )?;
    let first = lite.iter().chain(&raw).next();
    let size = first.and_then(|r| r.bytes.first().copied()).unwrap_or(0);
    for rep in lite.iter().chain(&raw) {
        assert!(
            size > 0 && rep.bytes.iter().all(|&b| b == size),
            "content check failed: every one-row changeset has the same, non-zero size"
        );
    }
    common.print(
        "small",
        ("iters", iters as u64),
        &lite,
        &raw,
        &[
            "plain_p50_us",
            "plain_p99_us",
            "session_p50_us",
            "session_p99_us",
        ],
        |imp, reps| line(common, imp, iters, size, reps),
    );
    Ok(())
}

fn line(common: &Common, imp: &str, iters: usize, size: usize, reps: &[Rep]) -> Line {
    let med = |f: &dyn Fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let plain_p50 = med(&|r| percentile(&r.plain, 50));
    let session_p50 = med(&|r| percentile(&r.session, 50));
    let mut line = Line::new("small", imp, common);
    line.int("iters", iters as u64)
        .num("plain_p50_us", plain_p50, 2)
        .num("plain_p99_us", med(&|r| percentile(&r.plain, 99)), 2)
        .num("session_p50_us", session_p50, 2)
        .num("session_p99_us", med(&|r| percentile(&r.session, 99)), 2)
        .num("p50_overhead_us", session_p50 - plain_p50, 2)
        .ratio("p50_ratio", session_p50 / plain_p50)
        .int("changeset_bytes_per_tx", size as u64)
        .str("content_checks", "passed");
    line
}
