//! An audit log and one-way replication for liteorm apps, built on SQLite changesets.
//!
//! - [`ChangeLog`] (primary side): [`ChangeLog::record`] runs a unit of work, captures its
//!   changeset and appends it to a log table **in the same transaction**, so data and history
//!   commit together or not at all. The log lives in the same database file by default.
//! - Audit: [`ChangeLog::entries`] queries the log by seq, time, table or actor;
//!   [`ChangeLog::revert`] undoes one entry and [`ChangeLog::rollback_to`] undoes everything after
//!   a seq, each as a new, logged unit of work, with a conflict policy (a later change to the same
//!   row is a conflict, never a silent overwrite).
//! - Tamper evidence: every entry carries a SHA-256 hash chaining the previous entry's hash
//!   with its own changeset and metadata ([`EntryHash`]); [`ChangeLog::verify`] names the first
//!   seq that was edited, deleted, inserted or moved, and a replica checks every entry it
//!   receives against the one before it.
//! - Schema changes: [`ChangeLog::migrate`] runs DDL and logs it as a schema entry
//!   ([`EntryKind::Schema`], carrying the SQL) in the same transaction; replicas run it at the
//!   same point of the log.
//! - Retention: [`ChangeLog::prune`] deletes entries up to a seq that every known replica has
//!   applied ([`ChangeLog::replica_cursors`]) and records the horizon the chain goes on from.
//! - [`Replica`] (replica side): applies log entries in seq order and stores the last applied seq
//!   in the replica database in the same transaction as the data, so a crash at any point resumes
//!   exactly once. Entries come from a [`ChangeSource`]: [`LogTableSource`] reads the primary's
//!   log table, [`ChannelSource`] an in-process channel fed by [`ChangeLog::publish_to`].
//!
//! ```
//! use liteorm_core::Session;
//! use liteorm_replication::{ChangeLog, LogTableSource, Meta, Replica};
//! use liteorm_sqlite::SqliteSession;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), liteorm_replication::Error> {
//! let primary = SqliteSession::open_in_memory().await?;
//! let replica_db = SqliteSession::open_in_memory().await?;
//! for db in [&primary, &replica_db] {
//!     db.execute_batch("CREATE TABLE note(id INTEGER PRIMARY KEY, body TEXT)").await?;
//! }
//! let log = ChangeLog::open(&primary).await?;
//! let seq = log
//!     .record(Meta::actor("ada").reason("first note"), |s| async move {
//!         s.execute("INSERT INTO note VALUES (1, 'hello')", &[]).await?;
//!         Ok::<_, liteorm_replication::Error>(())
//!     })
//!     .await?;
//! assert_eq!(seq, Some(1));
//!
//! let replica = Replica::open(&replica_db).await?;
//! let caught_up = replica.catch_up(&mut LogTableSource::new(&primary)).await?;
//! assert_eq!(caught_up.last_seq, 1);
//! # Ok(())
//! # }
//! ```

mod chain;
mod error;
pub mod lent;
mod log;
mod migration;
mod policy;
mod replica;
mod retention;
mod source;

pub use chain::EntryHash;
pub use error::{ChainBreak, Error, Result};
pub use log::{
    ChangeLog, EntryKind, LogEntry, LogFilter, Meta, Payload, RevertOutcome, VerifiedChain,
};
pub use policy::ConflictPolicy;
pub use replica::{CatchUp, Replica};
pub use retention::{Pruned, ReplicaCursor};
pub use source::{ChangeSource, ChannelSource, LogTableSource};
