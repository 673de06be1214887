//! `apply --rows N`: applying the mix's changeset (and its inverse) against replaying the same
//! changes through prepared SQL statements.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use liteorm_changeset::{ChangeOp, ConflictAction};
use liteorm_core::Value;
use tokio::runtime::Runtime;

use crate::capture::{count_ops, raw_mix};
use crate::common::{
    BenchResult, Common, DELETE_ID, DbMode, Fingerprint, INSERT, Line, RowData, UPDATE_B,
    fingerprint, median, mix_inserts, per_s, populate,
};
use crate::instr::Timer;
use crate::lite::{self, LiteDb};
use crate::raw::{self, ChangesetIter, Db, Handle, Op, ValueRef};

/// One repetition's figures (ms) and checks.
struct Rep {
    ops: u64,
    bytes: usize,
    apply: f64,
    invert: f64,
    invert_apply: f64,
    replay: f64,
    handler_calls: u64,
    /// The source after the mix (what apply and replay must reproduce).
    mixed: Fingerprint,
    /// The pre-populated database (what the inverse must restore).
    original: Fingerprint,
}

/// One change for the SQL replay, decoded from the changeset before the timer starts.
enum Replay {
    Insert(RowData),
    Update { id: i64, b: i64 },
    Delete { id: i64 },
}

fn int(value: ValueRef<'_>, what: &str) -> BenchResult<i64> {
    match value {
        ValueRef::Integer(i) => Ok(i),
        other => Err(format!("{what}: expected an integer, found {other:?}").into()),
    }
}

/// Decodes the changeset for the raw replay.
fn decode_raw(blob: &[u8]) -> BenchResult<Vec<Replay>> {
    let mut iter = ChangesetIter::start(blob)?;
    let mut out = Vec::new();
    while let Some((op, _)) = iter.next_change()? {
        out.push(match op {
            Op::Insert => {
                let text = match iter.new_value(1)? {
                    ValueRef::Text(t) => String::from_utf8(t.to_vec())?,
                    other => return Err(format!("insert: a is {other:?}").into()),
                };
                let c = match iter.new_value(3)? {
                    ValueRef::Real(c) => c,
                    other => return Err(format!("insert: c is {other:?}").into()),
                };
                let d = match iter.new_value(4)? {
                    ValueRef::Blob(d) => <[u8; 16]>::try_from(d)?,
                    other => return Err(format!("insert: d is {other:?}").into()),
                };
                Replay::Insert(RowData {
                    id: int(iter.new_value(0)?, "insert id")?,
                    a: text,
                    b: int(iter.new_value(2)?, "insert b")?,
                    c,
                    d,
                })
            }
            Op::Update => Replay::Update {
                id: int(iter.old(0)?, "update id")?,
                b: int(iter.new_value(2)?, "update b")?,
            },
            Op::Delete => Replay::Delete {
                id: int(iter.old(0)?, "delete id")?,
            },
        });
    }
    Ok(out)
}

/// One change for liteorm's replay: its statement and parameters, held inline like raw's
/// [`Replay`] (a `Vec<Value>` per change would add a heap indirection raw's side does not pay).
struct LiteReplay {
    sql: &'static str,
    params: [Value; 5],
    len: usize,
}

impl LiteReplay {
    fn new<const N: usize>(sql: &'static str, given: [Value; N]) -> Self {
        let mut params = [
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ];
        for (slot, value) in params.iter_mut().zip(given) {
            *slot = value;
        }
        LiteReplay {
            sql,
            params,
            len: N,
        }
    }

    fn params(&self) -> &[Value] {
        &self.params[..self.len]
    }
}

