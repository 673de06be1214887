//! The soak: writers record through the change log of a file primary; a publisher sends the log
//! to JetStream; a local replica follows the log table and two follower processes follow the
//! stream, while faults are injected one at a time. At the end every replica must equal the
//! primary, the log must be gapless and every unit of work applied exactly once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use liteorm_core::{Session, Value};
use liteorm_nats::{ChangeStream, Publisher, snapshot};
use liteorm_replication::{ChangeLog, LogTableSource, Meta, Replica};
use liteorm_sqlite::SqliteSession;
use serde_json::{Value as Json, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::figures::{Sample, Samples};
use crate::follower::{STOPPED_AT, STOPPED_EXIT, connect, open_db};
use crate::server::NatsServer;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// The replicated tables: each writer counts its units of work (so one applied twice or lost
/// shows) and inserts and deletes items; `planted` is only written to plant conflicts.
const SCHEMA: &str = "
    CREATE TABLE counter(writer INTEGER PRIMARY KEY, n INTEGER NOT NULL);
    CREATE TABLE item(id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, payload TEXT NOT NULL);
    CREATE TABLE planted(id INTEGER PRIMARY KEY, note TEXT NOT NULL);
";
const TABLES: [&str; 3] = ["counter", "item", "planted"];
/// The stream's database name.
const STREAM_DB: &str = "soak";
/// The longest a replica may take to recover from one fault.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// What to run.
pub(crate) struct Config {
    /// How long the writers write (faults are injected meanwhile).
    pub(crate) duration: Duration,
    /// Concurrent writers.
    pub(crate) writers: usize,
    /// Pause of each writer between two units of work.
    pub(crate) pace: Duration,
    /// `PRAGMA cache_size` of every connection (the followers' too), in KiB; `None`: SQLite's
    /// default, 2 MiB. A small cache fills in the first minutes, so that the whole process's
    /// memory, page caches included, is flat for the rest of the run.
    pub(crate) cache_kib: Option<u64>,
}

/// The kinds of fault, injected in turn.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillFollower,
    RestartNats,
    FillDisk,
    Conflict,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::KillFollower,
        Fault::RestartNats,
        Fault::FillDisk,
        Fault::Conflict,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillFollower => "sigkill_follower",
            Fault::RestartNats => "restart_nats_server",
            Fault::FillDisk => "fill_replica_disk",
            Fault::Conflict => "replica_conflict",
        }
    }
}

/// A replica the soak reads: its name and a session of its own on its file.
struct Watched {
    name: &'static str,
    replica: Replica,
}

/// A follower process and where its output goes.
struct FollowerProcess {
    name: &'static str,
    db: PathBuf,
    log: PathBuf,
    child: Child,
}

struct Soak {
    config: Config,
    dir: PathBuf,
    server: NatsServer,
    primary: SqliteSession,
    log: ChangeLog,
    /// The local replica's connection (to fill its disk) and how often its loop failed.
    local: SqliteSession,
    local_errors: Arc<AtomicU64>,
    followers: Vec<FollowerProcess>,
    /// Follower pids, for the RSS sampler.
    follower_pids: Arc<Mutex<Vec<u32>>>,
    watched: Vec<Watched>,
    in_fault: Arc<AtomicBool>,
    failures: Vec<String>,
    faults: Vec<Json>,
    planted: i64,
}

