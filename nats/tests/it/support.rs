//! Test support: a real `nats-server -js` on 127.0.0.1, temp databases, table dumps, waits.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use liteorm_core::{Session, Value};
use liteorm_nats::async_nats;
use liteorm_nats::async_nats::jetstream;
use liteorm_nats::{ChangeStream, Follower, NatsSource, PublishReport, Publisher};
use liteorm_replication::{ChangeLog, Error, Meta, Replica};
use liteorm_sqlite::SqliteSession;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tempfile::TempDir;
use tokio::sync::watch;

/// Where Debian puts the binary; `/usr/sbin` is not on every user's PATH.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"];

/// The `nats-server` binary: `$NATS_SERVER`, else on PATH or in the sbin directories. Panics
/// with how to install it: a missing server fails the tests, it never skips them.
pub(crate) fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let extra = EXTRA_DIRS.iter().map(PathBuf::from);
    path_dirs
        .into_iter()
        .chain(extra)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found (looked on PATH and in {EXTRA_DIRS:?}). The liteorm-nats \
                 tests need a real NATS server with JetStream: install it with \
                 `sudo apt-get install nats-server` (or run scripts/install-deps.sh), or point \
                 NATS_SERVER at the binary"
            )
        })
}

/// A `nats-server -js` listening on a free loopback port with its store in a temp dir; killed
/// on drop.
pub(crate) struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: TempDir,
    config: Option<PathBuf>,
}

impl NatsServer {
    pub(crate) fn start() -> NatsServer {
        Self::start_with(None)
    }

    /// A server that also reads `config` (nats-server's format: `authorization`, `tls`, ...),
    /// written to its store directory.
    pub(crate) fn start_with_config(config: &str) -> NatsServer {
        Self::start_with(Some(config))
    }

    fn start_with(config: Option<&str>) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let config = config.map(|text| {
            let path = store.path().join("server.conf");
            std::fs::write(&path, text).expect("write the server config");
            path
        });
        let port = free_port();
        let mut server = NatsServer {
            child: None,
            port,
            store,
            config,
        };
        server.spawn();
        server
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self) {
        let binary = nats_server_binary();
        let child = Command::new(&binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path().join("js"))
            .args(
                self.config
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("-c"), c.as_os_str()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(self.addr()).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nats-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port)
    }

    /// The client URL.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (its file store stays).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts it again on the same port and store.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A JetStream context on a new connection that retries quickly while the server is down.
    pub(crate) async fn js(&self) -> jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(20 * u64::try_from(attempts.min(10)).unwrap_or(10))
            })
            .connect(self.url())
            .await
            .expect("connect to nats-server");
        // Generous for a loaded CI machine; a publish or pull that times out is retried anyway.
        jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

pub(crate) const SCHEMA: &str = "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER); \
    CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL); \
    INSERT INTO counter VALUES (1, 0), (2, 0)";

/// A database file with the test schema in its own temp dir.
pub(crate) async fn db_with_schema() -> (SqliteSession, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SqliteSession::open(db_file(dir.path()).to_str().expect("utf-8 path"))
        .await
        .expect("open db");
    db.execute_batch(SCHEMA).await.expect("schema");
    (db, dir)
}

/// The database file inside a dir made by [`db_with_schema`].
pub(crate) fn db_file(dir: &Path) -> PathBuf {
    dir.join("test.db")
}

/// A primary whose first entries were recorded and published by [`published`].
pub(crate) struct Published {
    pub(crate) js: jetstream::Context,
    pub(crate) primary: SqliteSession,
    pub(crate) log: ChangeLog,
    pub(crate) publisher: Publisher,
    /// Keeps the primary's file.
    pub(crate) dir: TempDir,
}

/// A primary with the test schema, `count` entries recorded, and a publisher that published
/// them all to `stream` on `server`.
pub(crate) async fn published(server: &NatsServer, stream: &ChangeStream, count: u64) -> Published {
    let js = server.js().await;
    let (primary, dir) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.expect("open the log");
    record_many(&log, count).await;
    let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
        .await
        .expect("publisher");
    let report = publisher.publish_pending().await.expect("publish");
    assert_eq!(report.published, count);
    Published {
        js,
        primary,
        log,
        publisher,
        dir,
    }
}

