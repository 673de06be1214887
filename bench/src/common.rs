//! What both implementations share: options, the table's deterministic rows, statistics
//! (median, nearest-rank percentiles), the content fingerprint, the JSON line writer and the
//! ratio lines (of the medians, of the bests, and paired repetition by repetition).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;

use crate::raw::{Handle, ValueRef};

/// Every fallible step of a benchmark returns this; content checks panic instead.
pub(crate) type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The schema of the benchmark table.
pub(crate) const CREATE_TABLE: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL, d BLOB)";
/// The insert used to populate, by the mix and by the replay.
pub(crate) const INSERT: &str = "INSERT INTO t(id,a,b,c,d) VALUES(?,?,?,?,?)";
/// The replay's update (the mix only changes `b`).
pub(crate) const UPDATE_B: &str = "UPDATE t SET b = ? WHERE id = ?";
/// The replay's delete.
pub(crate) const DELETE_ID: &str = "DELETE FROM t WHERE id = ?";
/// The mix's first two statements.
pub(crate) const MIX_UPDATE: &str = "UPDATE t SET b = b + 1";
/// See [`MIX_UPDATE`].
pub(crate) const MIX_DELETE: &str = "DELETE FROM t WHERE id % 10 = 0";
/// What `conflicts` does to the target before applying.
pub(crate) const CONFLICT_SETUP: &str = "UPDATE t SET b = b + 1000000 WHERE id % 2 = 0";

/// `--db mem|file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DbMode {
    /// A private `:memory:` connection per database.
    Mem,
    /// A temp file with WAL and `synchronous=NORMAL`.
    File,
}

impl DbMode {
    /// The name used on the command line and in the JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DbMode::Mem => "mem",
            DbMode::File => "file",
        }
    }
}

/// Row `id` of the table: `(id, 'name-%08d', id, id*0.5, id as LE i64 twice)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowData {
    /// `id`.
    pub(crate) id: i64,
    /// `a`.
    pub(crate) a: String,
    /// `b`.
    pub(crate) b: i64,
    /// `c`.
    pub(crate) c: f64,
    /// `d`.
    pub(crate) d: [u8; 16],
}

impl RowData {
    /// The row with this id.
    pub(crate) fn new(id: i64) -> Self {
        let le = id.to_le_bytes();
        let mut d = [0; 16];
        d[..8].copy_from_slice(&le);
        d[8..].copy_from_slice(&le);
        RowData {
            id,
            a: format!("name-{id:08}"),
            b: id,
            // Exact for every id up to 2^53, far above any N used here.
            c: id as f64 * 0.5,
            d,
        }
    }
}

/// The rows the mix inserts for a table of `n` rows: ids `n+1 ..= n + n/10`.
pub(crate) fn mix_inserts(n: i64) -> Vec<RowData> {
    (n + 1..=n + n / 10).map(RowData::new).collect()
}

/// Creates `t` and inserts rows `1..=n` in one transaction (untimed setup, the same code for
/// both implementations so that their databases are identical).
pub(crate) fn populate(db: Handle<'_>, n: i64) -> BenchResult<()> {
    db.exec(CREATE_TABLE)?;
    db.exec("BEGIN")?;
    let mut insert = db.prepare(INSERT)?;
    for id in 1..=n {
        insert.bind_row(&RowData::new(id))?;
        insert.run()?;
    }
    drop(insert);
    db.exec("COMMIT")
}

/// Row count, `sum(b)` and a hash of every column of every row in `id` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    /// Rows.
    pub(crate) rows: u64,
    /// `sum(b)`.
    pub(crate) sum_b: i128,
    /// FNV-1a over each value's type tag and bytes.
    pub(crate) hash: u64,
}