/// Runs the soak and returns its figures; `failures` in them lists every check that failed.
pub(crate) async fn run(config: Config) -> Result<Json> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let server = NatsServer::start(&dir.join("nats"))?;
    let primary = open(&dir.join("primary.db"), config.cache_kib).await?;
    primary.execute_batch(SCHEMA).await?;
    for w in 0..config.writers {
        primary
            .execute("INSERT INTO counter VALUES (?, 0)", &[int(w)])
            .await?;
    }
    let log = ChangeLog::open(&primary).await?;
    for name in ["local", "follower-a", "follower-b"] {
        snapshot(&primary, &dir.join(format!("{name}.db"))).await?;
    }

    // `stop` ends the writing (and sampling), `shut` the replication once it converged.
    let (stop, stopped) = watch::channel(false);
    let (shut, shut_down) = watch::channel(false);
    let js = connect(&server.url()).await?;
    let stream = ChangeStream::new(STREAM_DB)?;
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone()).await?;
    stream.ensure(&js).await?;
    let publishing = {
        let shut_down = shut_down.clone();
        tokio::spawn(async move { publisher.run(until(shut_down)).await })
    };

    // The local replica: one pinned connection, so that `max_page_count` applies to it.
    let local_db = open(&dir.join("local.db"), config.cache_kib).await?;
    let local_pin = local_db.pin().await?;
    let local = local_pin.session();
    let local_errors = Arc::new(AtomicU64::new(0));
    let following_locally = follow_locally(&primary, &local, &local_errors, shut_down);

    let mut watched = Vec::new();
    for name in ["local", "follower-a", "follower-b"] {
        let session = open(&dir.join(format!("{name}.db")), config.cache_kib).await?;
        watched.push(Watched {
            name,
            replica: Replica::open(&session).await?,
        });
    }
    let mut soak = Soak {
        config,
        dir,
        server,
        primary,
        log,
        local,
        local_errors,
        followers: Vec::new(),
        follower_pids: Arc::new(Mutex::new(Vec::new())),
        watched,
        in_fault: Arc::new(AtomicBool::new(false)),
        failures: Vec::new(),
        faults: Vec::new(),
        planted: 0,
    };
    for name in ["follower-a", "follower-b"] {
        let process = soak.spawn_follower(name)?;
        soak.followers.push(process);
    }
    soak.update_pids();

    let started = Instant::now();
    let writing: Vec<JoinHandle<Result<u64>>> = (0..soak.config.writers)
        .map(|w| writer(soak.log.clone(), w, soak.config.pace, stopped.clone()))
        .collect();
    let sampling = soak.sample(stopped.clone());

    // Faults in turn, one at a time, each followed by a quiet spell.
    let quiet = (soak.config.duration / 30).clamp(Duration::from_secs(1), Duration::from_secs(25));
    let mut turn = 0;
    tokio::time::sleep(quiet).await;
    while started.elapsed() + quiet * 4 < soak.config.duration {
        let fault = Fault::ALL[turn % Fault::ALL.len()];
        let record = soak.inject(fault, turn, started).await;
        soak.faults.push(record);
        turn += 1;
        tokio::time::sleep(quiet).await;
    }
    tokio::time::sleep(soak.config.duration.saturating_sub(started.elapsed())).await;

    // Stop writing; everything must converge.
    let mut transactions = 0;
    let mut per_writer = Vec::new();
    stop.send_replace(true);
    // The writers and the sampler see the flag; the replicas keep following until converged.
    for handle in writing {
        let n = handle.await??;
        per_writer.push(n);
        transactions += n;
    }
    let elapsed = started.elapsed();
    let last = soak.log.last_seq().await?;
    eprintln!("soak: writers stopped at seq {last}; waiting for the replicas");
    let converge_start = Instant::now();
    for i in 0..soak.watched.len() {
        if soak.wait_applied(i, last).await.is_none() {
            let name = soak.watched[i].name;
            soak.failures.push(format!(
                "{name} did not reach seq {last} within {RECOVERY_TIMEOUT:?}"
            ));
        }
    }
    let converge_ms = millis(converge_start.elapsed());
    shut.send_replace(true);
    let samples = sampling.await?;
    if let Some(growing) = samples.growing() {
        soak.failures.push(growing);
    }
    let published = publishing.await??;
    let _ = following_locally.await;
    for follower in &mut soak.followers {
        follower.child.kill().ok();
        follower.child.wait().ok();
    }
    drop(local_pin);

    soak.check_end(last, &per_writer, transactions).await?;
    Ok(json!({
        "ok": soak.failures.is_empty(),
        "failures": soak.failures,
        "seconds": elapsed.as_secs_f64().round(),
        "writers": soak.config.writers,
        "transactions": transactions,
        "tx_per_sec": (transactions as f64 / elapsed.as_secs_f64()).round(),
        "log_last_seq": last,
        "published_seq": published.published_seq,
        "faults_injected": soak.faults.len(),
        "faults": soak.faults,
        "converge_after_stop_ms": converge_ms,
        "local_replica_errors": soak.local_errors.load(Ordering::Relaxed),
        "rss": samples.rss(),
        "lag": samples.lag(),
    }))
}

