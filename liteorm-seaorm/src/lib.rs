//! SeaORM 2 on liteorm: what an app's entities write inside a capture or
//! [`ChangeLog::record`](liteorm_replication::ChangeLog::record) is recorded.
//!
//! liteorm records the statements that run on the one connection carrying SQLite's session
//! object. [`capture`] and [`record`] hand their closure that connection as a [`SeaSession`],
//! which implements SeaORM's `ConnectionTrait` and `TransactionTrait`: `ActiveModel::insert`,
//! `update`, `save`, `delete`, `Entity::insert_many`, `update_many`, `delete_many`, `find` and
//! raw `Statement`s all run there, inside capture's transaction, interleaved in any order with
//! liteorm statements and sqlx queries on [`SeaSession::session`]. Nested `begin()`s are
//! savepoints: one rolled back is not recorded.
//!
//! Writes through the app's `DatabaseConnection` itself run on other pool connections and are
//! *not* recorded: inside the closure, write through the connection it gets. [`capture`] and
//! [`record`] begin with `BEGIN IMMEDIATE`, so they hold the write lock: such a write waits for
//! the busy timeout and fails with "database is locked" rather than slip in unrecorded (on a
//! pool whose only connection the capture holds, it waits for the pool's acquire timeout
//! instead).
//!
//! Revert, replicas and the log itself are liteorm's, unchanged; [`EntityColumns`] names an
//! entity's columns when rendering recorded changes.
//!
//! sea-orm 2.x only: it is on sqlx 0.9 and libsqlite3-sys 0.37 like liteorm, and
//! `links = "sqlite3"` allows one libsqlite3-sys per binary, so sea-orm 1.x (sqlx 0.8,
//! libsqlite3-sys 0.30) cannot be built together with liteorm.
//!
//! ```
//! use liteorm_replication::{ChangeLog, ConflictPolicy, Meta};
//! use sea_orm::entity::prelude::*;
//! use sea_orm::{ActiveValue::Set, ConnectionTrait, Database, Schema};
//!
//! mod account {
//!     use sea_orm::entity::prelude::*;
//!
//!     #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
//!     #[sea_orm(table_name = "account")]
//!     pub struct Model {
//!         #[sea_orm(primary_key, auto_increment = false)]
//!         pub id: i64,
//!         pub owner: String,
//!         pub balance: i64,
//!     }
//!
//!     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//!     pub enum Relation {}
//!
//!     impl ActiveModelBehavior for ActiveModel {}
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), liteorm_seaorm::Error> {
//! let db = Database::connect("sqlite::memory:").await?;
//! let schema = Schema::new(db.get_database_backend());
//! db.execute(&schema.create_table_from_entity(account::Entity)).await?;
//!
//! let session = liteorm_seaorm::sqlite_session(&db).await?;
//! let log = ChangeLog::open(&session).await?;
//! let seq = liteorm_seaorm::record(&log, Meta::actor("ada"), |conn| async move {
//!     account::ActiveModel { id: Set(1), owner: Set("ada".into()), balance: Set(100) }
//!         .insert(&conn)
//!         .await?;
//!     Ok::<_, liteorm_seaorm::Error>(())
//! })
//! .await?;
//! assert_eq!(seq, Some(1));
//! assert_eq!(log.entry(1).await?.tables, ["account"]);
//! // Undo it: the revert is itself a log entry.
//! log.revert(1, ConflictPolicy::abort(), Meta::actor("ada"))
//!     .await?;
//! assert!(account::Entity::find().all(&db).await?.is_empty());
//! # Ok(())
//! # }
//! ```

mod columns;
mod connection;
mod error;
mod record;

pub use columns::EntityColumns;
pub use connection::{SeaSession, SeaTransaction};
pub use error::Error;
pub use record::{capture, changeset, patchset, record, sqlite_session};
