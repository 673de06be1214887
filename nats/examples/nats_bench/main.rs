//! Benchmark: one-row transactions replicated through NATS JetStream on loopback, by liteorm
//! and by a raw JetStream pipeline in the same run. Prints JSON lines: one per scenario and
//! round, then per implementation and scenario the median and best over the rounds, then the
//! liteorm/raw ratios.
//!
//! Run with `cargo run --release -p liteorm-nats --example nats_bench -- [--txns N]
//! [--rounds R] [--rate PER_SEC] [--impl liteorm|raw|both] [--synchronous normal|full]
//! [--only record_only|drain|burst|paced] [--url nats://127.0.0.1:4222]`. `--only` runs one
//! scenario (to profile it; `paced` then needs `--rate`). Without `--url` it starts its own `nats-server -js` on a free
//! 127.0.0.1 port with a temporary store, and stops it at the end.
//!
//! Implementations (`liteorm.rs`, `raw.rs`): liteorm records each transaction with
//! `ChangeLog::record` and replicates it with a `Publisher` and a `Follower`; raw publishes the
//! same one-row changesets (captured once before the rounds) with async-nats, pipelined, and
//! applies them with `sqlite3changeset_apply`, one transaction per fetched batch.
//!
//! Scenarios: `record_only` (liteorm only) records N transactions with nothing replicating them;
//! `drain` (liteorm only) records them before its publisher and follower start, and times the
//! transport and the replica alone, as raw's `burst` does (the headline ratio is `drain` over
//! raw's `burst`); `burst` sends N back to back (throughput; the lag includes the queue that builds up);
//! `paced` sends N at a fixed rate, by default half of liteorm's median burst rate of this run
//! (the lag of one transaction on its own), each recorded live (raw: on a raw primary, with a
//! session object and a log row); `paced_transport` (raw only) paces the captured changesets.
//! Rounds are interleaved: every burst round runs both implementations (alternating which goes
//! first), then every paced round does.

mod ffi;
mod liteorm;
mod raw;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use liteorm_nats::async_nats;
use serde_json::{Value as Json, json};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The replicated table, on every primary and replica.
pub(crate) const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL)";

/// The row transaction `i` inserts (both implementations): `(i, 7 i)`.
pub(crate) fn row(i: u64) -> Result<(i64, i64), BoxError> {
    let id = i64::try_from(i)?;
    Ok((id, id * 7))
}

/// What the replica's `t` must hold after `txns` transactions: `count(*)` and `sum(v)`.
pub(crate) fn expected_content(txns: u64) -> Result<(i64, i64), BoxError> {
    let n = i64::try_from(txns)?;
    Ok((n, 7 * n * (n - 1) / 2))
}

/// `synchronous` of every database (primaries and replicas, both implementations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Synchronous {
    /// `NORMAL`: in WAL mode, the WAL is synced at checkpoints, not at every commit (the
    /// `replication` workload's `--db file` setting).
    Normal,
    /// `FULL`: the WAL is synced at every commit (sqlx's default, so `SqliteSession::open`'s).
    Full,
}

impl Synchronous {
    fn name(self) -> &'static str {
        match self {
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        }
    }
}

/// Which implementations run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impls {
    Liteorm,
    Raw,
    Both,
}

struct Options {
    txns: u64,
    rounds: usize,
    rate: Option<f64>,
    impls: Impls,
    synchronous: Synchronous,
    only: Option<&'static str>,
    url: Option<String>,
}

/// The scenarios, in the order they run.
const MODES: [&str; 5] = ["record_only", "drain", "burst", "paced", "paced_transport"];

fn options() -> Result<Options, BoxError> {
    let mut opts = Options {
        txns: 2000,
        rounds: 3,
        rate: None,
        impls: Impls::Both,
        synchronous: Synchronous::Normal,
        only: None,
        url: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--txns" => opts.txns = value()?.parse()?,
            "--rounds" => opts.rounds = value()?.parse()?,
            "--rate" => opts.rate = Some(value()?.parse()?),
            "--impl" => {
                opts.impls = match value()?.as_str() {
                    "liteorm" => Impls::Liteorm,
                    "raw" => Impls::Raw,
                    "both" => Impls::Both,
                    other => return Err(format!("--impl {other}: liteorm, raw or both").into()),
                }
            }
            "--synchronous" => {
                opts.synchronous = match value()?.as_str() {
                    "normal" => Synchronous::Normal,
                    "full" => Synchronous::Full,
                    other => return Err(format!("--synchronous {other}: normal or full").into()),
                }
            }
            "--only" => {
                let mode = value()?;
                opts.only = Some(
                    MODES
                        .into_iter()
                        .find(|m| *m == mode)
                        .ok_or(format!("--only {mode}: one of {MODES:?}"))?,
                );
            }
            "--url" => opts.url = Some(value()?),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if opts.txns == 0 || opts.rounds == 0 {
        return Err("--txns and --rounds must be positive".into());
    }
    if opts.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("--rate must be positive".into());
    }
    if opts.only == Some("paced") && opts.rate.is_none() {
        return Err("--only paced needs --rate (there is no burst to take it from)".into());
    }
    Ok(opts)
}

