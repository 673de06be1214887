//! `rusqlite-baseline`: the `capture`, `apply` (with `replay_sql`), `small` and `conflicts`
//! workloads of WORKLOADS.md through rusqlite 0.39's session API, synchronous, one connection per
//! database: the baseline of issue 25. It prints one JSON line per workload with
//! `"impl":"rusqlite"` and the field names of liteorm-bench's `raw` line, so that
//! `liteorm-bench --baseline <this binary>` can print raw/rusqlite and liteorm/rusqlite ratios.
//!
//! ```text
//! rusqlite-baseline capture|apply|conflicts [--rows N] [--reps R] [--db mem|file] [--threads 1|2]
//! rusqlite-baseline small [--iters K] [--reps R] [--db mem|file] [--threads 1|2]
//! ```
//!
//! Connections are rusqlite's defaults (`Connection::open`/`open_in_memory`: read-write,
//! create, URI, no mutex, a 5 s busy timeout); `foreign_keys` stays at the bundled build's
//! default. The content checks are liteorm-bench's: identical fingerprints after each apply and
//! the replay, the expected entries per op, and the expected rows after the conflicts apply.

// The same client requests as liteorm-bench's, from its source: both sides mark their
// regions identically.
#[path = "../../src/instr.rs"]
mod instr;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
use rusqlite::hooks::Action;
use rusqlite::session::{Changeset, ConflictAction, ConflictType, Session};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, params};
use serde_json::Value as Json;
use tempfile::TempDir;

use instr::Timer;

/// Every fallible step returns this; content checks panic instead.
type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const CREATE_TABLE: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL, d BLOB)";
const INSERT: &str = "INSERT INTO t(id,a,b,c,d) VALUES(?,?,?,?,?)";
const UPDATE_B: &str = "UPDATE t SET b = ? WHERE id = ?";
const DELETE_ID: &str = "DELETE FROM t WHERE id = ?";
const MIX_UPDATE: &str = "UPDATE t SET b = b + 1";
const MIX_DELETE: &str = "DELETE FROM t WHERE id % 10 = 0";
const CONFLICT_SETUP: &str = "UPDATE t SET b = b + 1000000 WHERE id % 2 = 0";

const USAGE: &str = "\
usage: rusqlite-baseline <capture|apply|small|conflicts> [--rows N] [--iters K] [--reps R] [--db mem|file] [--threads 1|2]

  --threads 2 starts an idle second thread first, so that the process is multi-threaded like
  liteorm-bench's (which passes it): glibc's malloc and free skip their arena lock in a
  single-threaded process, which made rusqlite's apply 4-7 % faster here. Default 1.
";

/// `--db mem|file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbMode {
    Mem,
    File,
}

