//! `log verify` on tampered logs, and `publish` / `follow` against a NATS server with
//! passwords, TLS and permissions: the right credentials replicate; each kind of wrong one is
//! one line on stderr with its own exit code, shows no secret, and applies nothing.

// Test helpers panic on unexpected errors on purpose.
#![allow(clippy::unwrap_used)]

#[path = "../../nats/tests/it/support.rs"]
#[allow(dead_code, unreachable_pub)]
mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use liteorm_replication::ChangeLog;
use support::{
    NatsServer, Pki, TAMPERED_LOG_LEN, TAMPERINGS, content, db_file, db_with_schema, record_many,
    tampered_primary, write,
};

const PASSWORD: &str = "pw-for-writer-7";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs the command; SIGTERMs it after `limit` if it is still running (`publish` and `follow`
/// run until stopped, by design).
fn run(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut child = Command::cargo_bin("liteorm-changeset")
        .unwrap()
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: plain kill(2) on a child this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_verify_names_the_first_tampered_seq_with_exit_10() {
    let (primary, dir) = db_with_schema().await;
    record_many(&ChangeLog::open(&primary).await.unwrap(), TAMPERED_LOG_LEN).await;
    let verify = |dir: &Path| {
        let db = db_file(dir);
        run(
            &["log", "verify", "--db", s(&db)],
            &[],
            Duration::from_secs(30),
        )
    };
    let out = verify(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("intact, 5 entries"),
        "{}",
        text(&out.stdout)
    );

    for tampering in TAMPERINGS {
        let (_primary, dir, _log) = tampered_primary(tampering).await;
        let out = verify(dir.path());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(10), "{}: {stderr}", tampering.name);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("seq {}", tampering.first_bad)),
            "{}: {stderr}",
            tampering.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secured_publish_and_follow_replicate_and_wrong_credentials_have_their_own_exit_codes() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [
            {{ user: writer, password: \"{PASSWORD}\" }}
            {{ user: reader, password: \"{PASSWORD}\",
               permissions: {{ publish: {{ deny: [\"$JS.API.CONSUMER.>\"] }} }} }}
        ] }}
        {}",
        pki.server_config(false)
    ));
    let url = format!("tls://127.0.0.1:{}", server.port());
    let secrets = tempfile::tempdir().unwrap();
    let password_file = write(secrets.path(), "pw", PASSWORD);
    let password_src = format!("file:{}", password_file.display());
    let ca = pki.path("ca.pem");
    let (primary, primary_dir) = db_with_schema().await;
    record_many(&ChangeLog::open(&primary).await.unwrap(), 6).await;
    let follow = |replica: &Path, extra: &[&str]| {
        let mut args = vec![
            "follow",
            "--db",
            s(replica),
            "--stream",
            "sec",
            "--durable",
            "r",
            "--nats",
            &url,
            "--connect-timeout",
            "2",
        ];
        args.extend_from_slice(extra);
        run(&args, &[], Duration::from_secs(8))
    };

    // The right credentials: the password from an environment variable, the CA trusted.
    let primary_path = db_file(primary_dir.path());
    let published = run(
        &[
            "publish",
            "--db",
            s(&primary_path),
            "--stream",
            "sec",
            "--nats",
            &url,
            "--nats-user",
            "writer",
            "--nats-password",
            "env:LITEORM_TEST_PW",
            "--tls-ca",
            s(&ca),
        ],
        &[("LITEORM_TEST_PW", PASSWORD)],
        Duration::from_secs(4),
    );
    let stderr = text(&published.stderr);
    assert_eq!(published.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    let (replica, replica_dir) = db_with_schema().await;
    let ok = follow(
        &db_file(replica_dir.path()),
        &[
            "--nats-user",
            "writer",
            "--nats-password",
            &password_src,
            "--tls-ca",
            s(&ca),
        ],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert_eq!(content(&replica).await, content(&primary).await);

    // Each wrong credential: its own exit code, one line, no secret, nothing applied.
    let (fresh, fresh_dir) = db_with_schema().await;
    let before = content(&fresh).await;
    let fresh_path = db_file(fresh_dir.path());
    let wrong_pw = write(secrets.path(), "wrong", "not-the-password");
    let wrong_src = format!("file:{}", wrong_pw.display());
    let missing_creds = secrets.path().join("missing.creds");
    let cases: [(&str, Vec<&str>, i32); 4] = [
        (
            "wrong password",
            vec![
                "--nats-user",
                "writer",
                "--nats-password",
                &wrong_src,
                "--tls-ca",
                s(&ca),
            ],
            11,
        ),
        (
            "missing creds file",
            vec!["--nats-creds", s(&missing_creds), "--tls-ca", s(&ca)],
            13,
        ),
        (
            "untrusted certificate",
            vec!["--nats-user", "writer", "--nats-password", &password_src],
            12,
        ),
        (
            "subject denied",
            vec![
                "--nats-user",
                "reader",
                "--nats-password",
                &password_src,
                "--tls-ca",
                s(&ca),
            ],
            11,
        ),
    ];
    for (name, args, code) in cases {
        let out = follow(&fresh_path, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("liteorm-changeset: "), "{name}: {stderr}");
        assert!(
            !stderr.contains(PASSWORD) && !stderr.contains("not-the-password"),
            "{name}: {stderr}"
        );
        assert_eq!(content(&fresh).await, before, "{name}: nothing applied");
    }
}
