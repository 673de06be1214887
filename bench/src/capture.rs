//! `capture --rows N`: the mix with and without a session recording it, and the changeset and
//! patchset it yields.

use std::time::Instant;

use crate::instr::{self, Timer};

use liteorm_core::{Session, Value};
use tokio::runtime::Runtime;

use crate::common::{
    BenchResult, Common, DbMode, INSERT, Line, MIX_DELETE, MIX_UPDATE, RowData, median,
    mix_inserts, ms, populate,
};
use crate::lite::{self, LiteDb};
use crate::raw::{ChangesetIter, Db, Handle, Op};

/// One repetition's figures (times in ms; NaN where the implementation cannot measure it).
struct Rep {
    mix_without: f64,
    mix_with: f64,
    changeset: f64,
    patchset: f64,
    /// Raw only: creating and attaching the session, and deleting it.
    session_create_delete: f64,
    capture: f64,
    capture_patchset: f64,
    counts: OpCounts,
    patchset_ops: u64,
    changeset_bytes: usize,
    patchset_bytes: usize,
}

/// Entries of a changeset by op.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OpCounts {
    pub(crate) inserts: u64,
    pub(crate) updates: u64,
    pub(crate) deletes: u64,
}

impl OpCounts {
    pub(crate) fn total(self) -> u64 {
        self.inserts + self.updates + self.deletes
    }

    fn add(&mut self, op: Op) {
        match op {
            Op::Insert => self.inserts += 1,
            Op::Update => self.updates += 1,
            Op::Delete => self.deletes += 1,
        }
    }
}

/// Counts the entries of a changeset or patchset (untimed).
pub(crate) fn count_ops(blob: &[u8]) -> BenchResult<OpCounts> {
    let mut iter = ChangesetIter::start(blob)?;
    let mut counts = OpCounts::default();
    while let Some((op, _)) = iter.next_change()? {
        counts.add(op);
    }
    Ok(counts)
}

/// The mix on a raw connection: one transaction, the two bulk statements, then the inserts
/// through one prepared statement.
pub(crate) fn raw_mix(h: Handle<'_>, inserts: &[RowData]) -> BenchResult<()> {
    h.exec("BEGIN")?;
    h.exec(MIX_UPDATE)?;
    h.exec(MIX_DELETE)?;
    let mut insert = h.prepare(INSERT)?;
    for row in inserts {
        insert.bind_row(row)?;
        insert.run()?;
    }
    drop(insert);
    h.exec("COMMIT")
}

/// What SQLite's session extension itself adds to the mix (raw calls, one connection): a
/// session's whole life with the changeset (`capture_ms`) minus the mix without one. The floor
/// under any capture's overhead, which the `orm` workload reports next to its own.
pub(crate) fn raw_session_cost(mode: DbMode, n: i64, inserts: &[RowData]) -> BenchResult<f64> {
    let rep = raw_rep(mode, n, inserts)?;
    Ok(rep.capture - rep.mix_without)
}

fn raw_rep(mode: DbMode, n: i64, inserts: &[RowData]) -> BenchResult<Rep> {
    let plain = Db::open(mode)?;
    populate(plain.handle(), n)?;
    let start = Timer::start();
    raw_mix(plain.handle(), inserts)?;
    let mix_without = start.stop(c"mix_without_ms");
    drop(plain);

    let db = Db::open(mode)?;
    let h = db.handle();
    populate(h, n)?;
    // Under `--callgrind`, each segment counts towards the figures it is part of.
    instr::begin();
    let start = Instant::now();
    let session = h.session("t")?;
    let t0 = Instant::now();
    instr::end(c"capture_ms,capture_patchset_ms");
    raw_mix(h, inserts)?;
    let t1 = Instant::now();
    instr::end(c"mix_with_ms,capture_ms,capture_patchset_ms");
    let changeset = session.changeset()?;
    let t2 = Instant::now();
    instr::end(c"changeset_ms,capture_ms");
    let patchset = session.patchset()?;
    let t3 = Instant::now();
    instr::end(c"patchset_ms,capture_patchset_ms");
    drop(session);
    let deleted = Instant::now();
    instr::end(c"capture_ms,capture_patchset_ms");
    // Deleting a session frees every change it recorded: about a tenth of the capture here.
    // liteorm's capture ends with its session deleted, as `small` times the raw cycle.
    let create_delete = ms(t0 - start) + ms(deleted - t3);

    Ok(Rep {
        mix_without,
        mix_with: ms(t1 - t0),
        changeset: ms(t2 - t1),
        patchset: ms(t3 - t2),
        session_create_delete: create_delete,
        capture: create_delete + ms(t2 - t0),
        capture_patchset: create_delete + ms(t1 - t0) + ms(t3 - t2),
        counts: count_ops(&changeset)?,
        patchset_ops: count_ops(&patchset)?.total(),
        changeset_bytes: changeset.len(),
        patchset_bytes: patchset.len(),
    })
}

