//! Benchmark: one-row transactions recorded on a primary and applied on a follower through NATS
//! JetStream on loopback. Prints one JSON line per scenario: end-to-end throughput and the lag
//! from the primary's commit to the replica's commit (p50, p99, max).
//!
//! Run with `cargo run --release -p liteorm-nats --example nats_bench -- [--txns N]
//! [--rate PER_SEC] [--url nats://127.0.0.1:4222]`. Without `--url` it starts its own
//! `nats-server -js` on a free 127.0.0.1 port with a temporary store, and stops it at the end.
//!
//! Scenarios: `record_only` records N transactions with nothing replicating them (the
//! baseline), `burst` records N back to back while they are published and applied (throughput;
//! the lag includes the queue that builds up), `paced` records N at a fixed rate below
//! saturation (the lag of one transaction on its own).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use liteorm_core::Session;
use liteorm_nats::{ChangeStream, Follower, NatsSource, Publisher, async_nats};
use liteorm_replication::{ChangeLog, Error, Meta, Replica};
use liteorm_sqlite::SqliteSession;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Options {
    txns: u64,
    rate: u64,
    url: Option<String>,
}

fn options() -> Result<Options, BoxError> {
    let mut opts = Options {
        txns: 2000,
        rate: 500,
        url: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--txns" => opts.txns = value()?.parse()?,
            "--rate" => opts.rate = value()?.parse()?,
            "--url" => opts.url = Some(value()?),
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if opts.txns == 0 || opts.rate == 0 {
        return Err("--txns and --rate must be positive".into());
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

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL)";

/// Runs one scenario on fresh databases and a fresh stream; returns its JSON line.
async fn scenario(
    js: &async_nats::jetstream::Context,
    mode: &str,
    txns: u64,
    rate: Option<u64>,
) -> Result<serde_json::Value, BoxError> {
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name).display().to_string();
    let primary = SqliteSession::open(&path("primary.db")).await?;
    let replica_db = SqliteSession::open(&path("replica.db")).await?;
    for db in [&primary, &replica_db] {
        db.execute_batch(SCHEMA).await?;
    }
    let stream = ChangeStream::new(&format!("bench_{mode}"))?;
    let (wake, woken) = tokio::sync::mpsc::channel(1024);
    let log = ChangeLog::open(&primary).await?.publish_to(wake);
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await?
        .wake_on(woken);
    let source = NatsSource::new(js.clone(), &stream, "bench")?;
    let mut follower = Follower::new(Replica::open(&replica_db).await?, source).await?;

    // Commit time on the primary and on the replica, per seq (index seq - 1).
    let slots = usize::try_from(txns)?;
    let recorded = Arc::new(Mutex::new(vec![None::<Instant>; slots]));
    let applied = Arc::new(Mutex::new(vec![None::<Instant>; slots]));
    let mut progress = follower.progress();
    let stamper = tokio::spawn({
        let applied = Arc::clone(&applied);
        async move {
            let mut seen = 0;
            while progress.changed().await.is_ok() {
                let now = Instant::now();
                let upto = *progress.borrow_and_update();
                let mut applied = applied.lock().unwrap_or_else(|p| p.into_inner());
                for seq in seen + 1..=upto {
                    if let Some(slot) = usize::try_from(seq - 1)
                        .ok()
                        .and_then(|i| applied.get_mut(i))
                    {
                        *slot = Some(now);
                    }
                }
                seen = upto;
                if usize::try_from(upto).is_ok_and(|u| u >= applied.len()) {
                    break;
                }
            }
        }
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop_signal = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut publishing = tokio::spawn({
        let stopped = stopped.clone();
        async move { publisher.run(stop_signal(stopped)).await }
    });
    let mut following = tokio::spawn({
        let stopped = stopped.clone();
        async move { follower.run(stop_signal(stopped)).await }
    });

    let start = Instant::now();
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r as f64));
    for i in 0..txns {
        if let Some(interval) = interval {
            let due = start + interval * u32::try_from(i)?;
            tokio::time::sleep_until(due.into()).await;
        }
        let id = i64::try_from(i)?;
        let seq = log
            .record(Meta::actor("bench"), move |s| async move {
                s.execute("INSERT INTO t VALUES (?, ?)", &[id.into(), (id * 7).into()])
                    .await?;
                Ok::<_, Error>(())
            })
            .await?
            .ok_or("the transaction changed nothing")?;
        let now = Instant::now();
        let mut recorded = recorded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = usize::try_from(seq - 1)
            .ok()
            .and_then(|i| recorded.get_mut(i))
        {
            *slot = Some(now);
        }
    }
    let recorded_in = start.elapsed();
    // Either the follower applies everything, or one of the loops stopped with an error.
    tokio::select! {
        stamped = stamper => stamped?,
        published = &mut publishing => return Err(format!("publisher stopped: {published:?}").into()),
        followed = &mut following => return Err(format!("follower stopped: {followed:?}").into()),
        () = tokio::time::sleep(Duration::from_secs(60)) => {
            let state = diagnose(js, &stream, &primary, &replica_db).await;
            return Err(format!("the follower did not apply everything within 60 s: {state}").into());
        }
    }
    let total = start.elapsed();
    stop.send_replace(true);
    publishing.await??;
    following.await??;

    let recorded = recorded.lock().unwrap_or_else(|p| p.into_inner());
    let applied = applied.lock().unwrap_or_else(|p| p.into_inner());
    let mut lags: Vec<f64> = recorded
        .iter()
        .zip(applied.iter())
        .filter_map(|(r, a)| Some(a.as_ref()?.saturating_duration_since(*r.as_ref()?)))
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    lags.sort_by(f64::total_cmp);
    // Nearest-rank percentile, `per_mille` / 1000.
    let pct = |per_mille: usize| {
        let i = (lags.len().saturating_sub(1) * per_mille).div_ceil(1000);
        lags.get(i).copied().unwrap_or(f64::NAN)
    };
    Ok(serde_json::json!({
        "bench": "nats_replication",
        "mode": mode,
        "txns": txns,
        "target_rate_tps": rate,
        "record_tps": txns as f64 / recorded_in.as_secs_f64(),
        "end_to_end_tps": txns as f64 / total.as_secs_f64(),
        "seconds": total.as_secs_f64(),
        "lag_p50_ms": pct(500),
        "lag_p99_ms": pct(990),
        "lag_max_ms": pct(1000),
        "lag_samples": lags.len(),
    }))
}

/// Where each side is, to tell which one stalled.
async fn diagnose(
    js: &async_nats::jetstream::Context,
    stream: &ChangeStream,
    primary: &SqliteSession,
    replica_db: &SqliteSession,
) -> String {
    let one = |db: &SqliteSession, sql: &'static str| {
        let db = db.clone();
        async move {
            match db.query(sql, &[]).await {
                Ok(rows) => rows
                    .first()
                    .map_or("-".into(), |r| format!("{:?}", r.values())),
                Err(e) => e.to_string(),
            }
        }
    };
    let log = one(primary, "SELECT max(seq) FROM liteorm_changes").await;
    let outbox = one(primary, "SELECT published_seq FROM liteorm_outbox").await;
    let replica = one(replica_db, "SELECT last_seq FROM liteorm_replica").await;
    let (stream_state, consumer) = match js.get_stream(stream.name()).await {
        Ok(handle) => {
            let consumer = match handle.consumer_info("bench").await {
                Ok(c) => format!(
                    "delivered {:?} ack_floor {:?} ack_pending {} pending {} waiting {} redelivered {}",
                    c.delivered.stream_sequence,
                    c.ack_floor.stream_sequence,
                    c.num_ack_pending,
                    c.num_pending,
                    c.num_waiting,
                    c.num_redelivered
                ),
                Err(e) => e.to_string(),
            };
            (
                format!("{:?}", handle.cached_info().state.last_sequence),
                consumer,
            )
        }
        Err(e) => (e.to_string(), String::new()),
    };
    format!(
        "log {log}, outbox {outbox}, stream last {stream_state}, replica {replica}, consumer {consumer}"
    )
}

/// The baseline: the same transactions recorded with nothing replicating them.
async fn record_only(txns: u64) -> Result<serde_json::Value, BoxError> {
    let dir = tempfile::tempdir()?;
    let primary = SqliteSession::open(&dir.path().join("primary.db").display().to_string()).await?;
    primary.execute_batch(SCHEMA).await?;
    let log = ChangeLog::open(&primary).await?;
    let start = Instant::now();
    for i in 0..txns {
        let id = i64::try_from(i)?;
        log.record(Meta::actor("bench"), move |s| async move {
            s.execute("INSERT INTO t VALUES (?, ?)", &[id.into(), (id * 7).into()])
                .await?;
            Ok::<_, Error>(())
        })
        .await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "bench": "nats_replication",
        "mode": "record_only",
        "txns": txns,
        "record_tps": txns as f64 / seconds,
        "seconds": seconds,
    }))
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
    println!("{}", record_only(opts.txns).await?);
    for (mode, rate) in [("burst", None), ("paced", Some(opts.rate))] {
        let line = scenario(&js, mode, opts.txns, rate).await?;
        println!("{line}");
    }
    Ok(())
}