/// Completes once `stopped` says so (or its sender is gone).
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

fn int(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn open(path: &Path, cache_kib: Option<u64>) -> Result<SqliteSession> {
    Ok(open_db(path.to_str().ok_or("a non-UTF-8 temp path")?, cache_kib).await?)
}

/// Writer `w`: units of work until stopped; returns how many committed. Each bumps the
/// writer's counter and inserts an item; every other one also deletes the writer's oldest item.
fn writer(
    log: ChangeLog,
    w: usize,
    pace: Duration,
    stopped: watch::Receiver<bool>,
) -> JoinHandle<Result<u64>> {
    tokio::spawn(async move {
        let mut committed = 0_u64;
        let mut failures = 0_u32;
        while !*stopped.borrow() {
            let k = committed;
            let meta = Meta::actor(format!("writer-{w}")).reason(format!("unit {k}"));
            let result = log
                .record(meta, move |s| async move {
                    s.execute("UPDATE counter SET n = n + 1 WHERE writer = ?", &[int(w)])
                        .await?;
                    s.execute(
                        "INSERT INTO item(writer, payload) VALUES (?, ?)",
                        &[int(w), Value::Text(format!("writer {w} unit {k}"))],
                    )
                    .await?;
                    if k % 2 == 1 {
                        s.execute(
                            "DELETE FROM item WHERE id = \
                             (SELECT min(id) FROM item WHERE writer = ?)",
                            &[int(w)],
                        )
                        .await?;
                    }
                    Ok::<_, liteorm_replication::Error>(())
                })
                .await;
            match result {
                Ok(Some(_)) => committed += 1,
                Ok(None) => return Err("a unit of work recorded nothing".into()),
                // Busy under contention: the unit did not commit; try again.
                Err(err) if failures < 100 => {
                    failures += 1;
                    eprintln!("soak: writer {w}: {err}; retrying");
                }
                Err(err) => return Err(err.into()),
            }
            tokio::time::sleep(pace).await;
        }
        Ok(committed)
    })
}

/// The local replica's loop: catches up with the primary's log table again and again until
/// shut down; an error (its disk full) is counted and the loop goes on. Nothing is cancelled
/// midway: a catch-up always runs to its end.
fn follow_locally(
    primary: &SqliteSession,
    local: &SqliteSession,
    errors: &Arc<AtomicU64>,
    shut_down: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (primary, local, errors) = (primary.clone(), local.clone(), Arc::clone(errors));
    tokio::spawn(async move {
        let Ok(replica) = Replica::open(&local).await else {
            errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut source = LogTableSource::new(&primary);
        while !*shut_down.borrow() {
            let pause = match replica.catch_up(&mut source).await {
                Ok(_) => Duration::from_millis(20),
                Err(err) => {
                    if errors.fetch_add(1, Ordering::Relaxed) % 20 == 0 {
                        eprintln!("soak: local replica: {err}; following again");
                    }
                    Duration::from_millis(100)
                }
            };
            tokio::time::sleep(pause).await;
        }
    })
}

impl Soak {
    fn spawn_follower(&self, name: &'static str) -> Result<FollowerProcess> {
        let db = self.dir.join(format!("{name}.db"));
        let log = self.dir.join(format!("{name}.out"));
        let child = Command::new(std::env::current_exe()?)
            .arg("follow")
            .arg(self.server.url())
            .arg(STREAM_DB)
            .arg(&db)
            .arg(name)
            .args(self.config.cache_kib.map(|kib| kib.to_string()))
            .stdout(Stdio::from(File::create(&log)?))
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(FollowerProcess {
            name,
            db,
            log,
            child,
        })
    }

    fn update_pids(&self) {
        if let Ok(mut pids) = self.follower_pids.lock() {
            *pids = self.followers.iter().map(|f| f.child.id()).collect();
        }
    }

    /// Reports followers that exited on their own (they never should, but at a planted
    /// conflict) and starts them again.
    fn check_followers(&mut self) -> Result<()> {
        for i in 0..self.followers.len() {
            if let Some(status) = self.followers[i].child.try_wait()? {
                let output = std::fs::read_to_string(&self.followers[i].log).unwrap_or_default();
                let name = self.followers[i].name;
                self.failures
                    .push(format!("{name} exited unexpectedly ({status}): {output}"));
                self.followers[i] = self.spawn_follower(name)?;
            }
        }
        self.update_pids();
        Ok(())
    }

    /// The seq replica `i` has applied.
    async fn applied(&self, i: usize) -> Option<u64> {
        self.watched[i].replica.last_applied().await.ok()
    }

    /// Waits until replica `i` has applied `seq`; how long that took, or `None` on timeout.
    async fn wait_applied(&self, i: usize, seq: u64) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < RECOVERY_TIMEOUT {
            if self.applied(i).await.is_some_and(|applied| applied >= seq) {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }

    /// Injects one fault, waits for the affected replicas to recover, and describes it.
    async fn inject(&mut self, fault: Fault, turn: usize, started: Instant) -> Json {
        // Each fault starts from a steady state: every replica has what the primary had.
        for i in 0..self.watched.len() {
            if let Err(err) = self.recover(i).await {
                self.failures
                    .push(format!("before {}: {err}", fault.name()));
            }
        }
        let at = started.elapsed();
        eprintln!("soak: {:.0} s: {}", at.as_secs_f64(), fault.name());
        self.in_fault.store(true, Ordering::Relaxed);
        let result = match fault {
            Fault::KillFollower => self.kill_follower(turn).await,
            Fault::RestartNats => self.restart_nats().await,
            Fault::FillDisk => self.fill_disk().await,
            Fault::Conflict => self.plant_conflict().await,
        };
        if let Err(err) = self.check_followers() {
            self.failures.push(format!("checking the followers: {err}"));
        }
        self.in_fault.store(false, Ordering::Relaxed);
        eprintln!("soak: {}: {result:?}", fault.name());
        let mut record = json!({ "kind": fault.name(), "at_s": at.as_secs_f64().round() });
        match result {
            Ok(details) => {
                if let (Some(record), Json::Object(details)) = (record.as_object_mut(), details) {
                    record.extend(details);
                }
            }
            Err(err) => {
                let message = format!("{} at {:.0} s: {err}", fault.name(), at.as_secs_f64());
                record["error"] = json!(message.clone());
                self.failures.push(message);
            }
        }
        record
    }

    /// Waits until replica `i` has what the primary has now.
    async fn recover(&self, i: usize) -> Result<u64> {
        let target = self.log.last_seq().await?;
        let took = self.wait_applied(i, target).await.ok_or_else(|| {
            format!(
                "{} did not reach seq {target} within {RECOVERY_TIMEOUT:?}",
                self.watched[i].name
            )
        })?;
        Ok(millis(took))
    }

    /// SIGKILLs a follower (the two in turn), restarts it, and times its catch-up.
    async fn kill_follower(&mut self, turn: usize) -> Result<Json> {
        let f = (turn / Fault::ALL.len()) % self.followers.len();
        self.followers[f].child.kill()?;
        self.followers[f].child.wait()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let name = self.followers[f].name;
        self.followers[f] = self.spawn_follower(name)?;
        self.update_pids();
        let recovery_ms = self.recover(f + 1).await?;
        Ok(json!({ "replica": name, "recovery_ms": recovery_ms }))
    }

    /// SIGKILLs nats-server, starts it again on the same store, and times until both
    /// followers have everything.
    async fn restart_nats(&mut self) -> Result<Json> {
        self.server.restart(Duration::from_millis(500))?;
        let mut recovery_ms = 0;
        for f in 1..=self.followers.len() {
            recovery_ms = recovery_ms.max(self.recover(f).await?);
        }
        Ok(json!({ "replica": "follower-a, follower-b", "recovery_ms": recovery_ms }))
    }

    /// Caps the local replica's file at its current size for a while (its applies fail with
    /// SQLITE_FULL), lifts the cap, and times its catch-up.
    async fn fill_disk(&mut self) -> Result<Json> {
        let errors_before = self.local_errors.load(Ordering::Relaxed);
        let pages: i64 = self.local.query("PRAGMA page_count", &[]).await?[0].try_get(0)?;
        self.local
            .query(&format!("PRAGMA max_page_count = {pages}"), &[])
            .await?;
        // Full until an apply failed (free pages may take writes for a while), at least 2 s.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2)
            || (self.local_errors.load(Ordering::Relaxed) == errors_before
                && start.elapsed() < RECOVERY_TIMEOUT)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.local
            .query("PRAGMA max_page_count = 4294967294", &[])
            .await?;
        let refused = self.local_errors.load(Ordering::Relaxed) - errors_before;
        if refused == 0 {
            return Err("no apply failed on the capped replica".into());
        }
        let recovery_ms = self.recover(0).await?;
        Ok(json!({
            "replica": "local",
            "failed_applies": refused,
            "recovery_ms": recovery_ms,
        }))
    }

    /// Inserts a row into follower-b's replica, then records the same row on the primary: the
    /// follower must stop naming exactly that entry's seq. Then removes the planted row (also
    /// when the check failed, so that the soak goes on), restarts the follower and times its
    /// catch-up.
    async fn plant_conflict(&mut self) -> Result<Json> {
        let f = self.followers.len() - 1;
        self.planted += 1;
        let id = Value::Integer(self.planted);
        let replica_db = open(&self.followers[f].db, self.config.cache_kib).await?;
        replica_db
            .execute(
                "INSERT INTO planted VALUES (?, 'planted on the replica')",
                std::slice::from_ref(&id),
            )
            .await?;
        let row = id.clone();
        let recorded = self
            .log
            .record(
                Meta::actor("soak").reason("planted conflict"),
                |s| async move {
                    s.execute("INSERT INTO planted VALUES (?, 'from the primary')", &[row])
                        .await?;
                    Ok::<_, liteorm_replication::Error>(())
                },
            )
            .await;
        let stop = match recorded {
            Ok(Some(seq)) => self.await_stop(f, seq).await,
            Ok(None) => Err("the conflicting unit of work recorded nothing".into()),
            Err(err) => Err(err.into()),
        };
        replica_db
            .execute("DELETE FROM planted WHERE id = ?", &[id])
            .await?;
        let name = self.followers[f].name;
        if self.followers[f].child.try_wait()?.is_some() {
            self.followers[f] = self.spawn_follower(name)?;
            self.update_pids();
        }
        let (seq, stopped_ms) = stop?;
        let recovery_ms = self.recover(f + 1).await?;
        Ok(json!({
            "replica": name,
            "conflict_seq": seq,
            "stopped_at_seq": seq,
            "stopped_after_ms": stopped_ms,
            "recovery_ms": recovery_ms,
        }))
    }

    /// Waits for follower `f` to stop at the conflict of entry `seq`; checks that it names
    /// exactly that seq, and returns it with how long the stop took.
    async fn await_stop(&mut self, f: usize, seq: u64) -> Result<(u64, u64)> {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.followers[f].child.try_wait()? {
                break status;
            }
            if start.elapsed() > RECOVERY_TIMEOUT {
                return Err(format!(
                    "the follower did not stop at seq {seq} within {RECOVERY_TIMEOUT:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let stopped_ms = millis(start.elapsed());
        let output = std::fs::read_to_string(&self.followers[f].log)?;
        let reported: Option<u64> = output
            .lines()
            .find_map(|l| l.strip_prefix(STOPPED_AT))
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok());
        if status.code() != Some(i32::from(STOPPED_EXIT)) || reported != Some(seq) {
            return Err(format!(
                "expected the follower to stop at seq {seq}, it exited ({status}) saying: {output}"
            )
            .into());
        }
        Ok((seq, stopped_ms))
    }

    /// Samples memory and lag every 500 ms until stopped.
    fn sample(&self, stopped: watch::Receiver<bool>) -> JoinHandle<Samples> {
        let log = self.log.clone();
        let replicas: Vec<Replica> = self.watched.iter().map(|w| w.replica.clone()).collect();
        let pids = Arc::clone(&self.follower_pids);
        let in_fault = Arc::clone(&self.in_fault);
        let duration = self.config.duration;
        tokio::spawn(async move {
            let mut samples = Samples::new(duration);
            let start = Instant::now();
            while !*stopped.borrow() {
                let last = log.last_seq().await.unwrap_or(0);
                let mut lag_ms = [0; 3];
                for (lag, replica) in lag_ms.iter_mut().zip(&replicas) {
                    let applied = replica.last_applied().await.unwrap_or(0);
                    let behind = if applied >= last {
                        0
                    } else {
                        log.entry(applied + 1)
                            .await
                            .map_or(0, |e| (now_ms() - e.committed_at_ms).max(0))
                    };
                    *lag = u64::try_from(behind).unwrap_or(0);
                }
                let followers_kb = pids
                    .lock()
                    .map(|p| {
                        p.iter()
                            .filter_map(|&pid| crate::figures::rss_kb(pid))
                            .sum()
                    })
                    .unwrap_or(0);
                samples.push(Sample {
                    at: start.elapsed(),
                    rss_kb: crate::figures::rss_kb(std::process::id()).unwrap_or(0),
                    sqlite_kb: u64::try_from(liteorm_sqlite::raw::memory_used() / 1024)
                        .unwrap_or(0),
                    page_cache_kb: u64::try_from(liteorm_sqlite::raw::page_cache_used() / 1024)
                        .unwrap_or(0),
                    followers_rss_kb: followers_kb,
                    lag_ms,
                    in_fault: in_fault.load(Ordering::Relaxed),
                });
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            samples
        })
    }

    /// The end checks: every replica equals the primary and applied the whole log, the log is
    /// gapless, every writer's counter equals its committed units (nothing applied twice or
    /// lost).
    async fn check_end(&mut self, last: u64, per_writer: &[u64], transactions: u64) -> Result<()> {
        let (count, min, max): (i64, i64, i64) = {
            let rows = self
                .primary
                .query(
                    "SELECT count(*), coalesce(min(seq), 0), coalesce(max(seq), 0) \
                     FROM liteorm_changes",
                    &[],
                )
                .await?;
            (
                rows[0].try_get(0)?,
                rows[0].try_get(1)?,
                rows[0].try_get(2)?,
            )
        };
        if count != max || (count > 0 && min != 1) || u64::try_from(max).ok() != Some(last) {
            self.failures.push(format!(
                "the log has a gap: {count} entries, seqs {min}..={max}, last_seq {last}"
            ));
        }
        // The writers' units plus one planted conflict per conflict fault.
        let expected = transactions + u64::try_from(self.planted).unwrap_or(0);
        if u64::try_from(count).ok() != Some(expected) {
            self.failures.push(format!(
                "{count} log entries for {expected} committed units of work"
            ));
        }
        for (w, &n) in per_writer.iter().enumerate() {
            let rows = self
                .primary
                .query("SELECT n FROM counter WHERE writer = ?", &[int(w)])
                .await?;
            let counted: i64 = rows[0].try_get(0)?;
            if u64::try_from(counted).ok() != Some(n) {
                self.failures.push(format!(
                    "writer {w} committed {n} units, its counter says {counted}"
                ));
            }
        }
        for i in 0..self.watched.len() {
            let name = self.watched[i].name;
            let applied = self.applied(i).await;
            if applied != Some(last) {
                self.failures.push(format!(
                    "{name} applied up to {applied:?}, the log ends at {last}"
                ));
            }
            let replica = open(&self.dir.join(format!("{name}.db")), self.config.cache_kib).await?;
            for table in TABLES {
                let sql = format!("SELECT * FROM {table} ORDER BY 1");
                let (want, got) = (
                    self.primary.query(&sql, &[]).await?,
                    replica.query(&sql, &[]).await?,
                );
                if want != got {
                    self.failures.push(format!(
                        "{name}: table {table} differs from the primary ({} rows there, {} here)",
                        want.len(),
                        got.len()
                    ));
                }
            }
        }
        Ok(())
    }
}