async fn lite_rep(mode: DbMode, n: i64, inserts: &[[Value; 5]]) -> BenchResult<Rep> {
    let plain = LiteDb::populated(mode, n).await?;
    let start = Timer::start();
    let tx = plain.session.begin().await?;
    lite::mix(tx.as_session(), inserts).await?;
    tx.commit().await?;
    let mix_without = start.stop(c"mix_without_ms");
    plain.close().await;

    let db = LiteDb::populated(mode, n).await?;
    let start = Timer::start();
    let changeset = liteorm_changeset::capture(&db.session, &["t"], |s| async move {
        lite::mix(&s, inserts).await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await?;
    let capture = start.stop(c"capture_ms");
    db.close().await;

    let db = LiteDb::populated(mode, n).await?;
    let start = Timer::start();
    let patchset = liteorm_changeset::Capture::new(&db.session)
        .tables(["t"])
        .patchset(|s| async move {
            lite::mix(&s, inserts).await?;
            Ok::<_, liteorm_changeset::Error>(())
        })
        .await?;
    let capture_patchset = start.stop(c"capture_patchset_ms");
    db.close().await;

    Ok(Rep {
        mix_without,
        mix_with: f64::NAN,
        changeset: f64::NAN,
        patchset: f64::NAN,
        session_create_delete: f64::NAN,
        capture,
        capture_patchset,
        counts: count_ops(changeset.as_bytes())?,
        patchset_ops: count_ops(patchset.as_bytes())?.total(),
        changeset_bytes: changeset.len(),
        patchset_bytes: patchset.len(),
    })
}

/// Runs the workload and prints the liteorm, raw and ratio lines.
pub(crate) fn run(rt: &Runtime, common: &Common, n: i64) -> BenchResult<()> {
    let raw_inserts = mix_inserts(n);
    let lite_inserts: Vec<[Value; 5]> = raw_inserts.iter().map(lite::values).collect();
    let (lite, raw) = common.run_reps(
        || rt.block_on(lite_rep(common.db, n, &lite_inserts)),
        || raw_rep(common.db, n, &raw_inserts),
    )?;
    let n_u = u64::try_from(n)?;
    let expected = OpCounts {
        inserts: n_u / 10,
        updates: n_u - n_u / 10,
        deletes: n_u / 10,
    };
    let first = lite.iter().chain(&raw).next();
    let first_bytes = first.map(|r| (r.changeset_bytes, r.patchset_bytes));
    for rep in lite.iter().chain(&raw) {
        assert_eq!(
            rep.counts, expected,
            "content check failed: changeset entries by op"
        );
        assert_eq!(
            rep.patchset_ops,
            expected.total(),
            "content check failed: patchset entries"
        );
        assert_eq!(
            Some((rep.changeset_bytes, rep.patchset_bytes)),
            first_bytes,
            "content check failed: the same changes must give the same changeset and patchset sizes"
        );
    }

    common.print(
        "capture",
        ("rows", n_u),
        &lite,
        &raw,
        &["mix_without_ms", "capture_ms", "capture_patchset_ms"],
        |imp, reps| line(common, imp, n_u, expected, reps),
    );
    Ok(())
}

fn line(common: &Common, imp: &str, n: u64, counts: OpCounts, reps: &[Rep]) -> Line {
    let med = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let row_ops = n + 2 * (n / 10);
    let ops = counts.total();
    let mix_without = med(|r| r.mix_without);
    let mix_with = med(|r| r.mix_with);
    let changeset = med(|r| r.changeset);
    let capture = med(|r| r.capture);
    let per_row_op = |ms: f64| ms * 1e6 / row_ops as f64;
    let mut line = Line::new("capture", imp, common);
    line.int("rows", n)
        .int("row_ops", row_ops)
        .int("changeset_ops", ops)
        .int("changeset_inserts", counts.inserts)
        .int("changeset_updates", counts.updates)
        .int("changeset_deletes", counts.deletes)
        .int("changeset_bytes", reps[0].changeset_bytes as u64)
        .int("patchset_bytes", reps[0].patchset_bytes as u64)
        .ms("mix_without_ms", mix_without)
        .ms("mix_with_ms", mix_with)
        .ms("changeset_ms", changeset)
        .ms("patchset_ms", med(|r| r.patchset))
        .ms("session_create_delete_ms", med(|r| r.session_create_delete))
        .num("ns_per_row_op_without", per_row_op(mix_without), 1)
        .num("ns_per_row_op_with", per_row_op(mix_with), 1)
        .ratio("overhead_ratio", mix_with / mix_without)
        .ratio(
            "overhead_ratio_incl_changeset",
            // For liteorm, capture_ms is the only measurable whole: the mix with the session
            // attached plus generating the changeset (see bench/README.md).
            if mix_with.is_finite() {
                (mix_with + changeset) / mix_without
            } else {
                capture / mix_without
            },
        )
        .num("changeset_ns_per_op", changeset * 1e6 / ops as f64, 1)
        .ms("capture_ms", capture)
        .ms("capture_patchset_ms", med(|r| r.capture_patchset))
        .num("ns_per_row_op_capture", per_row_op(capture), 1);
    line
}
