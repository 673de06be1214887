//! `publish` and `follow`: a primary's change log to NATS JetStream, and a replica kept up to
//! date from it (liteorm-nats), as long-running processes with logs, lag reports and graceful
//! shutdown on SIGTERM or Ctrl-C.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use liteorm_nats::{
    Auth, ChangeStream, Connection, Follower, Lag, NatsConnect, NatsSource, Publisher,
};
use liteorm_replication::{ChangeLog, Replica};
use liteorm_sqlite::SqliteSession;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use crate::commands::open_db;
use crate::failure::Failure;
use crate::{FollowArgs, NatsArgs, PublishArgs, SnapshotArgs};

/// Logs to stderr: `RUST_LOG` if set, else info (`-v`: debug, `-vv`: trace) for liteorm's
/// crates and warnings for the rest.
pub(crate) fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,liteorm_changeset={level},liteorm_nats={level},liteorm_replication={level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is
/// called, before the long-running work starts, so an early signal is not lost.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send, Failure> {
    let handler =
        |kind, name| signal(kind).map_err(|e| Failure::Other(format!("cannot handle {name}: {e}")));
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// How to connect, from the command line: the URL, at most one way to authenticate, TLS.
fn nats_connect(args: &NatsArgs) -> NatsConnect {
    let mut connect = NatsConnect::new(&args.nats)
        .name("liteorm-changeset")
        .connection_timeout(Duration::from_secs(args.connect_timeout))
        .require_tls(args.tls);
    let auth = if let (Some(user), Some(password)) = (&args.nats_user, &args.nats_password) {
        Some(Auth::UserPassword {
            user: user.clone(),
            password: password.clone().into(),
        })
    } else if let Some(token) = &args.nats_token {
        Some(Auth::Token(token.clone().into()))
    } else if let Some(seed) = &args.nats_nkey {
        Some(Auth::NKey(seed.clone().into()))
    } else {
        args.nats_creds.clone().map(Auth::CredsFile)
    };
    if let Some(auth) = auth {
        connect = connect.auth(auth);
    }
    if let Some(ca) = &args.tls_ca {
        connect = connect.tls_root_certificate(ca);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        connect = connect.tls_client_certificate(cert, key);
    }
    connect
}

async fn connect(args: &NatsArgs) -> Result<Connection, Failure> {
    let connect = nats_connect(args);
    tracing::debug!(server = %connect.redacted_url(), "connecting");
    Ok(connect.connect().await?)
}

/// Runs `work` until it ends or the server denies one of its operations (which it would
/// otherwise retry for ever as a timeout).
async fn unless_denied<T>(
    connection: &Connection,
    work: impl Future<Output = liteorm_nats::Result<T>>,
) -> Result<T, Failure> {
    tokio::select! {
        result = work => Ok(result?),
        denied = connection.permission_denied() => Err(denied.into()),
    }
}

/// The stream of `--stream NAME`, or of the database file's name.
fn change_stream(name: Option<&str>, db: &Path) -> Result<ChangeStream, Failure> {
    let name = match name {
        Some(name) => name.to_owned(),
        None => db
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_"))
            .ok_or_else(|| Failure::Other("give --stream NAME".into()))?,
    };
    Ok(ChangeStream::new(&name)?)
}

/// Logs `report()` every `every` (never, for 0) until the returned task is aborted.
fn report_every<F, Fut>(every: u64, mut report: F) -> Option<tokio::task::JoinHandle<()>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    (every > 0).then(|| {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(every));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                report().await;
            }
        })
    })
}

pub(crate) async fn publish(args: PublishArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal()?;
    let db = open_db(&args.db).await?;
    let mut stream = change_stream(args.stream.as_deref(), &args.db)?;
    if let Some(secs) = args.duplicate_window {
        stream = stream.duplicate_window(Duration::from_secs(secs));
    }
    if let Some(secs) = args.max_age {
        stream = stream.max_age(Duration::from_secs(secs));
    }
    let connection = connect(&args.nats).await?;
    let mut publisher = Publisher::new(&db, connection.jetstream(), stream.clone())
        .await?
        .batch_size(args.batch)
        .poll_interval(Duration::from_millis(args.poll_ms));
    let log = ChangeLog::open(&db).await?;
    let lag_stream = stream.name().to_owned();
    let reporter = report_every(args.nats.lag_every, move || {
        let (db, log, name) = (db.clone(), log.clone(), lag_stream.clone());
        async move {
            match publisher_lag(&db, &log, &name).await {
                Ok((published, last)) => tracing::info!(
                    published_seq = published,
                    log_last_seq = last,
                    behind = last.saturating_sub(published),
                    "publisher lag"
                ),
                Err(err) => tracing::warn!(error = %err, "cannot measure the publisher's lag"),
            }
        }
    });
    let result = unless_denied(&connection, publisher.run(shutdown)).await;
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    let report = result?;
    println!(
        "published {} entries to {} ({} duplicates dropped); published up to seq {}",
        report.published,
        stream.name(),
        report.duplicates + report.already_in_stream,
        report.published_seq
    );
    Ok(())
}

/// The publisher's cursor and the log's last seq, read from the primary database.
async fn publisher_lag(
    db: &SqliteSession,
    log: &ChangeLog,
    stream: &str,
) -> Result<(u64, u64), Failure> {
    let rows = db
        .query(
            "SELECT published_seq FROM liteorm_outbox WHERE stream = ?",
            &[stream.into()],
        )
        .await?;
    let published: i64 = rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0);
    let last = log.last_seq().await?;
    Ok((u64::try_from(published).unwrap_or(0), last))
}

pub(crate) async fn follow(args: FollowArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal()?;
    let db = open_db(&args.db).await?;
    let stream = ChangeStream::new(&args.stream)?;
    let connection = connect(&args.nats).await?;
    let js = connection.jetstream();
    let replica = Replica::open(&db)
        .await?
        .policy(args.policy.conflict_policy());
    let source = NatsSource::new(js.clone(), &stream, &args.durable)?;
    let mut follower = Follower::new(replica.clone(), source)
        .await?
        .batch_size(args.batch);
    let reporter = report_every(args.nats.lag_every, move || {
        let (js, stream, replica) = (js.clone(), stream.clone(), replica.clone());
        async move {
            match Lag::measure(&js, &stream, &replica).await {
                Ok(lag) => tracing::info!(
                    applied_seq = lag.applied_seq,
                    stream_last_seq = lag.stream_last_seq,
                    behind = lag.behind(),
                    "follower lag"
                ),
                Err(err) => tracing::warn!(error = %err, "cannot measure the follower's lag"),
            }
        }
    });
    let result = unless_denied(&connection, follower.run(shutdown)).await;
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    let last = result?;
    println!(
        "followed {} as {}; applied up to seq {last}",
        args.stream, args.durable
    );
    Ok(())
}

pub(crate) async fn snapshot(args: SnapshotArgs) -> Result<(), Failure> {
    let db = open_db(&args.db).await?;
    let seq = liteorm_nats::snapshot(&db, &args.output).await?;
    println!(
        "{}: snapshot at seq {seq}; follow from seq {}",
        args.output.display(),
        seq + 1
    );
    Ok(())
}
