//! `stall --rows N` (not in WORKLOADS.md; issue 8's executor-stall target): while an N-row
//! changeset is applied, another tokio task ticks every 1 ms and records how late each tick is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::capture::count_ops;
use crate::common::{
    BenchResult, Common, DbMode, Line, check_conflicts_content, median, ms, per_s, percentile,
    populate,
};
use crate::conflicts::{lite_updates, raw_updates};
use crate::lite::LiteDb;
use crate::raw::{self, Db};

/// How long the ticker runs alone first, for the idle baseline of its lateness.
const IDLE: Duration = Duration::from_millis(200);
/// The ticker's period.
const TICK: Duration = Duration::from_millis(1);

/// One repetition: apply time and the ticker's lateness samples (ms), idle and during the apply.
struct Rep {
    ops: u64,
    apply: f64,
    idle: Vec<f64>,
    busy: Vec<f64>,
}

/// A task that sleeps 1 ms at a time until `stop` is set and returns how late each wake-up was
/// (ms after the deadline it slept until).
fn spawn_ticker(rt: &Runtime, stop: &Arc<AtomicBool>) -> JoinHandle<Vec<f64>> {
    let stop = Arc::clone(stop);
    rt.spawn(async move {
        let mut late = Vec::new();
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let deadline = last + TICK;
            tokio::time::sleep_until(deadline.into()).await;
            let now = Instant::now();
            late.push(ms(now.saturating_duration_since(deadline)));
            last = now;
        }
        late
    })
}

/// The ticker's lateness with nothing else running.
fn idle_ticks(rt: &Runtime) -> BenchResult<Vec<f64>> {
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = spawn_ticker(rt, &stop);
    std::thread::sleep(IDLE);
    stop.store(true, Ordering::Relaxed);
    Ok(rt.block_on(ticker)?)
}

fn raw_rep(rt: &Runtime, mode: DbMode, n: i64) -> BenchResult<Rep> {
    let cs = raw_updates(mode, n)?;
    let target = Db::open(mode)?;
    populate(target.handle(), n)?;
    let idle = idle_ticks(rt)?;

    // The apply runs on this (non-runtime) thread: the ticker only competes with it for CPU.
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = spawn_ticker(rt, &stop);
    let mut calls = 0;
    let start = Instant::now();
    target
        .handle()
        .apply(&cs, raw::abort_counting, &mut calls)?;
    let apply = ms(start.elapsed());
    stop.store(true, Ordering::Relaxed);
    let busy = rt.block_on(ticker)?;
    check_conflicts_content(target.handle(), n, 0)?;
    Ok(Rep {
        ops: count_ops(&cs)?.total(),
        apply,
        idle,
        busy,
    })
}

fn lite_rep(rt: &Runtime, mode: DbMode, n: i64) -> BenchResult<Rep> {
    let cs = rt.block_on(lite_updates(mode, n))?;
    let target = rt.block_on(LiteDb::populated(mode, n))?;
    let idle = idle_ticks(rt)?;

    // The apply is a task on the runtime, as an application would run it.
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = spawn_ticker(rt, &stop);
    let session = target.session.clone();
    let blob = cs.clone();
    let start = Instant::now();
    let task = rt.spawn(async move { liteorm_changeset::apply(&session, &blob).await });
    let report = rt.block_on(task)??;
    let apply = ms(start.elapsed());
    stop.store(true, Ordering::Relaxed);
    let busy = rt.block_on(ticker)?;
    rt.block_on(target.with_raw(|h| check_conflicts_content(h, n, 0)))?;
    rt.block_on(target.close());
    assert_eq!(report.applied, report.changes, "content check failed");
    Ok(Rep {
        ops: count_ops(cs.as_bytes())?.total(),
        apply,
        idle,
        busy,
    })
}

/// Runs the workload and prints the liteorm, raw and ratio lines.
pub(crate) fn run(rt: &Runtime, common: &Common, n: i64) -> BenchResult<()> {
    let (lite, raw) =
        common.run_reps(|| lite_rep(rt, common.db, n), || raw_rep(rt, common.db, n))?;
    let n_u = u64::try_from(n)?;
    for rep in lite.iter().chain(&raw) {
        assert_eq!(rep.ops, n_u, "content check failed: changeset entries");
    }
    let workers = rt.metrics().num_workers() as u64;
    common.print(
        "stall",
        ("rows", n_u),
        &lite,
        &raw,
        &[
            "apply_ms",
            "rows_per_s",
            "tick_p50_ms",
            "tick_p99_ms",
            "tick_max_ms",
        ],
        |imp, reps| line(common, imp, n_u, workers, reps),
    );
    Ok(())
}

fn line(common: &Common, imp: &str, n: u64, workers: u64, reps: &[Rep]) -> Line {
    let med = |f: &dyn Fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let apply = med(&|r| r.apply);
    let mut line = Line::new("stall", imp, common);
    line.int("rows", n)
        .int("changeset_ops", reps[0].ops)
        .int("workers", workers)
        .ms("apply_ms", apply)
        .rate("rows_per_s", per_s(reps[0].ops, apply))
        .num("ticks", med(&|r| r.busy.len() as f64), 0)
        .ms("tick_p50_ms", med(&|r| percentile(&r.busy, 50)))
        .ms("tick_p99_ms", med(&|r| percentile(&r.busy, 99)))
        .ms("tick_max_ms", med(&|r| max(&r.busy)))
        .ms("idle_tick_p50_ms", med(&|r| percentile(&r.idle, 50)))
        .ms("idle_tick_p99_ms", med(&|r| percentile(&r.idle, 99)))
        .str("content_checks", "passed");
    line
}