/// A `nats-server -js` on a free loopback port; killed on drop.
struct Server {
    child: Child,
    url: String,
    _store: tempfile::TempDir,
}

impl Server {
    fn start() -> Result<Server, BoxError> {
        let store = tempfile::tempdir()?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let binary = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .unwrap_or("nats-server");
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start nats-server ({e}); install it: apt-get install nats-server")
            })?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if Instant::now() > deadline {
                return Err("nats-server did not listen within 15 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Server {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Per transaction (index `seq - 1`), when something happened to it; shared between tasks.
#[derive(Clone)]
pub(crate) struct Stamps(Arc<Mutex<Vec<Option<Instant>>>>);

impl Stamps {
    pub(crate) fn new(txns: u64) -> Result<Stamps, BoxError> {
        Ok(Stamps(Arc::new(Mutex::new(vec![
            None;
            usize::try_from(txns)?
        ]))))
    }

    /// Stamps seqs `from..=to` (1-based) with `at`; seqs beyond the run are ignored.
    pub(crate) fn stamp(&self, from: u64, to: u64, at: Instant) {
        let mut slots = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for seq in from..=to {
            if let Some(slot) = usize::try_from(seq.saturating_sub(1))
                .ok()
                .filter(|_| seq > 0)
                .and_then(|i| slots.get_mut(i))
            {
                *slot = Some(at);
            }
        }
    }

    /// Per transaction stamped on both sides, `later - self` in milliseconds, sorted.
    pub(crate) fn lags_to(&self, later: &Stamps) -> Vec<f64> {
        let from = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let to = later.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut lags: Vec<f64> = from
            .iter()
            .zip(to.iter())
            .filter_map(|(a, b)| Some(b.as_ref()?.saturating_duration_since(*a.as_ref()?)))
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        lags.sort_by(f64::total_cmp);
        lags
    }
}

/// What one scenario measured.
pub(crate) struct Run {
    /// Transactions recorded (liteorm) or handed to the client (raw) per second; `None` for
    /// `drain`, recorded before the timer.
    pub(crate) source_tps: Option<f64>,
    /// From the first transaction to the last one committed on the replica; `None` for
    /// `record_only`.
    pub(crate) end_to_end: Option<Duration>,
    /// Sorted lags in milliseconds (empty for `record_only`).
    pub(crate) lags: Vec<f64>,
}

/// Nearest-rank percentile of sorted `values`, `per_mille` / 1000.
fn percentile(values: &[f64], per_mille: usize) -> Option<f64> {
    let i = (values.len().saturating_sub(1) * per_mille).div_ceil(1000);
    values.get(i).copied()
}

/// The median of `values` (mean of the two middle ones for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// One scenario's figures, as they go into its JSON line.
#[derive(Clone, Copy)]
struct Figures {
    source_tps: Option<f64>,
    end_to_end_tps: Option<f64>,
    lag_p50_ms: Option<f64>,
    lag_p99_ms: Option<f64>,
    lag_max_ms: Option<f64>,
}

impl Figures {
    fn of(run: &Run, txns: u64) -> Figures {
        Figures {
            source_tps: run.source_tps,
            end_to_end_tps: run.end_to_end.map(|d| txns as f64 / d.as_secs_f64()),
            lag_p50_ms: percentile(&run.lags, 500),
            lag_p99_ms: percentile(&run.lags, 990),
            lag_max_ms: percentile(&run.lags, 1000),
        }
    }
}

/// Every round's figures, by implementation and scenario.
#[derive(Default)]
struct Results(Vec<(&'static str, &'static str, Figures)>);

impl Results {
    fn of(&self, imp: &str, mode: &str) -> Vec<Figures> {
        self.0
            .iter()
            .filter(|(i, m, _)| *i == imp && *m == mode)
            .map(|(_, _, f)| *f)
            .collect()
    }
}

/// The run's fixed settings, repeated in every line.
struct Context<'a> {
    js: &'a async_nats::jetstream::Context,
    txns: u64,
    synchronous: Synchronous,
}

impl Context<'_> {
    fn line(&self, imp: &str, mode: &str) -> serde_json::Map<String, Json> {
        let mut line = serde_json::Map::new();
        line.insert("bench".into(), json!("nats_replication"));
        line.insert("impl".into(), json!(imp));
        line.insert("mode".into(), json!(mode));
        line.insert("txns".into(), json!(self.txns));
        line.insert("synchronous".into(), json!(self.synchronous.name()));
        line
    }

    /// Runs one scenario of one implementation, prints its line and keeps its figures.
    async fn run(
        &self,
        results: &mut Results,
        imp: &'static str,
        mode: &'static str,
        round: usize,
        rate: Option<f64>,
        changesets: &[bytes::Bytes],
    ) -> Result<(), BoxError> {
        let name = format!("{imp}_{mode}_{round}");
        let run = match (imp, mode) {
            ("liteorm", "record_only") => liteorm::record_only(self.txns, self.synchronous).await?,
            ("liteorm", _) => {
                let load = match mode {
                    "drain" => liteorm::Load::Backlog,
                    _ => liteorm::Load::Live(rate),
                };
                liteorm::scenario(self.js, &name, self.txns, load, self.synchronous).await?
            }
            (_, mode) => {
                let source = if mode == "paced" {
                    raw::Source::Recorded
                } else {
                    raw::Source::Captured
                };
                raw::scenario(self.js, &name, changesets, rate, source, self.synchronous).await?
            }
        };
        let figures = Figures::of(&run, self.txns);
        let mut line = self.line(imp, mode);
        line.insert("round".into(), json!(round));
        line.insert("rate_tps".into(), json!(rate));
        line.insert("source_tps".into(), json!(figures.source_tps));
        if mode != "record_only" {
            line.insert("end_to_end_tps".into(), json!(figures.end_to_end_tps));
            line.insert("lag_p50_ms".into(), json!(figures.lag_p50_ms));
            line.insert("lag_p99_ms".into(), json!(figures.lag_p99_ms));
            line.insert("lag_max_ms".into(), json!(figures.lag_max_ms));
            line.insert("lag_samples".into(), json!(run.lags.len()));
        }
        println!("{}", Json::Object(line));
        results.0.push((imp, mode, figures));
        Ok(())
    }

    /// The line of medians and bests over the rounds of one implementation and scenario.
    fn summary(&self, results: &Results, imp: &str, mode: &str, rate: Option<f64>) -> Option<Json> {
        let rounds = results.of(imp, mode);
        if rounds.is_empty() {
            return None;
        }
        let mut line = self.line(imp, mode);
        line.insert("stat".into(), json!("summary"));
        line.insert("rounds".into(), json!(rounds.len()));
        if mode == "paced" {
            line.insert("rate_tps".into(), json!(rate));
        }
        // Best: the highest rate, the lowest lag.
        let mut put = |field: &str, get: &dyn Fn(&Figures) -> Option<f64>, higher: bool| {
            let values: Vec<f64> = rounds.iter().filter_map(get).collect();
            let best = values
                .iter()
                .copied()
                .reduce(|a, b| if (b > a) == higher { b } else { a });
            line.insert(format!("{field}_median"), json!(median(&values)));
            line.insert(format!("{field}_best"), json!(best));
        };
        put("source_tps", &|f| f.source_tps, true);
        if mode != "record_only" {
            put("end_to_end_tps", &|f| f.end_to_end_tps, true);
            put("lag_p50_ms", &|f| f.lag_p50_ms, false);
            put("lag_p99_ms", &|f| f.lag_p99_ms, false);
        }
        Some(Json::Object(line))
    }
}