/// FNV-1a, 64 bit: tiny, deterministic, and good enough to tell tables apart.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn value(&mut self, value: ValueRef<'_>) {
        match value {
            ValueRef::Null => self.bytes(&[0]),
            ValueRef::Integer(i) => {
                self.bytes(&[1]);
                self.bytes(&i.to_le_bytes());
            }
            ValueRef::Real(f) => {
                self.bytes(&[2]);
                self.bytes(&f.to_bits().to_le_bytes());
            }
            ValueRef::Text(t) => {
                self.bytes(&[3]);
                self.bytes(&(t.len() as u64).to_le_bytes());
                self.bytes(t);
            }
            ValueRef::Blob(b) => {
                self.bytes(&[4]);
                self.bytes(&(b.len() as u64).to_le_bytes());
                self.bytes(b);
            }
        }
    }
}

/// The fingerprint of table `t` (untimed content check).
pub(crate) fn fingerprint(db: Handle<'_>) -> BenchResult<Fingerprint> {
    let mut select = db.prepare("SELECT id, a, b, c, d FROM t ORDER BY id")?;
    let mut fnv = Fnv(0xcbf2_9ce4_8422_2325);
    let (mut rows, mut sum_b) = (0, 0i128);
    while select.step()? {
        rows += 1;
        for i in 0..5 {
            let value = select.column(i);
            if i == 2
                && let ValueRef::Integer(b) = value
            {
                sum_b += i128::from(b);
            }
            fnv.value(value);
        }
    }
    Ok(Fingerprint {
        rows,
        sum_b,
        hash: fnv.0,
    })
}

/// A single integer from a one-row, one-column query.
pub(crate) fn query_i64(db: Handle<'_>, sql: &str) -> BenchResult<i64> {
    let mut stmt = db.prepare(sql)?;
    if !stmt.step()? {
        return Err(format!("no row from {sql}").into());
    }
    match stmt.column(0) {
        ValueRef::Integer(i) => Ok(i),
        other => Err(format!("{sql} returned {other:?}").into()),
    }
}

/// The `conflicts` content check: `applied` rows (odd ids) have `b = id + 1`, the other
/// `conflicting` rows kept `b = id + 1000000`.
pub(crate) fn check_conflicts_content(
    db: Handle<'_>,
    applied: i64,
    conflicting: i64,
) -> BenchResult<()> {
    let updated = query_i64(db, "SELECT count(*) FROM t WHERE b = id + 1")?;
    let kept = query_i64(db, "SELECT count(*) FROM t WHERE b = id + 1000000")?;
    assert_eq!(
        (updated, kept),
        (applied, conflicting),
        "content check failed: rows with b = id + 1 and rows with b = id + 1000000"
    );
    Ok(())
}

/// Milliseconds as a float.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Microseconds as a float.
pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The median (the mean of the two middle values for an even count); NaN for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `values`; NaN for none.
pub(crate) fn percentile(values: &[f64], p: u32) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    // rank = ceil(p/100 * n), computed in integers.
    let rank = (n * p as usize).div_ceil(100).clamp(1, n);
    sorted[rank - 1]
}

/// Rows per second for `rows` rows in `ms` milliseconds.
pub(crate) fn per_s(rows: u64, ms: f64) -> f64 {
    rows as f64 / (ms / 1e3)
}

/// Rounds to `digits` decimals, for readable output.
fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// One output line: an ordered list of fields, printed as a JSON object.
#[derive(Clone)]
pub(crate) struct Line {
    fields: Vec<(String, Json)>,
}

impl Line {
    /// A line with the common fields: `cmd`, `impl`, `db`, `sqlite`, `reps`.
    pub(crate) fn new(cmd: &str, imp: &str, common: &Common) -> Self {
        let mut line = Line { fields: Vec::new() };
        line.str("cmd", cmd)
            .str("impl", imp)
            .str("db", common.db.name())
            .str("sqlite", &common.sqlite)
            .int("reps", common.reps as u64);
        line
    }