/// The parsed command line.
struct Args {
    workload: String,
    rows: i64,
    iters: usize,
    reps: usize,
    db: DbMode,
    /// `--threads`: 1, or 2 for an idle second thread.
    threads: u64,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    let workload = it.next().ok_or("no workload given")?.clone();
    let mut parsed = Args {
        workload,
        rows: 100_000,
        iters: 10_000,
        reps: 5,
        db: DbMode::Mem,
        threads: 1,
    };
    while let Some(arg) = it.next() {
        let v = it.next().ok_or(format!("`{arg}` needs a value"))?;
        match arg.as_str() {
            "--rows" => {
                parsed.rows = v.parse().map_err(|e| format!("--rows {v}: {e}"))?;
                if parsed.rows < 10 {
                    return Err("--rows must be at least 10".into());
                }
            }
            "--iters" => {
                parsed.iters = v.parse().map_err(|e| format!("--iters {v}: {e}"))?;
                if parsed.iters == 0 {
                    return Err("--iters must be at least 1".into());
                }
            }
            "--reps" => {
                parsed.reps = v.parse().map_err(|e| format!("--reps {v}: {e}"))?;
                if parsed.reps == 0 {
                    return Err("--reps must be at least 1".into());
                }
            }
            "--db" => {
                parsed.db = match v.as_str() {
                    "mem" => DbMode::Mem,
                    "file" => DbMode::File,
                    other => return Err(format!("--db {other}: expected mem or file")),
                }
            }
            "--threads" => {
                parsed.threads = match v.as_str() {
                    "1" => 1,
                    "2" => 2,
                    other => return Err(format!("--threads {other}: expected 1 or 2")),
                }
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(parsed)
}

/// A connection and, for `--db file`, the temp directory of its file (removed after it).
struct Db {
    conn: Connection,
    _dir: Option<TempDir>,
}

impl Db {
    fn open(mode: DbMode) -> BenchResult<Db> {
        match mode {
            DbMode::Mem => Ok(Db {
                conn: Connection::open_in_memory()?,
                _dir: None,
            }),
            DbMode::File => {
                let dir = tempfile::tempdir()?;
                let conn = Connection::open(dir.path().join("bench.db"))?;
                let mode: String =
                    conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
                if mode != "wal" {
                    return Err(format!("journal_mode is {mode}, not wal").into());
                }
                conn.execute_batch("PRAGMA synchronous=NORMAL")?;
                Ok(Db {
                    conn,
                    _dir: Some(dir),
                })
            }
        }
    }

    /// A new database with `t` holding rows `1..=n` (one transaction, one prepared insert).
    fn populated(mode: DbMode, n: i64) -> BenchResult<Db> {
        let db = Db::open(mode)?;
        db.conn.execute_batch(CREATE_TABLE)?;
        db.conn.execute_batch("BEGIN")?;
        let mut insert = db.conn.prepare(INSERT)?;
        for id in 1..=n {
            let row = Row::new(id);
            insert.execute(params![row.id, row.a, row.b, row.c, &row.d[..]])?;
        }
        drop(insert);
        db.conn.execute_batch("COMMIT")?;
        Ok(db)
    }
}

/// Row `id`: `(id, 'name-%08d', id, id*0.5, id as LE i64 twice)`.
struct Row {
    id: i64,
    a: String,
    b: i64,
    c: f64,
    d: [u8; 16],
}

impl Row {
    fn new(id: i64) -> Row {
        let le = id.to_le_bytes();
        let mut d = [0; 16];
        d[..8].copy_from_slice(&le);
        d[8..].copy_from_slice(&le);
        Row {
            id,
            a: format!("name-{id:08}"),
            b: id,
            // Exact for every id up to 2^53.
            c: id as f64 * 0.5,
            d,
        }
    }
}

/// The mix: one transaction, the two bulk statements, then `n/10` inserts through one cached
/// prepared statement.
fn mix(conn: &Connection, inserts: &[Row]) -> BenchResult<()> {
    conn.execute_batch("BEGIN")?;
    conn.execute(MIX_UPDATE, [])?;
    conn.execute(MIX_DELETE, [])?;
    let mut insert = conn.prepare_cached(INSERT)?;
    for row in inserts {
        insert.execute(params![row.id, row.a, row.b, row.c, &row.d[..]])?;
    }
    drop(insert);
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Row count, `sum(b)` and FNV-1a over every value of every row in `id` order: the same
/// fingerprint as liteorm-bench's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    rows: u64,
    sum_b: i128,
    hash: u64,
}

fn fingerprint(conn: &Connection) -> BenchResult<Fingerprint> {
    fn fnv(hash: &mut u64, bytes: &[u8]) {
        for &b in bytes {
            *hash ^= u64::from(b);
            *hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut select = conn.prepare("SELECT id, a, b, c, d FROM t ORDER BY id")?;
    let mut rows = select.query([])?;
    let mut fp = Fingerprint {
        rows: 0,
        sum_b: 0,
        hash: 0xcbf2_9ce4_8422_2325,
    };
    while let Some(row) = rows.next()? {
        fp.rows += 1;
        for i in 0..5 {
            match row.get_ref(i)? {
                ValueRef::Null => fnv(&mut fp.hash, &[0]),
                ValueRef::Integer(v) => {
                    if i == 2 {
                        fp.sum_b += i128::from(v);
                    }
                    fnv(&mut fp.hash, &[1]);
                    fnv(&mut fp.hash, &v.to_le_bytes());
                }
                ValueRef::Real(f) => {
                    fnv(&mut fp.hash, &[2]);
                    fnv(&mut fp.hash, &f.to_bits().to_le_bytes());
                }
                ValueRef::Text(t) => {
                    fnv(&mut fp.hash, &[3]);
                    fnv(&mut fp.hash, &(t.len() as u64).to_le_bytes());
                    fnv(&mut fp.hash, t);
                }
                ValueRef::Blob(b) => {
                    fnv(&mut fp.hash, &[4]);
                    fnv(&mut fp.hash, &(b.len() as u64).to_le_bytes());
                    fnv(&mut fp.hash, b);
                }
            }
        }
    }
    Ok(fp)
}

fn query_i64(conn: &Connection, sql: &str) -> BenchResult<i64> {
    Ok(conn.query_row(sql, [], |row| row.get(0))?)
}

/// Entries of a changeset by op: (inserts, updates, deletes).
fn count_ops(cs: &Changeset) -> BenchResult<(u64, u64, u64)> {
    let mut iter = cs.iter()?;
    let mut counts = (0, 0, 0);
    while let Some(item) = iter.next()? {
        match item.op()?.code() {
            Action::SQLITE_INSERT => counts.0 += 1,
            Action::SQLITE_UPDATE => counts.1 += 1,
            Action::SQLITE_DELETE => counts.2 += 1,
            other => return Err(format!("unexpected change op {other:?}").into()),
        }
    }
    Ok(counts)
}

/// The conflict handler of `apply`: counts its calls and aborts.
fn abort_counting(
    calls: &Arc<AtomicU64>,
) -> impl Fn(ConflictType, rusqlite::session::ChangesetItem) -> ConflictAction + Send + 'static {
    let calls = Arc::clone(calls);
    move |_, _| {
        calls.fetch_add(1, Ordering::Relaxed);
        ConflictAction::SQLITE_CHANGESET_ABORT
    }
}

/// The conflict handler of `conflicts`: counts its calls, omits DATA conflicts, aborts on
/// anything else.
fn omit_data_counting(
    calls: &Arc<AtomicU64>,
) -> impl Fn(ConflictType, rusqlite::session::ChangesetItem) -> ConflictAction + Send + 'static {
    let calls = Arc::clone(calls);
    move |kind, _| {
        calls.fetch_add(1, Ordering::Relaxed);
        if kind == ConflictType::SQLITE_CHANGESET_DATA {
            ConflictAction::SQLITE_CHANGESET_OMIT
        } else {
            ConflictAction::SQLITE_CHANGESET_ABORT
        }
    }
}

/// No table filter (every table is applied).
const NO_FILTER: Option<fn(&str) -> bool> = None;

/// The median (mean of the two middle values for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The nearest-rank percentile `p` of `values`.
fn percentile(values: &[f64], p: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    sorted[(n * p).div_ceil(100).clamp(1, n) - 1]
}

/// The compile-time options of the linked SQLite (`PRAGMA compile_options`), comma-separated in
/// SQLite's order.
fn compile_options() -> BenchResult<String> {
    let conn = Connection::open_in_memory()?;
    let mut stmt = conn.prepare("PRAGMA compile_options")?;
    let options = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(options.join(","))
}

/// One output line: ordered fields printed as a JSON object.
struct Line(Vec<(&'static str, Json)>);

impl Line {
    fn new(cmd: &str, args: &Args) -> BenchResult<Line> {
        let mut line = Line(Vec::new());
        line.push("cmd", Json::from(cmd));
        line.push("impl", Json::from("rusqlite"));
        line.push(
            "db",
            Json::from(match args.db {
                DbMode::Mem => "mem",
                DbMode::File => "file",
            }),
        );
        line.push("sqlite", Json::from(rusqlite::version()));
        // liteorm-bench refuses a baseline whose SQLite is built otherwise than its own.
        line.push("sqlite_options", Json::from(compile_options()?));
        line.push("reps", Json::from(args.reps as u64));
        line.push("threads", Json::from(args.threads));
        Ok(line)
    }

    fn push(&mut self, key: &'static str, value: Json) -> &mut Line {
        self.0.push((key, value));
        self
    }

    fn int(&mut self, key: &'static str, value: u64) -> &mut Line {
        self.push(key, Json::from(value))
    }

    /// A float rounded to `digits` decimals (`null` if not finite).
    fn num(&mut self, key: &'static str, value: f64, digits: i32) -> &mut Line {
        let scale = 10f64.powi(digits);
        let json = if value.is_finite() {
            Json::from((value * scale).round() / scale)
        } else {
            Json::Null
        };
        self.push(key, json)
    }

    fn print(&self) {
        let mut out = String::from("{");
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // A `&str` key and a `serde_json::Value` always serialize.
            let _ = write!(out, "{}:{}", Json::from(*key), value);
        }
        out.push('}');
        println!("{out}");
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn per_s(rows: u64, ms: f64) -> f64 {
    rows as f64 / (ms / 1e3)
}

/// `capture`: the mix without a session, then with one (create/attach, mix, changeset,
/// patchset, delete timed apart, as liteorm-bench's raw side).
fn capture(args: &Args) -> BenchResult<()> {
    let n = args.rows;
    let inserts: Vec<Row> = (n + 1..=n + n / 10).map(Row::new).collect();
    let mut reps: Vec<[f64; 7]> = Vec::new();
    let mut counts = None;
    for _ in 0..args.reps {
        let plain = Db::populated(args.db, n)?;
        let start = Timer::start();
        mix(&plain.conn, &inserts)?;
        let mix_without = start.stop(c"mix_without_ms");
        drop(plain);

        let db = Db::populated(args.db, n)?;
        instr::begin();
        let start = Instant::now();
        let mut session = Session::new(&db.conn)?;
        session.attach(Some("t"))?;
        let t0 = Instant::now();
        instr::end(c"capture_ms,capture_patchset_ms");
        mix(&db.conn, &inserts)?;
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
        let create_delete = ms(t0 - start) + ms(deleted - t3);
        let c = count_ops(&changeset)?;
        let p = count_ops(&patchset)?;
        assert_eq!(c, p, "content check failed: patchset entries");
        assert_eq!(
            c,
            (
                u64::try_from(n / 10)?,
                u64::try_from(n - n / 10)?,
                u64::try_from(n / 10)?
            ),
            "content check failed: changeset entries by op"
        );
        counts = Some(c);
        reps.push([
            mix_without,
            ms(t1 - t0),
            ms(t2 - t1),
            ms(t3 - t2),
            create_delete,
            create_delete + ms(t2 - t0),
            create_delete + ms(t1 - t0) + ms(t3 - t2),
        ]);
    }
    let med = |i: usize| median(&reps.iter().map(|r| r[i]).collect::<Vec<_>>());
    let (inserts, updates, deletes) = counts.ok_or("no repetition")?;
    let nu = u64::try_from(n)?;
    let mut line = Line::new("capture", args)?;
    line.int("rows", nu)
        .int("row_ops", nu + 2 * (nu / 10))
        .int("changeset_ops", inserts + updates + deletes)
        .int("changeset_inserts", inserts)
        .int("changeset_updates", updates)
        .int("changeset_deletes", deletes)
        .num("mix_without_ms", med(0), 3)
        .num("mix_with_ms", med(1), 3)
        .num("changeset_ms", med(2), 3)
        .num("patchset_ms", med(3), 3)
        .num("session_create_delete_ms", med(4), 3)
        .num("capture_ms", med(5), 3)
        .num("capture_patchset_ms", med(6), 3)
        .push("content_checks", Json::from("passed"));
    line.print();
    Ok(())
}

/// One change for the SQL replay, decoded before the timer starts.
enum Replay {
    Insert(Row),
    Update { id: i64, b: i64 },
    Delete { id: i64 },
}

fn int(value: ValueRef<'_>, what: &str) -> BenchResult<i64> {
    match value {
        ValueRef::Integer(i) => Ok(i),
        other => Err(format!("{what}: expected an integer, found {other:?}").into()),
    }
}

fn decode(cs: &Changeset) -> BenchResult<Vec<Replay>> {
    let mut iter = cs.iter()?;
    let mut out = Vec::new();
    while let Some(item) = iter.next()? {
        out.push(match item.op()?.code() {
            Action::SQLITE_INSERT => Replay::Insert(Row {
                id: int(item.new_value(0)?, "insert id")?,
                a: item.new_value(1)?.as_str()?.to_owned(),
                b: int(item.new_value(2)?, "insert b")?,
                c: item.new_value(3)?.as_f64()?,
                d: <[u8; 16]>::try_from(item.new_value(4)?.as_blob()?)?,
            }),
            Action::SQLITE_UPDATE => Replay::Update {
                id: int(item.old_value(0)?, "update id")?,
                b: int(item.new_value(2)?, "update b")?,
            },
            Action::SQLITE_DELETE => Replay::Delete {
                id: int(item.old_value(0)?, "delete id")?,
            },
            other => return Err(format!("unexpected change op {other:?}").into()),
        });
    }
    Ok(out)
}

/// `apply`: apply, invert, apply the inverse, and the SQL replay of the same changes.
fn apply(args: &Args) -> BenchResult<()> {
    let n = args.rows;
    let inserts: Vec<Row> = (n + 1..=n + n / 10).map(Row::new).collect();
    let mut reps: Vec<[f64; 4]> = Vec::new();
    let mut ops = 0;
    let calls = Arc::new(AtomicU64::new(0));
    for _ in 0..args.reps {
        let source = Db::populated(args.db, n)?;
        let mut session = Session::new(&source.conn)?;
        session.attach(Some("t"))?;
        mix(&source.conn, &inserts)?;
        let cs = session.changeset()?;
        drop(session);
        let mixed = fingerprint(&source.conn)?;
        drop(source);
        let (i, u, d) = count_ops(&cs)?;
        ops = i + u + d;
        assert_eq!(
            ops,
            u64::try_from(n + n / 10)?,
            "content check failed: changeset entries"
        );

        let target = Db::populated(args.db, n)?;
        let original = fingerprint(&target.conn)?;
        let start = Timer::start();
        target.conn.apply(&cs, NO_FILTER, abort_counting(&calls))?;
        let apply = start.stop(c"apply_ms");
        assert_eq!(
            fingerprint(&target.conn)?,
            mixed,
            "content check failed after the apply"
        );
        let start = Timer::start();
        let inverse = cs.invert()?;
        let invert = start.stop(c"invert_ms");
        let start = Timer::start();
        target
            .conn
            .apply(&inverse, NO_FILTER, abort_counting(&calls))?;
        let invert_apply = start.stop(c"invert_apply_ms");
        assert_eq!(
            fingerprint(&target.conn)?,
            original,
            "content check failed after the inverse"
        );
        drop(target);

        let changes = decode(&cs)?;
        let replay_db = Db::populated(args.db, n)?;
        let conn = &replay_db.conn;
        let start = Timer::start();
        conn.execute_batch("BEGIN")?;
        let mut insert = conn.prepare(INSERT)?;
        let mut update = conn.prepare(UPDATE_B)?;
        let mut delete = conn.prepare(DELETE_ID)?;
        for change in &changes {
            match change {
                Replay::Insert(row) => {
                    insert.execute(params![row.id, row.a, row.b, row.c, &row.d[..]])?;
                }
                Replay::Update { id, b } => {
                    update.execute(params![b, id])?;
                }
                Replay::Delete { id } => {
                    delete.execute(params![id])?;
                }
            }
        }
        drop((insert, update, delete));
        conn.execute_batch("COMMIT")?;
        let replay = start.stop(c"replay_sql_ms");
        assert_eq!(
            fingerprint(conn)?,
            mixed,
            "content check failed after the replay"
        );
        reps.push([apply, invert, invert_apply, replay]);
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        0,
        "content check failed: the conflict handler was called"
    );
    let med = |i: usize| median(&reps.iter().map(|r| r[i]).collect::<Vec<_>>());
    let mut line = Line::new("apply", args)?;
    line.int("rows", u64::try_from(n)?)
        .int("changeset_ops", ops)
        .num("apply_ms", med(0), 3)
        .num("apply_rows_per_s", per_s(ops, med(0)), 0)
        .num("invert_ms", med(1), 3)
        .num("invert_apply_ms", med(2), 3)
        .num("invert_apply_rows_per_s", per_s(ops, med(2)), 0)
        .num("replay_sql_ms", med(3), 3)
        .num("replay_sql_rows_per_s", per_s(ops, med(3)), 0)
        .num("apply_vs_replay_time_ratio", med(0) / med(3), 4)
        .int("conflict_handler_calls", 0)
        .push("content_checks", Json::from("passed"));
    line.print();
    Ok(())
}

/// `conflicts`: N updates, half of them DATA conflicts that the handler omits; then the same
/// changeset on an unmodified copy.
fn conflicts(args: &Args) -> BenchResult<()> {
    let n = args.rows;
    let conflicting = n / 2;
    let mut reps: Vec<[f64; 2]> = Vec::new();
    let mut handler_calls = 0;
    for _ in 0..args.reps {
        let source = Db::populated(args.db, n)?;
        let mut session = Session::new(&source.conn)?;
        session.attach(Some("t"))?;
        source.conn.execute(MIX_UPDATE, [])?;
        let cs = session.changeset()?;
        drop(session);
        drop(source);
        assert_eq!(
            count_ops(&cs)?,
            (0, u64::try_from(n)?, 0),
            "content check failed: changeset entries"
        );

        let target = Db::populated(args.db, n)?;
        target.conn.execute(CONFLICT_SETUP, [])?;
        let calls = Arc::new(AtomicU64::new(0));
        let start = Timer::start();
        target
            .conn
            .apply(&cs, NO_FILTER, omit_data_counting(&calls))?;
        let apply = start.stop(c"apply_ms");
        handler_calls = calls.load(Ordering::Relaxed);
        assert_eq!(
            handler_calls,
            u64::try_from(conflicting)?,
            "content check failed: handler calls"
        );
        let updated = query_i64(&target.conn, "SELECT count(*) FROM t WHERE b = id + 1")?;
        let kept = query_i64(
            &target.conn,
            "SELECT count(*) FROM t WHERE b = id + 1000000",
        )?;
        assert_eq!(
            (updated, kept),
            (n - conflicting, conflicting),
            "content check failed after the apply"
        );
        drop(target);

        let clean_db = Db::populated(args.db, n)?;
        let clean_calls = Arc::new(AtomicU64::new(0));
        let start = Timer::start();
        clean_db
            .conn
            .apply(&cs, NO_FILTER, omit_data_counting(&clean_calls))?;
        let clean = start.stop(c"clean_apply_ms");
        assert_eq!(
            clean_calls.load(Ordering::Relaxed),
            0,
            "content check failed: conflicts in the clean apply"
        );
        assert_eq!(
            query_i64(&clean_db.conn, "SELECT count(*) FROM t WHERE b = id + 1")?,
            n,
            "content check failed after the clean apply"
        );
        reps.push([apply, clean]);
    }
    let med = |i: usize| median(&reps.iter().map(|r| r[i]).collect::<Vec<_>>());
    let nu = u64::try_from(n)?;
    let mut line = Line::new("conflicts", args)?;
    line.int("rows", nu)
        .int("changeset_ops", nu)
        .int("conflicting_rows", nu / 2)
        .num("apply_ms", med(0), 3)
        .num("rows_per_s", per_s(nu, med(0)), 0)
        .int("handler_calls", handler_calls)
        .num("clean_apply_ms", med(1), 3)
        .num("clean_rows_per_s", per_s(nu, med(1)), 0)
        .push("content_checks", Json::from("passed"));
    line.print();
    Ok(())
}

/// One repetition of `small`: the per-transaction latencies (µs), plain and with a session.
type Latencies = (Vec<f64>, Vec<f64>);

/// `small`: K one-row autocommit inserts, plain and each inside a whole session cycle.
fn small(args: &Args) -> BenchResult<()> {
    let rows: Vec<Row> = (1..=i64::try_from(args.iters)?).map(Row::new).collect();
    let expected = i64::try_from(rows.len())?;
    let mut reps: Vec<Latencies> = Vec::new();
    for _ in 0..args.reps {
        let db = Db::open(args.db)?;
        db.conn.execute_batch(CREATE_TABLE)?;
        let mut insert = db.conn.prepare(INSERT)?;
        let mut plain = Vec::with_capacity(rows.len());
        instr::begin();
        for row in &rows {
            let start = Instant::now();
            insert.execute(params![row.id, row.a, row.b, row.c, &row.d[..]])?;
            plain.push(start.elapsed().as_secs_f64() * 1e6);
        }
        instr::end(c"plain_tx");
        drop(insert);
        assert_eq!(
            query_i64(&db.conn, "SELECT count(*) FROM t")?,
            expected,
            "content check failed"
        );
        drop(db);

        let db = Db::open(args.db)?;
        db.conn.execute_batch(CREATE_TABLE)?;
        let mut insert = db.conn.prepare(INSERT)?;
        let mut session = Vec::with_capacity(rows.len());
        instr::begin();
        for row in &rows {
            let start = Instant::now();
            let mut recording = Session::new(&db.conn)?;
            recording.attach(Some("t"))?;
            insert.execute(params![row.id, row.a, row.b, row.c, &row.d[..]])?;
            let cs = recording.changeset()?;
            drop(cs);
            drop(recording);
            session.push(start.elapsed().as_secs_f64() * 1e6);
        }
        instr::end(c"session_tx");
        // The per-transaction changeset is freed inside the timer; check one outside it.
        let mut recording = Session::new(&db.conn)?;
        recording.attach(Some("t"))?;
        let extra = Row::new(expected + 1);
        insert.execute(params![extra.id, extra.a, extra.b, extra.c, &extra.d[..]])?;
        assert_eq!(
            count_ops(&recording.changeset()?)?,
            (1, 0, 0),
            "content check failed"
        );
        drop(recording);
        drop(insert);
        assert_eq!(
            query_i64(&db.conn, "SELECT count(*) FROM t")?,
            expected + 1,
            "content check failed"
        );
        reps.push((plain, session));
    }
    let med = |f: &dyn Fn(&Latencies) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let plain_p50 = med(&|r| percentile(&r.0, 50));
    let session_p50 = med(&|r| percentile(&r.1, 50));
    let mut line = Line::new("small", args)?;
    line.int("iters", args.iters as u64)
        .num("plain_p50_us", plain_p50, 2)
        .num("plain_p99_us", med(&|r| percentile(&r.0, 99)), 2)
        .num("session_p50_us", session_p50, 2)
        .num("session_p99_us", med(&|r| percentile(&r.1, 99)), 2)
        .num("p50_overhead_us", session_p50 - plain_p50, 2)
        .num("p50_ratio", session_p50 / plain_p50, 4)
        .push("content_checks", Json::from("passed"));
    line.print();
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .first()
        .is_some_and(|a| matches!(a.as_str(), "-h" | "--help" | "help"))
    {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse(&args) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("rusqlite-baseline: error: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.threads == 2 {
        // Parked for good: it only makes the process multi-threaded (see `--threads`).
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    let result = match args.workload.as_str() {
        "capture" => capture(&args),
        "apply" => apply(&args),
        "conflicts" => conflicts(&args),
        "small" => small(&args),
        other => Err(format!("unknown workload `{other}`").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rusqlite-baseline: {}: {err}", args.workload);
            ExitCode::FAILURE
        }
    }
}
