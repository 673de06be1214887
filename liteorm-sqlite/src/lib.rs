//! The SQLite dialect of liteorm, built on [sqlx](https://docs.rs/sqlx)'s SQLite driver.
//!
//! [`SqliteSession`] implements [`liteorm_core::Session`]. It is either backed by a pool (each
//! statement runs on whichever connection is free) or *pinned* to one physical connection (inside
//! a transaction, or when a capability crate hands a closure a session that must run on the same
//! connection as its own raw `sqlite3*` work). Capability crates get that connection through
//! [`SqliteSession::pin`], and raw handle access only inside sqlx's `lock_handle()` guard through
//! [`PinnedGuard::with_raw`] / [`PinnedGuard::with_raw_blocking`], which hand a closure a
//! [`raw::Handle`] (see [`raw`]).
//!
//! Statements of a pinned session (a transaction, or the session a capture hands its closure)
//! run *inline*, on the calling task's thread, on liteorm's own prepared statements, while
//! sqlx's handle lock keeps its worker off the connection: that saves the round trip to sqlx's
//! per-connection worker thread (tens of microseconds and several context switches per
//! statement). A pool-backed session does not hand a connection back to sqlx's pool as soon as
//! an operation is done: it keeps it, out of any transaction, handle lock and statements
//! included, for [`SqliteSession::linger`] (10 ms by default), so that its next statement,
//! transaction or capture starts at once (see [`SqliteSession::linger`] for when it goes back).
//! Nothing waits inline: a statement that could wait for another connection's lock (on a file
//! database, outside a write transaction) runs inline with a zero busy timeout, and only if
//! the lock is taken does it run again on sqlx's worker, which waits up to the busy timeout (a
//! statement that meets a lock has done nothing yet). SQL holding several statements or named
//! parameters goes through sqlx's worker. Transaction control of pinned connections (`BEGIN`,
//! savepoints, `COMMIT`, `ROLLBACK`) is liteorm's own and runs inline the same way: `BEGIN
//! IMMEDIATE` and the outermost `COMMIT` on a file database wait on sqlx's worker thread when
//! another connection holds the lock. A long statement run inline
//! (an `UPDATE` of a million rows on an in-memory database, say) occupies its executor thread
//! until it finishes, like any other CPU-bound work in an async task: run such work from
//! `tokio::task::spawn_blocking` if the other tasks of that thread must keep running meanwhile.
//!
//! `&SqliteSession` is also a [`sqlx::Executor`], so an app's own sqlx queries (`sqlx::query`,
//! `query_as`, `fetch_*`, `FromRow`, the `query!` macros) run on it, and inside a capture on
//! the recording connection (see the `executor` module's notes). With both
//! [`liteorm_core::Session`] and [`sqlx::Executor`] imported, `s.execute(..)` is ambiguous:
//! call `Session::execute(&s, ..)`, or leave `sqlx::Executor` unimported (sqlx's own
//! `query(..).execute(&s)` does not need it).
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

pub mod blocking;
mod convert;
mod executor;
mod info;
mod inline;
mod parking;
mod pinned;
pub mod raw;
mod routing;
mod session;
mod slot;
mod sqlx_compat;

pub use convert::error as from_sqlx_error;
pub use info::{HOW_TO_ENABLE_SESSIONS, SqliteInfo};
pub use pinned::{PinnedConnection, PinnedGuard};
pub use session::{SqliteSession, SqliteTransaction};

/// The dialect identity that [`SqliteSession`] reports.
pub const DIALECT: liteorm_core::Dialect = liteorm_core::Dialect::SQLITE;
