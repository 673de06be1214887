//! A publisher or follower process for the crash tests, which SIGKILL it at random moments and
//! start it again; it exits 0 once it has nothing more to do.
//!
//! Usage:
//! - `nats_worker follow NATS_URL DB REPLICA_DB CONSUMER BATCH`: catches the replica up with the
//!   stream of database DB.
//! - `nats_worker publish NATS_URL DB PRIMARY_DB BATCH`: publishes the primary's whole log,
//!   BATCH entries read at a time and twice that in flight.

use std::time::Duration;

use liteorm_nats::{ChangeStream, Follower, NatsSource, Publisher, async_nats};
use liteorm_replication::Replica;
use liteorm_sqlite::SqliteSession;

const USAGE: &str = "usage: nats_worker follow NATS_URL DB REPLICA_DB CONSUMER BATCH\n       \
                     nats_worker publish NATS_URL DB PRIMARY_DB BATCH";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, url, db) = match args.as_slice() {
        [mode, url, db, ..] => (mode.as_str(), url, db),
        _ => return Err(USAGE.into()),
    };
    let client = async_nats::connect(url.as_str()).await?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client);
    let stream = ChangeStream::new(db)?;
    match (mode, &args[3..]) {
        ("follow", [replica_db, consumer, batch]) => {
            let replica_db = SqliteSession::open(replica_db).await?;
            let source = NatsSource::new(js, &stream, consumer)?;
            let replica = Replica::open(&replica_db).await?;
            let mut follower = Follower::new(replica, source)
                .await?
                .batch_size(batch.parse()?);
            let done = follower.catch_up().await?;
            println!(
                "caught up to seq {} ({} applied)",
                done.last_seq, done.applied
            );
        }
        ("publish", [primary_db, batch]) => {
            let primary = SqliteSession::open(primary_db).await?;
            let batch: usize = batch.parse()?;
            // Two batches in flight: kills land between sends, acknowledgements and cursor
            // writes, with publishes pending across batches.
            let mut publisher = Publisher::new(&primary, js, stream)
                .await?
                .batch_size(batch)
                .max_in_flight(batch * 2);
            let report = publisher.publish_pending().await?;
            println!("{report:?}");
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}
