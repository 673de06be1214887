//! A writer process for the crash tests: records units of work through a change log until the
//! log has `ENTRIES` entries, then exits 0. Each unit increments `counter` row 1 and inserts an
//! `item` whose `qty` is the new count, so a unit that committed without its log entry (or the
//! reverse) shows as a count different from the last seq.
//!
//! Usage: `log_writer DB ENTRIES`

use liteorm_replication::{ChangeLog, Error, Meta};
use liteorm_sqlite::SqliteSession;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, entries] = args.as_slice() else {
        return Err("usage: log_writer DB ENTRIES".into());
    };
    let entries: u64 = entries.parse()?;
    let db = SqliteSession::open(db).await?;
    let log = ChangeLog::open(&db).await?;
    while log.last_seq().await? < entries {
        log.record(Meta::actor("log_writer"), |s| async move {
            s.execute("UPDATE counter SET n = n + 1 WHERE id = 1", &[])
                .await?;
            s.execute(
                "INSERT INTO item(name, qty) VALUES ('unit', (SELECT n FROM counter WHERE id = 1))",
                &[],
            )
            .await?;
            Ok::<_, Error>(())
        })
        .await?;
    }
    println!("logged {entries} entries");
    Ok(())
}
