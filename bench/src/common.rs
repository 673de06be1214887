//! What both implementations share: options, the table's deterministic rows, statistics
//! (median, nearest-rank percentiles), the content fingerprint and the JSON line writer.

use std::cell::RefCell;
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
    /// The JSON line of each repetition run so far.
    pub(crate) lines: RefCell<Vec<serde_json::Map<String, Json>>>,
}

impl Baseline {
    /// Runs one repetition and keeps its line.
    fn run_rep(&self) -> BenchResult<()> {
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
            Json::Object(fields) => {
                self.lines.borrow_mut().push(fields);
                Ok(())
            }
            other => Err(format!("the baseline printed {other}, not an object").into()),
        }
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
                baseline.run_rep()?;
            }
        }
        Ok((lites, raws))
    }

    /// Prints the liteorm and raw lines that were run, then (when both were) the ratio line
    /// with liteorm/raw for each of `keys`; with `--baseline`, then the rusqlite line (medians
    /// over its repetitions) and the raw/rusqlite and liteorm/rusqlite ratios of `keys`. `size` is `("rows", N)` or `("iters", K)`.
    pub(crate) fn print(
        &self,
        cmd: &str,
        size: (&'static str, u64),
        lite: Option<Line>,
        raw: Option<Line>,
        keys: &[&'static str],
    ) {
        for line in lite.iter().chain(&raw) {
            line.print();
        }
        if let (Some(lite), Some(raw)) = (&lite, &raw) {
            let mut ratio = Line::new(cmd, "ratio", self);
            ratio.int(size.0, size.1);
            for key in keys {
                ratio.ratio(key, lite.get(key) / raw.get(key));
            }
            ratio.print();
        }
        let Some(baseline) = self.baseline.as_ref().and_then(Baseline::median_line) else {
            return;
        };
        baseline.print();
        for (side, line) in [("raw", &raw), ("liteorm", &lite)] {
            if let Some(line) = line {
                let mut ratio = Line::new(cmd, &format!("{side}/rusqlite"), self);
                ratio.int(size.0, size.1);
                for key in keys {
                    ratio.ratio(key, line.get(key) / baseline.get(key));
                }
                ratio.print();
            }
        }
    }
}

/// A line for the repetitions of one side, if it ran.
pub(crate) fn line_if<R>(reps: &[R], line: impl FnOnce(&[R]) -> Line) -> Option<Line> {
    (!reps.is_empty()).then(|| line(reps))
}