/// liteorm/raw of the two figures: the end-to-end rate (target ≥ 0.80) and paced lag
/// p99 (target ≤ 2), each of the medians, of the bests, and the median of the per-round ratios.
///
/// The rate's headline is liteorm's `drain` over raw's `burst`: raw's changesets exist before
/// its timer, and so do liteorm's log entries in `drain`, so both time the transport and the
/// replica alone. liteorm's `burst` also records its transactions on the same two cores while
/// they are replicated, which raw's `burst` does not: it stays as a secondary figure.
///
/// The paced lag's headline is against raw's `paced`, which records each transaction live on a
/// raw primary as liteorm does (the recording's CPU on the same two cores delays the transport
/// of both); `paced_lag_p99_vs_transport_*` is against raw's `paced_transport`, whose
/// changesets exist before the timer.
fn ratio_line(ctx: &Context<'_>, results: &Results, rate: Option<f64>) -> Json {
    let pair = |mode: &str, raw_mode: &str, get: &dyn Fn(&Figures) -> Option<f64>, higher: bool| {
        let lite: Vec<f64> = results.of("liteorm", mode).iter().filter_map(get).collect();
        let raw: Vec<f64> = results.of("raw", raw_mode).iter().filter_map(get).collect();
        let best = |v: &[f64]| {
            v.iter()
                .copied()
                .reduce(|a, b| if (b > a) == higher { b } else { a })
        };
        let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let paired: Vec<f64> = lite.iter().zip(&raw).map(|(l, r)| l / r).collect();
        (
            div(median(&lite), median(&raw)),
            div(best(&lite), best(&raw)),
            median(&paired),
        )
    };
    let burst = pair("burst", "burst", &|f| f.end_to_end_tps, true);
    // liteorm's `drain` is measured against raw's `burst` (see above).
    let drain = pair("drain", "burst", &|f| f.end_to_end_tps, true);
    let p99 = pair("paced", "paced", &|f| f.lag_p99_ms, false);
    let p50 = pair("paced", "paced", &|f| f.lag_p50_ms, false);
    let transport_p99 = pair("paced", "paced_transport", &|f| f.lag_p99_ms, false);
    let mut line = ctx.line("liteorm/raw", "ratio");
    line.insert("paced_rate_tps".into(), json!(rate));
    line.insert("drain_over_raw_burst_tps_median".into(), json!(drain.0));
    line.insert("drain_over_raw_burst_tps_best".into(), json!(drain.1));
    line.insert(
        "drain_over_raw_burst_tps_paired_median".into(),
        json!(drain.2),
    );
    line.insert("burst_end_to_end_tps_median".into(), json!(burst.0));
    line.insert("burst_end_to_end_tps_best".into(), json!(burst.1));
    line.insert("burst_end_to_end_tps_paired_median".into(), json!(burst.2));
    line.insert("paced_lag_p99_median".into(), json!(p99.0));
    line.insert("paced_lag_p99_best".into(), json!(p99.1));
    line.insert("paced_lag_p99_paired_median".into(), json!(p99.2));
    line.insert("paced_lag_p50_median".into(), json!(p50.0));
    line.insert("paced_lag_p50_best".into(), json!(p50.1));
    line.insert(
        "paced_lag_p99_vs_transport_median".into(),
        json!(transport_p99.0),
    );
    line.insert(
        "paced_lag_p99_vs_transport_best".into(),
        json!(transport_p99.1),
    );
    line.insert("rate_target_met".into(), json!(drain.0.map(|r| r >= 0.80)));
    line.insert("paced_target_met".into(), json!(p99.0.map(|r| r <= 2.0)));
    Json::Object(line)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let opts = options()?;
    let server = match &opts.url {
        Some(_) => None,
        None => Some(Server::start()?),
    };
    let url = match (&opts.url, &server) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => server.url.clone(),
        (None, None) => return Err("no server".into()),
    };
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await?);
    let ctx = Context {
        js: &js,
        txns: opts.txns,
        synchronous: opts.synchronous,
    };
    let impls: &[&'static str] = match opts.impls {
        Impls::Liteorm => &["liteorm"],
        Impls::Raw => &["raw"],
        Impls::Both => &["liteorm", "raw"],
    };
    // The raw side's changesets: captured once, as liteorm's log records them.
    let changesets = if impls.contains(&"raw") {
        raw::capture(opts.txns).await?
    } else {
        Vec::new()
    };
    let mut results = Results::default();
    // Alternate which implementation goes first, so that drift of the machine hits both.
    let order = |round: usize| -> Vec<&'static str> {
        let mut order = impls.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        order
    };
    let runs = |mode: &str| opts.only.is_none_or(|only| only == mode);
    for round in 0..opts.rounds {
        if impls.contains(&"liteorm") {
            for mode in ["record_only", "drain"].into_iter().filter(|m| runs(m)) {
                ctx.run(&mut results, "liteorm", mode, round, None, &[])
                    .await?;
            }
        }
        for imp in order(round).into_iter().filter(|_| runs("burst")) {
            ctx.run(&mut results, imp, "burst", round, None, &changesets)
                .await?;
        }
    }
    // Half of liteorm's own maximum (its median burst rate), unless given.
    let rate = match opts.rate {
        Some(rate) => Some(rate),
        None => {
            let source = if impls.contains(&"liteorm") {
                "liteorm"
            } else {
                "raw"
            };
            let bursts: Vec<f64> = results
                .of(source, "burst")
                .iter()
                .filter_map(|f| f.end_to_end_tps)
                .collect();
            median(&bursts).map(|tps| tps / 2.0)
        }
    };
    for round in (0..opts.rounds).filter(|_| runs("paced")) {
        for imp in order(round) {
            ctx.run(&mut results, imp, "paced", round, rate, &changesets)
                .await?;
            if imp == "raw" {
                ctx.run(
                    &mut results,
                    imp,
                    "paced_transport",
                    round,
                    rate,
                    &changesets,
                )
                .await?;
            }
        }
    }
    for imp in impls {
        for mode in MODES {
            if let Some(line) = ctx.summary(&results, imp, mode, rate) {
                println!("{line}");
            }
        }
    }
    if opts.impls == Impls::Both {
        println!("{}", ratio_line(&ctx, &results, rate));
    }
    Ok(())
}