/// Decodes the changeset for liteorm's replay: statement and parameters per change.
fn decode_lite(changes: &liteorm_changeset::Changeset) -> BenchResult<Vec<LiteReplay>> {
    let get = |side: &[Option<Value>], i: usize, what: &str| -> BenchResult<Value> {
        side.get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| format!("{what}: column {i} not recorded").into())
    };
    changes
        .changes()?
        .into_iter()
        .map(|c| {
            Ok(match c.op {
                ChangeOp::Insert => LiteReplay::new(
                    INSERT,
                    [
                        get(&c.new, 0, "insert")?,
                        get(&c.new, 1, "insert")?,
                        get(&c.new, 2, "insert")?,
                        get(&c.new, 3, "insert")?,
                        get(&c.new, 4, "insert")?,
                    ],
                ),
                ChangeOp::Update => LiteReplay::new(
                    UPDATE_B,
                    [get(&c.new, 2, "update")?, get(&c.old, 0, "update")?],
                ),
                ChangeOp::Delete => LiteReplay::new(DELETE_ID, [get(&c.old, 0, "delete")?]),
            })
        })
        .collect()
}

fn raw_replay(h: Handle<'_>, changes: &[Replay]) -> BenchResult<()> {
    h.exec("BEGIN")?;
    let mut insert = h.prepare(INSERT)?;
    let mut update = h.prepare(UPDATE_B)?;
    let mut delete = h.prepare(DELETE_ID)?;
    for change in changes {
        match change {
            Replay::Insert(row) => {
                insert.bind_row(row)?;
                insert.run()?;
            }
            Replay::Update { id, b } => {
                update.bind_i64(1, *b)?;
                update.bind_i64(2, *id)?;
                update.run()?;
            }
            Replay::Delete { id } => {
                delete.bind_i64(1, *id)?;
                delete.run()?;
            }
        }
    }
    drop((insert, update, delete));
    h.exec("COMMIT")
}

fn raw_rep(mode: DbMode, n: i64, inserts: &[RowData]) -> BenchResult<Rep> {
    let source = Db::open(mode)?;
    populate(source.handle(), n)?;
    let session = source.handle().session("t")?;
    raw_mix(source.handle(), inserts)?;
    let cs = session.changeset()?;
    drop(session);
    let mixed = fingerprint(source.handle())?;
    drop(source);

    let target = Db::open(mode)?;
    let h = target.handle();
    populate(h, n)?;
    let original = fingerprint(h)?;
    let mut calls = 0;
    let start = Timer::start();
    h.apply(&cs, raw::abort_counting, &mut calls)?;
    let apply = start.stop(c"apply_ms");
    assert_eq!(
        fingerprint(h)?,
        mixed,
        "content check failed after the apply"
    );
    let start = Timer::start();
    let inverse = raw::invert(&cs)?;
    let invert = start.stop(c"invert_ms");
    let start = Timer::start();
    h.apply(&inverse, raw::abort_counting, &mut calls)?;
    let invert_apply = start.stop(c"invert_apply_ms");
    assert_eq!(
        fingerprint(h)?,
        original,
        "content check failed after the inverse"
    );
    drop(target);

    let changes = decode_raw(&cs)?;
    let replay_db = Db::open(mode)?;
    populate(replay_db.handle(), n)?;
    let start = Timer::start();
    raw_replay(replay_db.handle(), &changes)?;
    let replay = start.stop(c"replay_sql_ms");
    assert_eq!(
        fingerprint(replay_db.handle())?,
        mixed,
        "content check failed after the replay"
    );

    Ok(Rep {
        ops: count_ops(&cs)?.total(),
        bytes: cs.len(),
        apply,
        invert,
        invert_apply,
        replay,
        handler_calls: calls,
        mixed,
        original,
    })
}