    /// A string field.
    pub(crate) fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        self.fields.push((key.to_owned(), Json::from(value)));
        self
    }

    /// An integer field.
    pub(crate) fn int(&mut self, key: &'static str, value: u64) -> &mut Self {
        self.fields.push((key.to_owned(), Json::from(value)));
        self
    }

    /// A float rounded to `digits` decimals; NaN (not measurable) becomes `null`.
    pub(crate) fn num(&mut self, key: &'static str, value: f64, digits: i32) -> &mut Self {
        let json = if value.is_finite() {
            Json::from(round(value, digits))
        } else {
            Json::Null
        };
        self.fields.push((key.to_owned(), json));
        self
    }

    /// A time in milliseconds (µs precision).
    pub(crate) fn ms(&mut self, key: &'static str, value: f64) -> &mut Self {
        self.num(key, value, 3)
    }

    /// A ratio (4 decimals).
    pub(crate) fn ratio(&mut self, key: &'static str, value: f64) -> &mut Self {
        self.num(key, value, 4)
    }

    /// A rate (whole units).
    pub(crate) fn rate(&mut self, key: &'static str, value: f64) -> &mut Self {
        self.num(key, value, 0)
    }

    /// The value of a numeric field, NaN if absent or null.
    pub(crate) fn get(&self, key: &str) -> f64 {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_f64())
            .unwrap_or(f64::NAN)
    }

    /// Prints the line to stdout.
    pub(crate) fn print(&self) {
        let mut out = String::from("{");
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // A `&str` key and a `serde_json::Value` always serialize.
            let _ = write!(out, "{}:{}", Json::from(key.as_str()), value);
        }
        out.push('}');
        println!("{out}");
    }
}

/// Options and facts every workload needs.
pub(crate) struct Common {
    /// `--db`.
    pub(crate) db: DbMode,
    /// `--reps`.
    pub(crate) reps: usize,
    /// The SQLite version linked at run time.
    pub(crate) sqlite: String,
    /// `--impl`: run only liteorm or only the raw baseline (for profiling one side).
    pub(crate) only: Option<&'static str>,
    /// `--baseline`: the rusqlite baseline, run once per repetition after liteorm and raw.
    pub(crate) baseline: Option<Baseline>,
}

/// The rusqlite baseline (`bench/rusqlite-baseline`): a separate program run with `--reps 1`
/// once per repetition, so that its repetitions interleave with liteorm's and raw's.
pub(crate) struct Baseline {
    /// The `rusqlite-baseline` binary.
    pub(crate) program: PathBuf,
    /// Its arguments: the workload, the size, `--db`, `--reps 1`.
    pub(crate) args: Vec<String>,
    /// The compile-time options (`PRAGMA compile_options`) of this process's SQLite: every
    /// line of the baseline must report the same, and the same version, or its ratios would
    /// compare two SQLite builds (sqlx turns on `SQLITE_ENABLE_UNLOCK_NOTIFY`, which a plain
    /// rusqlite build leaves out).
    pub(crate) sqlite_options: String,
    /// The JSON line of each repetition run so far.
    pub(crate) lines: RefCell<Vec<serde_json::Map<String, Json>>>,
}