/// Records `sql` as one unit of work.
pub(crate) async fn record(log: &ChangeLog, sql: &str) -> u64 {
    let sql = sql.to_owned();
    log.record(Meta::actor("writer").reason("test"), move |s| async move {
        s.execute_batch(&sql).await?;
        Ok::<_, Error>(())
    })
    .await
    .expect("record")
    .expect("the unit of work changed something")
}

/// A unit of work that changes both tables; entry `i` of a sequence of them. Every entry
/// increments a counter, so an entry applied twice conflicts and a lost one shows.
pub(crate) fn work(i: u64) -> &'static str {
    match i % 4 {
        0 => {
            "UPDATE counter SET n = n + 1 WHERE id = 1; INSERT INTO item(name, qty) VALUES ('a', 1)"
        }
        1 => {
            "UPDATE counter SET n = n + 1 WHERE id = 2; UPDATE item SET qty = qty + 1 WHERE id = (SELECT max(id) FROM item)"
        }
        2 => {
            "UPDATE counter SET n = n + 1 WHERE id = 1; INSERT INTO item(name, qty) VALUES ('b', 2)"
        }
        _ => {
            "UPDATE counter SET n = n + 1 WHERE id = 2; DELETE FROM item WHERE id = (SELECT min(id) FROM item)"
        }
    }
}

/// Records `count` units of work from [`work`].
pub(crate) async fn record_many(log: &ChangeLog, count: u64) {
    for i in 0..count {
        record(log, work(i)).await;
    }
}

/// The stream's message count and last sequence, as the server has them now.
pub(crate) async fn stream_state(js: &jetstream::Context, stream: &ChangeStream) -> (u64, u64) {
    let handle = js.get_stream(stream.name()).await.expect("get the stream");
    let state = &handle.cached_info().state;
    (state.messages, state.last_sequence)
}

/// Every row of the data tables, ordered.
pub(crate) async fn content(db: &dyn Session) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for table in ["item", "counter"] {
        rows.extend(
            db.query(&format!("SELECT * FROM {table} ORDER BY 1"), &[])
                .await
                .expect("dump table")
                .into_iter()
                .map(|row| row.into_values()),
        );
        rows.push(vec![Value::Text(format!("end of {table}"))]);
    }
    rows
}

/// A task started with a shutdown signal.
pub(crate) struct Running<T> {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<T>,
}

impl<T> Running<T> {
    /// Signals shutdown and waits (bounded) for the task's result.
    pub(crate) async fn stop(mut self) -> T {
        if let Some(stop) = self.stop.take() {
            // The task may have ended by itself already.
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the task did not shut down within 20 s")
            .expect("the task panicked")
    }
}

/// Runs `publisher` until stopped; gives it back with its result.
pub(crate) fn spawn_publisher(
    mut publisher: Publisher,
) -> Running<(Publisher, liteorm_nats::Result<PublishReport>)> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let result = publisher
            .run(async {
                let _ = stopped.await;
            })
            .await;
        (publisher, result)
    });
    Running {
        stop: Some(stop),
        task,
    }
}

/// Runs `follower` until stopped (or failed); gives it back with its result.
pub(crate) fn spawn_follower(
    mut follower: Follower,
) -> Running<(Follower, liteorm_nats::Result<u64>)> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let result = follower
            .run(async {
                let _ = stopped.await;
            })
            .await;
        (follower, result)
    });
    Running {
        stop: Some(stop),
        task,
    }
}

/// A follower of `stream` for `db` with timeouts short enough for tests.
pub(crate) async fn follower(
    js: &jetstream::Context,
    stream: &ChangeStream,
    db: &SqliteSession,
    consumer: &str,
) -> Follower {
    let source = NatsSource::new(js.clone(), stream, consumer)
        .expect("consumer name")
        .long_poll(Duration::from_millis(300))
        .request_timeout(Duration::from_secs(2));
    let replica = Replica::open(db).await.expect("open replica");
    Follower::new(replica, source)
        .await
        .expect("follower")
        .stall_timeout(Duration::from_secs(20))
}

/// Waits until a follower's progress reaches `seq`.
pub(crate) async fn wait_progress(progress: &mut watch::Receiver<u64>, seq: u64, what: &str) {
    let reached = tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|s| *s >= seq))
        .await
        .map(|r| r.map(|_| ()));
    match reached {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("{what}: the follower went away before seq {seq}"),
        Err(_) => panic!(
            "{what}: seq {seq} not applied within 30 s (at {})",
            *progress.borrow()
        ),
    }
}