async fn lite_rep(mode: DbMode, n: i64, inserts: &[[Value; 5]]) -> BenchResult<Rep> {
    let source = LiteDb::populated(mode, n).await?;
    let cs = liteorm_changeset::capture(&source.session, &["t"], |s| async move {
        lite::mix(&s, inserts).await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await?;
    let mixed = source.with_raw(fingerprint).await?;
    source.close().await;

    let target = LiteDb::populated(mode, n).await?;
    let original = target.with_raw(fingerprint).await?;
    let calls = Arc::new(AtomicU64::new(0));
    let abort_counting = |calls: &Arc<AtomicU64>| {
        let calls = Arc::clone(calls);
        move |_: &liteorm_changeset::Conflict| {
            calls.fetch_add(1, Ordering::Relaxed);
            ConflictAction::Abort
        }
    };
    let start = Timer::start();
    let report = liteorm_changeset::apply(&target.session, &cs)
        .on_conflict(abort_counting(&calls))
        .await?;
    let apply = start.stop(c"apply_ms");
    assert_eq!(
        target.with_raw(fingerprint).await?,
        mixed,
        "content check failed after the apply"
    );
    let start = Timer::start();
    let inverse = cs.invert()?;
    let invert = start.stop(c"invert_ms");
    let start = Timer::start();
    let inverse_report = liteorm_changeset::apply(&target.session, &inverse)
        .on_conflict(abort_counting(&calls))
        .await?;
    let invert_apply = start.stop(c"invert_apply_ms");
    assert_eq!(
        target.with_raw(fingerprint).await?,
        original,
        "content check failed after the inverse"
    );
    target.close().await;
    assert_eq!(
        (report.applied, inverse_report.applied),
        (report.changes, inverse_report.changes),
        "content check failed: every change must be applied"
    );

    let changes = decode_lite(&cs)?;
    let replay_db = LiteDb::populated(mode, n).await?;
    let start = Timer::start();
    let tx = replay_db.session.begin_immediate().await?;
    for change in &changes {
        tx.execute(change.sql, change.params()).await?;
    }
    tx.commit().await?;
    let replay = start.stop(c"replay_sql_ms");
    assert_eq!(
        replay_db.with_raw(fingerprint).await?,
        mixed,
        "content check failed after the replay"
    );
    replay_db.close().await;

    Ok(Rep {
        ops: count_ops(cs.as_bytes())?.total(),
        bytes: cs.len(),
        apply,
        invert,
        invert_apply,
        replay,
        handler_calls: calls.load(Ordering::Relaxed),
        mixed,
        original,
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
    let first = lite
        .iter()
        .chain(&raw)
        .next()
        .map(|r| (r.mixed, r.original));
    let n_u = u64::try_from(n)?;
    for rep in lite.iter().chain(&raw) {
        assert_eq!(
            rep.ops,
            n_u + n_u / 10,
            "content check failed: changeset entries"
        );
        assert_eq!(
            Some((rep.mixed, rep.original)),
            first,
            "content check failed: both implementations must see identical data"
        );
    }
    common.print(
        "apply",
        ("rows", n_u),
        &lite,
        &raw,
        &[
            "apply_ms",
            "apply_rows_per_s",
            "invert_ms",
            "invert_apply_ms",
            "invert_apply_rows_per_s",
            "replay_sql_ms",
            "replay_sql_rows_per_s",
        ],
        |imp, reps| line(common, imp, n_u, reps),
    );
    Ok(())
}

fn line(common: &Common, imp: &str, n: u64, reps: &[Rep]) -> Line {
    let med = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let ops = reps[0].ops;
    let apply = med(|r| r.apply);
    let invert_apply = med(|r| r.invert_apply);
    let replay = med(|r| r.replay);
    let calls: u64 = reps.iter().map(|r| r.handler_calls).sum();
    assert_eq!(
        calls, 0,
        "content check failed: the conflict handler was called"
    );
    let mut line = Line::new("apply", imp, common);
    line.int("rows", n)
        .int("changeset_ops", ops)
        .int("changeset_bytes", reps[0].bytes as u64)
        .ms("apply_ms", apply)
        .rate("apply_rows_per_s", per_s(ops, apply))
        .ms("invert_ms", med(|r| r.invert))
        .ms("invert_apply_ms", invert_apply)
        .rate("invert_apply_rows_per_s", per_s(ops, invert_apply))
        .ms("replay_sql_ms", replay)
        .rate("replay_sql_rows_per_s", per_s(ops, replay))
        .ratio("apply_vs_replay_time_ratio", apply / replay)
        .int("conflict_handler_calls", calls)
        .str("content_checks", "passed");
    line
}
