//! Replication of a liteorm change log across machines over NATS JetStream.
//!
//! The primary's change log table ([`liteorm_replication::ChangeLog`]) is an outbox; this crate
//! moves it through a JetStream stream to replicas on other machines:
//!
//! - [`Publisher`] (primary side) sends each entry, in seq order, to the stream of its database
//!   ([`ChangeStream`]: stream `LITEORM_<db>`, subject `liteorm.<db>.changes`, file storage),
//!   with `Nats-Msg-Id` = seq, and records the published-up-to seq in the primary database
//!   (`liteorm_outbox`) after the server's acknowledgement. After a crash it resends from that
//!   cursor; the server's deduplication and an expected-last-sequence check keep every entry in
//!   the stream exactly once, at stream sequence = seq.
//! - [`NatsSource`] (replica side) is a [`ChangeSource`](liteorm_replication::ChangeSource)
//!   over a durable pull consumer: [`Replica::follow`](liteorm_replication::Replica::follow)
//!   and `catch_up` drive it as they are. It acks a message only after the replica committed
//!   it (on the next fetch, whose `after` is the committed cursor). [`Follower`] wraps a
//!   replica and a source with graceful shutdown, retries, progress and [`Lag`].
//! - [`snapshot`] bootstraps a new replica from a copy of the primary tagged with its seq; the
//!   follower then starts at seq + 1.
//!
//! - [`NatsConnect`] connects to a secured server: user and password, token, NKey seed or
//!   `.creds` file, TLS with a custom CA and client certificates; secrets come from files or
//!   environment variables and never appear in errors or `Debug` output.
//!
//! Every long-running loop ([`Publisher::run`], [`Follower::run`]) takes a shutdown future, so
//! a command-line tool is a thin wrapper: connect, build, `run(sigterm)`.
//!
//! Bootstrapping a replica needs no server (runs as is):
//!
//! ```
//! use liteorm_core::Session;
//! use liteorm_replication::{ChangeLog, Error, Meta, Replica};
//! use liteorm_sqlite::SqliteSession;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let primary = SqliteSession::open(dir.path().join("app.db").to_str().ok_or("path")?).await?;
//! primary.execute_batch("CREATE TABLE note(id INTEGER PRIMARY KEY, body TEXT)").await?;
//! let log = ChangeLog::open(&primary).await?;
//! log.record(Meta::actor("ada"), |s| async move {
//!     s.execute("INSERT INTO note VALUES (1, 'hello')", &[]).await?;
//!     Ok::<_, Error>(())
//! })
//! .await?;
//!
//! let path = dir.path().join("replica.db");
//! let seq = liteorm_nats::snapshot(&primary, &path).await?;
//! assert_eq!(seq, 1);
//!
//! // On the replica's machine: the copy has the data and the cursor.
//! let db = SqliteSession::open(path.to_str().ok_or("path")?).await?;
//! assert_eq!(Replica::open(&db).await?.last_applied().await?, 1);
//! # Ok(())
//! # }
//! ```
//!
//! Publishing and following (needs a server with JetStream, `nats-server -js`):
//!
//! ```no_run
//! use liteorm_nats::{ChangeStream, Follower, NatsSource, Publisher};
//! use liteorm_replication::Replica;
//! use liteorm_sqlite::SqliteSession;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
//! let stream = ChangeStream::new("shop")?;
//!
//! // On the primary's machine. `run` returns when its shutdown future completes: a CLI passes
//! // its SIGTERM handler there.
//! let primary = SqliteSession::open("shop.db").await?;
//! let mut publisher = Publisher::new(&primary, js.clone(), stream.clone()).await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let publishing = tokio::spawn(async move {
//!     publisher.run(async { stopped.await.ok(); }).await
//! });
//!
//! // On each replica's machine (after `snapshot`, or from an empty copy of the schema).
//! let db = SqliteSession::open("replica.db").await?;
//! let source = NatsSource::new(js, &stream, "replica-eu-1")?;
//! let mut follower = Follower::new(Replica::open(&db).await?, source).await?;
//! println!("caught up to seq {}", follower.catch_up().await?.last_seq);
//!
//! stop.send(()).ok();
//! let report = publishing.await??;
//! println!("published up to seq {}", report.published_seq);
//! # Ok(())
//! # }
//! ```

mod backoff;
mod connect;
mod connection;
mod error;
mod follower;
mod publisher;
mod snapshot;
mod source;
mod stream;
mod wire;

pub use async_nats;
pub use connect::{Auth, Connection, NatsConnect, Secret, SecretSource, SecretValue, redact_url};
pub use error::{Error, Result};
pub use follower::{Applied, Follower, Lag};
pub use publisher::{PublishReport, Publisher};
pub use snapshot::{snapshot, snapshot_named};
pub use source::NatsSource;
pub use stream::{ChangeStream, DEFAULT_DUPLICATE_WINDOW};

/// The wire format's decoder and encoders (the current one, and the header format that streams
/// written before version 4 hold), for liteorm's fuzz targets (`fuzz/`) and tests. Not a stable
/// API: use [`NatsSource`], [`Follower`] and [`Publisher`].
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::wire::{decode, encode, encode_headers};
}
