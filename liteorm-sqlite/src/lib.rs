//! The SQLite dialect of liteorm, built on [sqlx](https://docs.rs/sqlx)'s SQLite driver.
//!
//! [`SqliteSession`] implements [`liteorm_core::Session`]. It is either backed by a pool (each
//! statement runs on whichever connection is free) or *pinned* to one physical connection (inside
//! a transaction, or when a capability crate hands a closure a session that must run on the same
//! connection as its own raw `sqlite3*` work). Capability crates get that connection through
//! [`SqliteSession::pin`], and raw handle access only inside sqlx's `lock_handle()` guard through
//! [`PinnedGuard::with_raw`] / [`PinnedGuard::with_raw_blocking`].
//!
//! ```
//! use liteorm_core::{Session, Value};
//! use liteorm_sqlite::SqliteSession;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> liteorm_core::Result<()> {
//! let db = SqliteSession::open_in_memory().await?;
//! db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT)").await?;
//! db.execute("INSERT INTO t(id, name) VALUES (?, ?)", &[1.into(), "one".into()]).await?;
//! let rows = db.query("SELECT name FROM t WHERE id = ?", &[Value::Integer(1)]).await?;
//! assert_eq!(rows[0].try_get::<String>("name")?, "one");
//! # Ok(())
//! # }
//! ```

mod convert;
mod info;
mod pinned;
mod session;

pub use info::{HOW_TO_ENABLE_SESSIONS, SqliteInfo};
pub use libsqlite3_sys as ffi;
pub use pinned::{PinnedConnection, PinnedGuard};
pub use session::{SqliteSession, SqliteTransaction};

/// The dialect identity that [`SqliteSession`] reports.
pub const DIALECT: liteorm_core::Dialect = liteorm_core::Dialect::SQLITE;
