//! `conflicts --rows N`: applying N updates of which half hit a DATA conflict that a handler
//! omits, against applying the same changeset with no conflict.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use liteorm_changeset::{ConflictAction, ConflictKind};
use tokio::runtime::Runtime;

use crate::capture::count_ops;
use crate::common::{
    BenchResult, CONFLICT_SETUP, Common, DbMode, Line, MIX_UPDATE, check_conflicts_content, median,
    per_s, populate,
};
use crate::instr::Timer;
use crate::lite::LiteDb;
use crate::raw::{self, Db};

/// One repetition's figures (ms) and handler calls.
struct Rep {
    ops: u64,
    apply: f64,
    clean: f64,
    handler_calls: u64,
}

/// The changeset of `UPDATE t SET b = b + 1` on `n` rows, recorded on a raw connection.
pub(crate) fn raw_updates(mode: DbMode, n: i64) -> BenchResult<Vec<u8>> {
    let source = Db::open(mode)?;
    populate(source.handle(), n)?;
    let session = source.handle().session("t")?;
    source.handle().exec(MIX_UPDATE)?;
    session.changeset()
}

/// The same changeset, recorded through liteorm.
pub(crate) async fn lite_updates(
    mode: DbMode,
    n: i64,
) -> BenchResult<liteorm_changeset::Changeset> {
    let source = LiteDb::populated(mode, n).await?;
    let cs = liteorm_changeset::capture(&source.session, &["t"], |s| async move {
        s.execute(MIX_UPDATE, &[]).await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await?;
    source.close().await;
    Ok(cs)
}

fn raw_rep(mode: DbMode, n: i64) -> BenchResult<Rep> {
    let conflicting = n / 2;
    let cs = raw_updates(mode, n)?;

    let target = Db::open(mode)?;
    populate(target.handle(), n)?;
    target.handle().exec(CONFLICT_SETUP)?;
    let mut calls = 0;
    let start = Timer::start();
    target
        .handle()
        .apply(&cs, raw::omit_data_counting, &mut calls)?;
    let apply = start.stop(c"apply_ms");
    check_conflicts_content(target.handle(), n - conflicting, conflicting)?;
    drop(target);

    let clean_db = Db::open(mode)?;
    populate(clean_db.handle(), n)?;
    let mut clean_calls = 0;
    let start = Timer::start();
    clean_db
        .handle()
        .apply(&cs, raw::omit_data_counting, &mut clean_calls)?;
    let clean = start.stop(c"clean_apply_ms");
    assert_eq!(
        clean_calls, 0,
        "content check failed: conflicts in the clean apply"
    );
    check_conflicts_content(clean_db.handle(), n, 0)?;

    Ok(Rep {
        ops: count_ops(&cs)?.total(),
        apply,
        clean,
        handler_calls: calls,
    })
}

/// OMIT for DATA conflicts, ABORT for anything else, counting calls. It only needs the kind, so
/// it takes the lazy view of `on_conflict_ref`, as an application handler like it would.
fn omit_data(
    calls: &Arc<AtomicU64>,
) -> impl for<'c> FnMut(&liteorm_changeset::ConflictRef<'c>) -> ConflictAction + Send + 'static {
    let calls = Arc::clone(calls);
    move |conflict| {
        calls.fetch_add(1, Ordering::Relaxed);
        if conflict.kind == ConflictKind::Data {
            ConflictAction::Omit
        } else {
            ConflictAction::Abort
        }
    }
}

async fn lite_rep(mode: DbMode, n: i64) -> BenchResult<Rep> {
    let conflicting = n / 2;
    let cs = lite_updates(mode, n).await?;

    let target = LiteDb::populated(mode, n).await?;
    target.session.execute(CONFLICT_SETUP, &[]).await?;
    let calls = Arc::new(AtomicU64::new(0));
    let start = Timer::start();
    let report = liteorm_changeset::apply(&target.session, &cs)
        .on_conflict_ref(omit_data(&calls))
        .await?;
    let apply = start.stop(c"apply_ms");
    target
        .with_raw(|h| check_conflicts_content(h, n - conflicting, conflicting))
        .await?;
    target.close().await;
    let conflicting_u = usize::try_from(conflicting)?;
    assert_eq!(
        (report.omitted, report.applied),
        (conflicting_u, report.changes - conflicting_u),
        "content check failed: the apply report"
    );

    let clean_db = LiteDb::populated(mode, n).await?;
    let clean_calls = Arc::new(AtomicU64::new(0));
    let start = Timer::start();
    liteorm_changeset::apply(&clean_db.session, &cs)
        .on_conflict_ref(omit_data(&clean_calls))
        .await?;
    let clean = start.stop(c"clean_apply_ms");
    assert_eq!(
        clean_calls.load(Ordering::Relaxed),
        0,
        "content check failed: conflicts in the clean apply"
    );
    clean_db
        .with_raw(|h| check_conflicts_content(h, n, 0))
        .await?;
    clean_db.close().await;

    Ok(Rep {
        ops: count_ops(cs.as_bytes())?.total(),
        apply,
        clean,
        handler_calls: calls.load(Ordering::Relaxed),
    })
}

/// Runs the workload and prints the liteorm, raw and ratio lines.
pub(crate) fn run(rt: &Runtime, common: &Common, n: i64) -> BenchResult<()> {
    let (lite, raw) = common.run_reps(
        || rt.block_on(lite_rep(common.db, n)),
        || raw_rep(common.db, n),
    )?;
    let n_u = u64::try_from(n)?;
    for rep in lite.iter().chain(&raw) {
        assert_eq!(rep.ops, n_u, "content check failed: changeset entries");
        assert_eq!(
            rep.handler_calls,
            n_u / 2,
            "content check failed: handler calls"
        );
    }
    common.print(
        "conflicts",
        ("rows", n_u),
        &lite,
        &raw,
        &[
            "apply_ms",
            "rows_per_s",
            "clean_apply_ms",
            "clean_rows_per_s",
        ],
        |imp, reps| line(common, imp, n_u, reps),
    );
    Ok(())
}

fn line(common: &Common, imp: &str, n: u64, reps: &[Rep]) -> Line {
    let med = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let apply = med(|r| r.apply);
    let clean = med(|r| r.clean);
    let mut line = Line::new("conflicts", imp, common);
    line.int("rows", n)
        .int("changeset_ops", reps[0].ops)
        .int("conflicting_rows", n / 2)
        .ms("apply_ms", apply)
        .rate("rows_per_s", per_s(reps[0].ops, apply))
        .int("handler_calls", reps[0].handler_calls)
        .ms("clean_apply_ms", clean)
        .rate("clean_rows_per_s", per_s(reps[0].ops, clean))
        .str("content_checks", "passed");
    line
}
