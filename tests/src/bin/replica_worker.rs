//! A replica process for the crash tests: catches a replica database up with a primary's change
//! log, in small batches, and exits 0 when it has nothing more to apply.
//!
//! Usage: `replica_worker PRIMARY_DB REPLICA_DB BATCH`

use liteorm_replication::{LogTableSource, Replica};
use liteorm_sqlite::SqliteSession;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, primary, replica, batch] = args.as_slice() else {
        return Err("usage: replica_worker PRIMARY_DB REPLICA_DB BATCH".into());
    };
    let primary = SqliteSession::open(primary).await?;
    let db = SqliteSession::open(replica).await?;
    let replica = Replica::open(&db).await?.batch_size(batch.parse()?);
    let done = replica.catch_up(&mut LogTableSource::new(&primary)).await?;
    println!(
        "caught up to seq {} ({} applied)",
        done.last_seq, done.applied
    );
    Ok(())
}