/// One way to tamper with a primary's change log table (of [`TAMPERED_LOG_LEN`] entries from
/// [`record_many`]), and the first seq it breaks.
pub(crate) struct Tampering {
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
    pub(crate) first_bad: u64,
}

/// How many entries the log has before [`TAMPERINGS`] are applied.
pub(crate) const TAMPERED_LOG_LEN: u64 = 5;

/// Every kind of edit the chain must reveal: content, metadata, deletion, insertion, order.
pub(crate) const TAMPERINGS: &[Tampering] = &[
    Tampering {
        name: "a changeset byte",
        // The last byte is the last value of the last change: still a valid changeset.
        sql: "UPDATE liteorm_changes \
              SET blob = CAST(substr(blob, 1, length(blob) - 1) || X'2A' AS BLOB) WHERE seq = 3",
        first_bad: 3,
    },
    Tampering {
        name: "the actor",
        sql: "UPDATE liteorm_changes SET actor = 'mallory' WHERE seq = 2",
        first_bad: 2,
    },
    Tampering {
        name: "the timestamp",
        sql: "UPDATE liteorm_changes SET committed_at = committed_at - 3600000 WHERE seq = 4",
        first_bad: 4,
    },
    Tampering {
        name: "a deleted entry",
        sql: "DELETE FROM liteorm_changes WHERE seq = 3",
        first_bad: 3,
    },
    Tampering {
        name: "an inserted entry",
        // Entries 3.. move up one; a copy of entry 2 (its hash too) goes in at 3.
        sql: "UPDATE liteorm_changes SET seq = seq + 100 WHERE seq >= 3; \
              UPDATE liteorm_changes SET seq = seq - 99 WHERE seq >= 100; \
              INSERT INTO liteorm_changes \
              SELECT 3, committed_at, actor, reason, tables, kind, ref_seq, blob, hash \
              FROM liteorm_changes WHERE seq = 2",
        first_bad: 3,
    },
    Tampering {
        name: "two swapped entries",
        sql: "UPDATE liteorm_changes SET seq = -2 WHERE seq = 2; \
              UPDATE liteorm_changes SET seq = 2 WHERE seq = 3; \
              UPDATE liteorm_changes SET seq = 3 WHERE seq = -2",
        first_bad: 2,
    },
];

/// A primary with [`TAMPERED_LOG_LEN`] entries, then `tampering` applied to its log table.
pub(crate) async fn tampered_primary(tampering: &Tampering) -> (SqliteSession, TempDir, ChangeLog) {
    let (primary, dir) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.expect("open log");
    record_many(&log, TAMPERED_LOG_LEN).await;
    primary
        .execute_batch(tampering.sql)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", tampering.name));
    (primary, dir, log)
}

/// Whether `err` names `seq` as the first entry that breaks the chain (a broken hash, or a
/// missing entry, which a replica sees as a gap).
pub(crate) fn names_first_bad(err: &Error, seq: u64) -> bool {
    match err {
        Error::ChainBroken { seq: at, .. } => *at == seq,
        Error::Gap { expected, .. } => *expected == seq,
        _ => false,
    }
}

/// Writes `text` to `dir/name`.
pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and a CA
/// nobody trusts, as PEM files.
pub(crate) struct Pki {
    pub(crate) dir: TempDir,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("liteorm test CA");
        write(dir.path(), "ca.pem", &pem("CERTIFICATE", ca.der()));
        write(dir.path(), "other-ca.pem", &ca_pem("someone else's CA"));
        for (name, sans) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ),
            ("client", vec!["replica".to_owned()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            write(
                dir.path(),
                &format!("{name}.pem"),
                &pem("CERTIFICATE", cert.der()),
            );
            write(
                dir.path(),
                &format!("{name}-key.pem"),
                &pem("PRIVATE KEY", &key.serialize_der()),
            );
        }
        Pki { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's `tls` block; `verify`: client certificates required.
    pub(crate) fn server_config(&self, verify: bool) -> String {
        format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: {verify}, timeout: 5 }}",
            self.path("server.pem").display(),
            self.path("server-key.pem").display(),
            self.path("ca.pem").display(),
        )
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn ca_pem(name: &str) -> String {
    pem("CERTIFICATE", ca(name).der())
}

/// PEM armour around DER bytes (64 base64 characters a line).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
