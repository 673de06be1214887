//! The follower process the soak SIGKILLs and restarts: a [`Follower`] on one replica file,
//! following the stream until it is killed or the replica stops.

use std::process::ExitCode;
use std::time::Duration;

use liteorm_nats::{ChangeStream, Follower, NatsSource, async_nats};
use liteorm_replication::Replica;
use liteorm_sqlite::SqliteSession;

/// The line a follower prints when its replica stops at a conflict; the soak reads the seq
/// back.
pub(crate) const STOPPED_AT: &str = "stopped at seq ";

/// The exit code of a follower whose replica stopped at a conflict.
pub(crate) const STOPPED_EXIT: u8 = 3;

/// `follow NATS_URL DB REPLICA_DB CONSUMER [CACHE_KIB]`: follows the stream of database DB into
/// the replica file until killed. Exits [`STOPPED_EXIT`] after printing [`STOPPED_AT`] and the seq when the
/// replica stops at a conflict, 1 on any other error.
pub(crate) async fn follow(
    url: &str,
    db: &str,
    replica_db: &str,
    consumer: &str,
    cache_kib: Option<u64>,
) -> ExitCode {
    match run(url, db, replica_db, consumer, cache_kib).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(liteorm_nats::Error::Replication(liteorm_replication::Error::Stopped {
            seq,
            source,
        })) => {
            println!("{STOPPED_AT}{seq}: {source}");
            ExitCode::from(STOPPED_EXIT)
        }
        Err(err) => {
            println!("follower failed: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    url: &str,
    db: &str,
    replica_db: &str,
    consumer: &str,
    cache_kib: Option<u64>,
) -> liteorm_nats::Result<()> {
    let js = connect(url).await?;
    let stream = ChangeStream::new(db)?;
    let session = open_db(replica_db, cache_kib).await?;
    let replica = Replica::open(&session).await?;
    let source = NatsSource::new(js, &stream, consumer)?;
    let mut follower = Follower::new(replica, source).await?;
    follower.run(std::future::pending()).await?;
    Ok(())
}

/// Opens a database with liteorm's defaults and, if given, a page cache of `cache_kib` KiB on
/// each connection.
pub(crate) async fn open_db(
    url_or_path: &str,
    cache_kib: Option<u64>,
) -> liteorm_core::Result<SqliteSession> {
    let mut options = SqliteSession::options(url_or_path)?;
    if let Some(kib) = cache_kib {
        // Negative: a size in KiB rather than in pages.
        options = options.pragma("cache_size", format!("-{kib}"));
    }
    SqliteSession::connect_with(options, SqliteSession::pool_options()).await
}

/// A JetStream context on a connection that keeps retrying while the server is down.
pub(crate) async fn connect(url: &str) -> liteorm_nats::Result<async_nats::jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50 * u64::try_from(attempts.min(10)).unwrap_or(10))
        })
        .connect(url)
        .await
        .map_err(|e| liteorm_nats::Error::Nats {
            op: "connect",
            source: e.into(),
        })?;
    Ok(async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client))
}
