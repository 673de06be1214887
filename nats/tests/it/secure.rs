//! Secured servers: user and password (also in the URL), token and NKey users, TLS with a CA
//! and client certificates made by the test, and a user whose permissions deny the subject.
//! The right credentials replicate; wrong ones are typed errors that never show a secret.

use std::time::Duration;

use liteorm_nats::{
    Auth, ChangeStream, Error, NatsConnect, NatsSource, Publisher, Secret, SecretSource,
};
use liteorm_replication::{ChangeLog, Replica};
use liteorm_sqlite::SqliteSession;

use crate::support::{NatsServer, Pki, content, db_with_schema, record_many, write};

const PASSWORD: &str = "s3cret-pw";
const TOKEN: &str = "t0ken-value";

/// Publishes a fresh primary's log (10 entries) over `publishing` and follows it over
/// `following` into a fresh replica; both must converge.
async fn replicates(publishing: &NatsConnect, following: &NatsConnect, name: &str) {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record_many(&log, 10).await;
    let stream = ChangeStream::new(name).unwrap();
    let js = publishing.connect().await.unwrap().jetstream();
    let mut publisher = Publisher::new(&primary, js, stream.clone()).await.unwrap();
    assert_eq!(publisher.publish_pending().await.unwrap().published, 10);
    let (replica_db, _d2) = db_with_schema().await;
    assert_eq!(follow(following, &stream, &replica_db).await.unwrap(), 10);
    assert_eq!(
        content(&replica_db).await,
        content(&primary).await,
        "{name}"
    );
}

/// Catches a replica of `db` up from `stream` over `connect`; the last applied seq.
async fn follow(
    connect: &NatsConnect,
    stream: &ChangeStream,
    db: &SqliteSession,
) -> liteorm_nats::Result<u64> {
    let js = connect.connect().await?.jetstream();
    let source = NatsSource::new(js, stream, "replica")?.long_poll(Duration::from_millis(200));
    let replica = Replica::open(db).await?;
    let mut follower = liteorm_nats::Follower::new(replica, source).await?;
    Ok(follower.catch_up().await?.last_seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_with_passwords_and_nkeys_replicate_and_wrong_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nkey = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [
            {{ user: writer, password: \"{PASSWORD}\" }}
            {{ nkey: {} }}
            {{ user: reader, password: \"{PASSWORD}\",
               permissions: {{ publish: {{ deny: [\"liteorm.>\"] }} }} }}
        ] }}",
        nkey.public_key()
    ));
    let url = format!("nats://127.0.0.1:{}", server.port());
    let password = write(dir.path(), "password", &format!("{PASSWORD}\n"));
    let seed = write(dir.path(), "seed", &nkey.seed().unwrap());
    let writer = NatsConnect::new(&url).auth(Auth::UserPassword {
        user: "writer".into(),
        password: SecretSource::File(password.clone()).into(),
    });
    let nkey_user = NatsConnect::new(&url).auth(Auth::NKey(SecretSource::File(seed).into()));
    replicates(&writer, &nkey_user, "secured").await;

    // The password in the URL works too, and never shows in Debug output.
    let in_url = NatsConnect::new(format!(
        "nats://writer:{PASSWORD}@127.0.0.1:{}",
        server.port()
    ));
    assert!(!format!("{in_url:?}").contains(PASSWORD));
    in_url.connect().await.unwrap();

    let wrong = NatsConnect::new(&url).auth(Auth::UserPassword {
        user: "writer".into(),
        password: Secret::new("not-it").into(),
    });
    let err = wrong.connect().await.unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err}");
    assert!(
        !err.to_string().contains("not-it") && !err.to_string().contains('\n'),
        "{err}"
    );
    let err = NatsConnect::new(&url).connect().await.unwrap_err();
    assert!(
        matches!(err, Error::Authentication { .. }),
        "no credentials: {err}"
    );
    let err = NatsConnect::new(&url)
        .auth(Auth::CredsFile(dir.path().join("missing.creds")))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Credentials { reason } if reason.contains("missing.creds")),
        "{err}"
    );

    // Allowed to connect, denied the subject: a clear error instead of endless retries.
    let reader = NatsConnect::new(&url).auth(Auth::UserPassword {
        user: "reader".into(),
        password: SecretSource::File(password).into(),
    });
    let connection = reader.connect().await.unwrap();
    let (primary, _d) = db_with_schema().await;
    record_many(&ChangeLog::open(&primary).await.unwrap(), 1).await;
    let stream = ChangeStream::new("denied").unwrap();
    let mut publisher = Publisher::new(&primary, connection.jetstream(), stream)
        .await
        .unwrap();
    let err = tokio::select! {
        result = publisher.publish_pending() => panic!("published: {result:?}"),
        err = connection.permission_denied() => err,
    };
    assert!(
        matches!(&err, Error::PermissionDenied { message } if message.contains("liteorm.denied.changes")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_user_replicates_and_a_wrong_token_is_refused() {
    let server = NatsServer::start_with_config(&format!("authorization {{ token: \"{TOKEN}\" }}"));
    let url = format!("nats://127.0.0.1:{}", server.port());
    let token = NatsConnect::new(&url).auth(Auth::Token(Secret::new(TOKEN).into()));
    replicates(&token, &token, "tokened").await;
    let err = NatsConnect::new(&url)
        .auth(Auth::Token(Secret::new("wrong-token").into()))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err}");
    assert!(!err.to_string().contains("wrong-token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_custom_ca_and_client_certificates_replicates_and_untrusted_is_refused() {
    let pki = Pki::new();
    let server = NatsServer::start_with_config(&pki.server_config(true));
    let url = format!("tls://127.0.0.1:{}", server.port());
    let trusted = NatsConnect::new(&url)
        .tls_root_certificate(pki.path("ca.pem"))
        .tls_client_certificate(pki.path("client.pem"), pki.path("client-key.pem"));
    replicates(&trusted, &trusted, "encrypted").await;

    let untrusted = NatsConnect::new(&url)
        .tls_root_certificate(pki.path("other-ca.pem"))
        .tls_client_certificate(pki.path("client.pem"), pki.path("client-key.pem"));
    let err = untrusted.connect().await.unwrap_err();
    assert!(
        matches!(err, Error::Tls { .. }),
        "untrusted server certificate: {err}"
    );
    assert!(!err.to_string().contains('\n'), "{err}");

    // The server insists on TLS even for a nats:// URL; the system roots do not trust it.
    let plain = NatsConnect::new(format!("nats://127.0.0.1:{}", server.port()));
    let err = plain.connect().await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "no custom CA: {err}");

    let missing = NatsConnect::new(&url).tls_root_certificate(pki.path("nope.pem"));
    let err = missing.connect().await.unwrap_err();
    assert!(matches!(err, Error::Credentials { .. }), "{err}");
}
