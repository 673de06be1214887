//! `publish` and `follow` as real processes against a real `nats-server -js` (started by the
//! liteorm-nats test harness on a free loopback port; a missing binary fails the test with how
//! to install it).

// Test helpers panic on unexpected errors on purpose.
#![allow(clippy::unwrap_used)]

#[path = "../../nats/tests/it/support.rs"]
#[allow(dead_code, unreachable_pub)]
mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use liteorm_core::Session;
use liteorm_replication::ChangeLog;
use liteorm_sqlite::SqliteSession;
use support::{NatsServer, content, db_file, db_with_schema, record_many};

fn spawn(args: &[&str]) -> Child {
    Command::cargo_bin("liteorm-changeset")
        .expect("the binary is built")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start liteorm-changeset")
}

/// Sends SIGTERM and waits (up to 30 s) for the process to exit.
fn terminate(mut child: Child) -> Output {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: plain kill(2) on a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("no exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

async fn wait_converged(primary: &SqliteSession, replica: &SqliteSession, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if content(primary).await == content(replica).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no convergence within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn one(db: &SqliteSession, sql: &str) -> i64 {
    db.query(sql, &[]).await.unwrap()[0].try_get(0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_follow_converge_and_exit_cleanly_on_sigterm() {
    let server = NatsServer::start();
    let url = server.url();
    let (primary, primary_dir) = db_with_schema().await;
    let (replica, replica_dir) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 40).await;
    let (primary_path, replica_path) = (db_file(primary_dir.path()), db_file(replica_dir.path()));

    let common = ["--nats", url.as_str(), "--lag-every", "1"];
    let publisher = spawn(
        &[
            &["publish", "--db", s(&primary_path), "--stream", "shop"][..],
            &common,
        ]
        .concat(),
    );
    let follower = spawn(
        &[
            &[
                "follow",
                "--db",
                s(&replica_path),
                "--stream",
                "shop",
                "--durable",
                "replica-1",
            ][..],
            &common,
        ]
        .concat(),
    );
    wait_converged(&primary, &replica, "the backlog").await;
    // Entries recorded while both run travel too.
    record_many(&log, 20).await;
    wait_converged(&primary, &replica, "live entries").await;
    // Let at least one lag report go out.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let followed = terminate(follower);
    let published = terminate(publisher);
    for (name, out) in [("follow", &followed), ("publish", &published)] {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name} exit: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("SIGTERM"),
            "{name}: {}",
            text(&out.stderr)
        );
    }
    assert!(
        text(&published.stdout).contains("published up to seq 60"),
        "{}",
        text(&published.stdout)
    );
    assert!(
        text(&followed.stdout).contains("applied up to seq 60"),
        "{}",
        text(&followed.stdout)
    );
    assert!(text(&published.stderr).contains("publisher lag"));
    assert!(text(&followed.stderr).contains("follower lag"));
    assert!(text(&followed.stderr).contains("behind=0"));
    // The cursors are committed in both databases.
    assert_eq!(
        one(&primary, "SELECT published_seq FROM liteorm_outbox").await,
        60
    );
    assert_eq!(
        one(&replica, "SELECT last_seq FROM liteorm_replica").await,
        60
    );

    // A restarted follower resumes at its cursor: nothing to apply, nothing applied twice.
    let again = spawn(
        &[
            &[
                "follow",
                "--db",
                s(&replica_path),
                "--stream",
                "shop",
                "--durable",
                "replica-1",
            ][..],
            &common,
        ]
        .concat(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = terminate(again);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("applied up to seq 60"));
    assert_eq!(content(&primary).await, content(&replica).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_stops_follow_with_exit_7_naming_the_seq() {
    let server = NatsServer::start();
    let url = server.url();
    let (primary, primary_dir) = db_with_schema().await;
    let (replica, replica_dir) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    for id in 1..=3 {
        support::record(&log, &format!("INSERT INTO item VALUES ({id}, 'ok', 1)")).await;
    }
    // The replica diverged: it has row 200, so entry 4 (inserting it) conflicts under the
    // default abort policy.
    replica
        .execute_batch("INSERT INTO item VALUES (200, 'local', 9)")
        .await
        .unwrap();
    support::record(&log, "INSERT INTO item VALUES (200, 'poison', 1)").await;
    let primary_path = db_file(primary_dir.path());
    let publisher = spawn(&[
        "publish",
        "--db",
        s(&primary_path),
        "--stream",
        "poison",
        "--nats",
        &url,
    ]);
    let out = Command::cargo_bin("liteorm-changeset")
        .unwrap()
        .args([
            "follow",
            "--db",
            s(&db_file(replica_dir.path())),
            "--stream",
            "poison",
            "--durable",
            "r",
            "--nats",
            &url,
        ])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("liteorm-changeset: ") && last.contains("seq 4"),
        "{stderr}"
    );
    // Everything before the poison entry was applied and committed.
    assert_eq!(
        one(&replica, "SELECT last_seq FROM liteorm_replica").await,
        3
    );
    let published = terminate(publisher);
    assert_eq!(published.status.code(), Some(0));
}

#[test]
fn an_unreachable_server_is_exit_9_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("CREATE TABLE t(id INTEGER PRIMARY KEY)")
        .status()
        .expect("sqlite3");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = Command::cargo_bin("liteorm-changeset")
        .unwrap()
        .args([
            "publish",
            "--db",
            s(&db),
            "--nats",
            &url,
            "--connect-timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("liteorm-changeset: NATS connect"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_bootstraps_a_replica_that_follows_from_the_next_seq() {
    let server = NatsServer::start();
    let url = server.url();
    let (primary, primary_dir) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 10).await;
    let primary_path = db_file(primary_dir.path());
    let replica_path = primary_dir.path().join("replica.db");
    let out = Command::cargo_bin("liteorm-changeset")
        .unwrap()
        .args(["snapshot", "--db", s(&primary_path), "-o", s(&replica_path)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("snapshot at seq 10; follow from seq 11"));
    let replica = SqliteSession::open(s(&replica_path)).await.unwrap();
    assert_eq!(
        one(&replica, "SELECT last_seq FROM liteorm_replica").await,
        10
    );
    record_many(&log, 5).await;
    let publisher = spawn(&["publish", "--db", s(&primary_path), "--nats", &url]);
    let follower = spawn(&[
        "follow",
        "--db",
        s(&replica_path),
        "--stream",
        "test",
        "--durable",
        "new",
        "--nats",
        &url,
    ]);
    wait_converged(&primary, &replica, "after the snapshot").await;
    let followed = terminate(follower);
    assert_eq!(
        followed.status.code(),
        Some(0),
        "{}",
        text(&followed.stderr)
    );
    assert!(text(&followed.stdout).contains("applied up to seq 15"));
    assert_eq!(terminate(publisher).status.code(), Some(0));
}