impl Baseline {
    /// Runs one repetition and keeps its line; `sqlite` is this process's SQLite version.
    fn run_rep(&self, sqlite: &str) -> BenchResult<()> {
        let out = Command::new(&self.program).args(&self.args).output()?;
        if !out.status.success() {
            return Err(format!(
                "{} {}: {}\n{}",
                self.program.display(),
                self.args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let stdout = String::from_utf8(out.stdout)?;
        let line = stdout
            .lines()
            .next()
            .ok_or("the baseline printed nothing")?;
        match serde_json::from_str(line)? {
            Json::Object(mut fields) => {
                self.check_build(
                    sqlite,
                    fields.remove("sqlite_options"),
                    fields.get("sqlite"),
                )?;
                self.lines.borrow_mut().push(fields);
                Ok(())
            }
            other => Err(format!("the baseline printed {other}, not an object").into()),
        }
    }

    /// Fails unless the baseline's SQLite (`sqlite`, `sqlite_options` of its line) is this
    /// process's (version `sqlite`).
    fn check_build(
        &self,
        sqlite: &str,
        options: Option<Json>,
        version: Option<&Json>,
    ) -> BenchResult<()> {
        if version.and_then(Json::as_str) != Some(sqlite) {
            return Err(format!(
                "the rusqlite baseline runs SQLite {version:?}, liteorm-bench {sqlite}"
            )
            .into());
        }
        let options = options.as_ref().and_then(Json::as_str).unwrap_or_default();
        if options != self.sqlite_options {
            let set = |s: &str| s.split(',').map(str::to_owned).collect::<BTreeSet<_>>();
            let (theirs, ours) = (set(options), set(&self.sqlite_options));
            return Err(format!(
                "the rusqlite baseline's SQLite is built otherwise: only it has {:?}, only \
                 liteorm-bench's has {:?}",
                theirs.difference(&ours).collect::<Vec<_>>(),
                ours.difference(&theirs).collect::<Vec<_>>()
            )
            .into());
        }
        Ok(())
    }

    /// The line of all repetitions and the line of each, if any ran.
    fn side(&self) -> Option<Side> {
        let median = self.median_line()?;
        let reps = self
            .lines
            .borrow()
            .iter()
            .map(|fields| Line {
                fields: fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            })
            .collect();
        Some(Side { median, reps })
    }

    /// The line of all repetitions: every numeric field the median over them, `reps` their
    /// count, the other fields as the first repetition printed them.
    fn median_line(&self) -> Option<Line> {
        let lines = self.lines.borrow();
        let first = lines.first()?;
        let mut line = Line { fields: Vec::new() };
        for (key, value) in first {
            let value = if key == "reps" {
                Json::from(lines.len() as u64)
            } else if value.is_u64() {
                // Counts: the same in every repetition, or the lower middle one.
                let mut values: Vec<u64> = lines
                    .iter()
                    .filter_map(|l| l.get(key).and_then(Json::as_u64))
                    .collect();
                values.sort_unstable();
                values
                    .get(values.len().saturating_sub(1) / 2)
                    .map_or(Json::Null, |&v| Json::from(v))
            } else if value.is_number() {
                let values: Vec<f64> = lines
                    .iter()
                    .map(|l| l.get(key).and_then(Json::as_f64).unwrap_or(f64::NAN))
                    .collect();
                serde_json::Number::from_f64(round(median(&values), 4))
                    .map_or(Json::Null, Json::Number)
            } else {
                value.clone()
            };
            line.fields.push((key.clone(), value));
        }
        Some(line)
    }
}

impl Common {
    /// Runs the repetitions, liteorm and raw interleaved so that slow drift of the machine
    /// affects both alike; a side excluded by `--impl` gets no repetition.
    pub(crate) fn run_reps<L, R>(
        &self,
        mut lite: impl FnMut() -> BenchResult<L>,
        mut raw: impl FnMut() -> BenchResult<R>,
    ) -> BenchResult<(Vec<L>, Vec<R>)> {
        let (mut lites, mut raws) = (Vec::new(), Vec::new());
        for _ in 0..self.reps {
            if self.only != Some("raw") {
                lites.push(lite()?);
            }
            if self.only != Some("liteorm") {
                raws.push(raw()?);
            }
            if let Some(baseline) = &self.baseline {
                baseline.run_rep(&self.sqlite)?;
            }
        }
        Ok((lites, raws))
    }

    /// Prints a workload's lines. `lite` and `raw` are the repetitions of each side that ran
    /// (empty for a side excluded by `--impl`), in the order they ran; `line` builds a side's
    /// line (`impl` as given) from some of its repetitions, medians over them. `size` is
    /// `("rows", N)` or `("iters", K)`; `keys` are the figures compared, each a time (`_ms`,
    /// `_us`) or a rate (`_per_s`). See [`Common::lines`] for what is printed.
    pub(crate) fn print<R>(
        &self,
        cmd: &str,
        size: (&'static str, u64),
        lite: &[R],
        raw: &[R],
        keys: &[&'static str],
        line: impl Fn(&str, &[R]) -> Line,
    ) {
        for line in self.lines(cmd, size, lite, raw, keys, line) {
            line.print();
        }
    }

    /// The lines [`Common::print`] prints, in order: the liteorm and raw lines that were run;
    /// when both were, the three ratio lines of liteorm against raw (`ratio`, `ratio_best`,
    /// `ratio_paired`, see [`Common::ratio_lines`]); with `--baseline`, the rusqlite line
    /// (medians over its repetitions), then the same three lines of raw against rusqlite
    /// (`raw/rusqlite`, `raw/rusqlite_best`, `raw/rusqlite_paired`) and of liteorm against
    /// rusqlite, for the sides that were run. All come from the same repetitions.
    fn lines<R>(
        &self,
        cmd: &str,
        size: (&'static str, u64),
        lite: &[R],
        raw: &[R],
        keys: &[&'static str],
        line: impl Fn(&str, &[R]) -> Line,
    ) -> Vec<Line> {
        let lite = Side::of("liteorm", lite, &line);
        let raw = Side::of("raw", raw, &line);
        let mut out: Vec<Line> = [&lite, &raw]
            .into_iter()
            .flatten()
            .map(|side| side.median.clone())
            .collect();
        if let (Some(lite), Some(raw)) = (&lite, &raw) {
            out.extend(self.ratio_lines(cmd, "ratio", size, lite, raw, keys));
        }
        let Some(rusqlite) = self.baseline.as_ref().and_then(Baseline::side) else {
            return out;
        };
        out.push(rusqlite.median.clone());
        for (imp, side) in [("raw", &raw), ("liteorm", &lite)] {
            if let Some(side) = side {
                let name = format!("{imp}/rusqlite");
                out.extend(self.ratio_lines(cmd, &name, size, side, &rusqlite, keys));
            }
        }
        out
    }

    /// The three lines comparing side `a` with side `b` on each of `keys`, all from the same
    /// interleaved repetitions: `name` has a's median over b's median; `name_best` a's best
    /// over b's best (the lowest time, the highest rate: the run least disturbed by the
    /// machine's noise); `name_paired` the median over repetitions i of a_i / b_i (repetition
    /// i of each side ran back to back, so a burst of noise mostly hits one pair).
    fn ratio_lines(
        &self,
        cmd: &str,
        name: &str,
        size: (&'static str, u64),
        a: &Side,
        b: &Side,
        keys: &[&'static str],
    ) -> [Line; 3] {
        let mut lines = [
            name.to_owned(),
            format!("{name}_best"),
            format!("{name}_paired"),
        ]
        .map(|imp| {
            let mut line = Line::new(cmd, &imp, self);
            line.int(size.0, size.1);
            line
        });
        let [median, best_of, paired_of] = &mut lines;
        for &key in keys {
            median.ratio(key, a.median.get(key) / b.median.get(key));
            best_of.ratio(key, best(key, &a.reps) / best(key, &b.reps));
            paired_of.ratio(key, paired(key, &a.reps, &b.reps));
        }
        lines
    }
}

/// One implementation's figures: the line of the medians over its repetitions, and one line
/// per repetition (each built by the same code from that repetition alone), in run order.
struct Side {
    median: Line,
    reps: Vec<Line>,
}

impl Side {
    /// The lines of `imp`'s repetitions, if it ran.
    fn of<R>(imp: &str, reps: &[R], line: &impl Fn(&str, &[R]) -> Line) -> Option<Side> {
        (!reps.is_empty()).then(|| Side {
            median: line(imp, reps),
            reps: reps.chunks(1).map(|rep| line(imp, rep)).collect(),
        })
    }
}

/// Whether a higher value of the compared figure `key` is better: a rate (`_per_s`) is, a time
/// (`_ms`, `_us`: durations and latency percentiles) is not.
///
/// # Panics
///
/// For any other key: the keys are literals of the workloads, and the smoke test runs each
/// workload, so a new key without a known unit fails there.
fn higher_is_better(key: &str) -> bool {
    if key.ends_with("_per_s") {
        true
    } else if key.ends_with("_ms") || key.ends_with("_us") {
        false
    } else {
        panic!("compared figure `{key}` is neither a time (_ms, _us) nor a rate (_per_s)")
    }
}

/// The best value of `key` over the repetitions that measured it: the lowest time or the
/// highest rate. NaN if none did.
fn best(key: &str, reps: &[Line]) -> f64 {
    let values = reps
        .iter()
        .map(|rep| rep.get(key))
        .filter(|v| v.is_finite());
    // `f64::max` and `f64::min` return the other operand when one is NaN.
    if higher_is_better(key) {
        values.fold(f64::NAN, f64::max)
    } else {
        values.fold(f64::NAN, f64::min)
    }
}

/// The median over repetitions i of `a_i / b_i` for `key`, over the pairs where both sides
/// measured it. NaN if none did.
fn paired(key: &str, a: &[Line], b: &[Line]) -> f64 {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| a.get(key) / b.get(key))
        .filter(|ratio| ratio.is_finite())
        .collect();
    median(&ratios)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A common with `baseline`'s repetitions already run, as if by `--baseline`.
    fn common(baseline: Option<&[f64]>) -> Common {
        Common {
            db: DbMode::Mem,
            reps: 4,
            sqlite: "3.51.3".to_owned(),
            only: None,
            baseline: baseline.map(|times| Baseline {
                program: PathBuf::from("rusqlite-baseline"),
                args: Vec::new(),
                sqlite_options: "ENABLE_SESSION,THREADSAFE=1".to_owned(),
                lines: RefCell::new(
                    times
                        .iter()
                        .map(|&ms| {
                            let rep = serde_json::json!({
                                "cmd": "t", "impl": "rusqlite", "reps": 1,
                                "apply_ms": ms, "rows_per_s": per_s(1000, ms),
                            });
                            match rep {
                                Json::Object(fields) => fields,
                                _ => unreachable!("a JSON object literal"),
                            }
                        })
                        .collect(),
                ),
            }),
        }
    }

    /// A workload's lines for repetitions that took `lite` and `raw` ms for 1000 rows: the
    /// median time, and rows/s derived from it as the workloads derive theirs.
    fn lines(common: &Common, lite: &[f64], raw: &[f64]) -> Vec<Line> {
        common.lines("t", ("rows", 1000), lite, raw, &KEYS, |imp, reps| {
            let ms = median(reps);
            let mut line = Line::new("t", imp, common);
            line.ms("apply_ms", ms).rate("rows_per_s", per_s(1000, ms));
            line
        })
    }

    const KEYS: [&str; 2] = ["apply_ms", "rows_per_s"];

    fn imps(lines: &[Line]) -> Vec<&str> {
        lines
            .iter()
            .map(|line| {
                line.fields
                    .iter()
                    .find(|(key, _)| key == "impl")
                    .and_then(|(_, value)| value.as_str())
                    .unwrap_or("?")
            })
            .collect()
    }

    /// `(apply_ms, rows_per_s)` of a line.
    fn figures(line: &Line) -> (f64, f64) {
        (line.get("apply_ms"), line.get("rows_per_s"))
    }

    #[test]
    fn best_and_paired_ratios_of_an_even_count() {
        let lines = lines(
            &common(None),
            &[10.0, 12.0, 11.0, 30.0],
            &[9.0, 10.0, 12.0, 8.0],
        );
        assert_eq!(
            imps(&lines),
            ["liteorm", "raw", "ratio", "ratio_best", "ratio_paired"]
        );
        // Medians 11.5 and 9.5 ms (the mean of the two middle ones).
        assert_eq!(figures(&lines[2]), (1.2105, 0.8261));
        // The lowest times, 10 and 8 ms; the highest rates are derived from them.
        assert_eq!(figures(&lines[3]), (1.25, 0.8));
        // Times 10/9, 12/10, 11/12, 30/8: the mean of 1.1111 and 1.2. Rates 0.9, 0.8333,
        // 1.0909, 0.2667: the mean of 0.8333 and 0.9 (not the inverse of the time's median).
        assert_eq!(figures(&lines[4]), (1.1556, 0.8667));
        for line in &lines[2..] {
            assert_eq!(line.get("rows"), 1000.0);
        }
    }

    #[test]
    fn paired_ratio_of_an_odd_count_is_the_middle_pair() {
        let lines = lines(&common(None), &[10.0, 12.0, 11.0], &[9.0, 10.0, 12.0]);
        // 10/9, 12/10, 11/12: the middle one is 10/9; rates 0.9, 0.8333, 1.0909.
        assert_eq!(figures(&lines[4]), (1.1111, 0.9));
        assert_eq!(figures(&lines[3]), (1.1111, 0.9));
    }

    #[test]
    fn one_side_prints_no_ratio_lines() {
        let common = common(None);
        assert_eq!(imps(&lines(&common, &[], &[9.0, 10.0])), ["raw"]);
        assert_eq!(imps(&lines(&common, &[9.0, 10.0], &[])), ["liteorm"]);
    }

    #[test]
    fn a_figure_a_side_cannot_measure_is_null_in_every_ratio_line() {
        let common = common(None);
        let lines = common.lines(
            "t",
            ("rows", 1000),
            &[1.0, 2.0],
            &[1.0, 2.0],
            &KEYS,
            |imp, reps| {
                let mut line = Line::new("t", imp, &common);
                // liteorm cannot split the time: its figure is NaN, printed as null.
                let ms = if imp == "liteorm" {
                    f64::NAN
                } else {
                    median(reps)
                };
                line.ms("apply_ms", ms)
                    .rate("rows_per_s", per_s(1000, median(reps)));
                line
            },
        );
        for line in &lines[2..] {
            assert!(line.get("apply_ms").is_nan());
            assert_eq!(line.get("rows_per_s"), 1.0);
        }
    }

    #[test]
    fn baseline_ratios_pair_each_side_with_rusqlite() {
        let common = common(Some(&[8.0, 9.0, 16.0, 10.0]));
        let lines = lines(&common, &[10.0, 12.0, 11.0, 30.0], &[9.0, 10.0, 12.0, 8.0]);
        assert_eq!(
            imps(&lines),
            [
                "liteorm",
                "raw",
                "ratio",
                "ratio_best",
                "ratio_paired",
                "rusqlite",
                "raw/rusqlite",
                "raw/rusqlite_best",
                "raw/rusqlite_paired",
                "liteorm/rusqlite",
                "liteorm/rusqlite_best",
                "liteorm/rusqlite_paired",
            ]
        );
        // raw against rusqlite: medians 9.5 and 9.5 ms; bests 8 and 8; pairs 9/8, 10/9, 12/16,
        // 8/10, of which the mean of 0.8 and 1.1111. The rusqlite line's rate is the median of
        // its repetitions' rates (it only has their lines), not the rate of its median time:
        // for an even count the two differ.
        assert_eq!(figures(&lines[6]), (1.0, 0.9972));
        assert_eq!(figures(&lines[7]), (1.0, 1.0));
        assert_eq!(lines[8].get("apply_ms"), 0.9556);
        // liteorm against rusqlite: bests 10 and 8; pairs 10/8, 12/9, 11/16, 30/10.
        assert_eq!(figures(&lines[10]), (1.25, 0.8));
        assert_eq!(lines[11].get("apply_ms"), 1.2917);
    }

    #[test]
    #[should_panic(expected = "neither a time")]
    fn a_figure_without_a_unit_has_no_best() {
        let _ = best("overhead_ratio", &[]);
    }

    #[test]
    fn a_baseline_on_another_sqlite_build_is_refused() {
        let common = common(Some(&[]));
        let baseline = common.baseline.as_ref().expect("a baseline");
        let options = |s: &str| Some(Json::from(s));
        let version = Json::from("3.51.3");
        assert!(
            baseline
                .check_build(
                    "3.51.3",
                    options("ENABLE_SESSION,THREADSAFE=1"),
                    Some(&version)
                )
                .is_ok()
        );
        let err = baseline
            .check_build(
                "3.51.3",
                options("ENABLE_SESSION,ENABLE_UNLOCK_NOTIFY,THREADSAFE=1"),
                Some(&version),
            )
            .expect_err("another build")
            .to_string();
        assert!(
            err.contains("only it has [\"ENABLE_UNLOCK_NOTIFY\"]"),
            "{err}"
        );
        assert!(
            baseline
                .check_build(
                    "3.51.3",
                    options("ENABLE_SESSION,THREADSAFE=1"),
                    Some(&Json::from("3.50.0"))
                )
                .is_err()
        );
        assert!(
            baseline
                .check_build("3.51.3", None, Some(&version))
                .is_err()
        );
    }
}
