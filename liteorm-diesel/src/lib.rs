//! Diesel 2.4 on liteorm: SQLite changesets captured, applied and logged on a Diesel
//! `SqliteConnection`, through the same engine as liteorm's own sessions.
//!
//! - [`capture`] / [`patchset`] run a closure of Diesel writes inside a Diesel transaction and
//!   return what it changed; [`capture_with`] takes every capture option.
//! - [`apply`] applies a changeset or patchset with liteorm's [`Apply`](liteorm_changeset::Apply)
//!   builder: conflict handler, table filter, flags, report.
//! - [`ChangeLog`] records a unit of Diesel writes with its audit log entry, in one
//!   transaction; [`liteorm_replication`]'s log, revert and replicas work on the same table.
//! - [`async_conn`]: the same on diesel-async's `SyncConnectionWrapper<SqliteConnection>`,
//!   never blocking the executor.
//!
//! A changeset captured here applies through liteorm-sqlite and the reverse: it is SQLite's
//! own format. Diesel 2.4 links the same `libsqlite3-sys` (0.37) as the rest of liteorm.
//!
//! ```
//! use diesel::prelude::*;
//! use liteorm_changeset::ConflictAction;
//!
//! diesel::table! {
//!     users (id) {
//!         id -> Integer,
//!         name -> Text,
//!     }
//! }
//!
//! # fn main() -> Result<(), liteorm_diesel::Error> {
//! let mut primary = SqliteConnection::establish(":memory:")?;
//! let mut replica = SqliteConnection::establish(":memory:")?;
//! for conn in [&mut primary, &mut replica] {
//!     diesel::sql_query("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
//!         .execute(conn)?;
//! }
//!
//! // Diesel writes inside the closure are recorded, in one transaction.
//! let changes = liteorm_diesel::capture(&mut primary, &["users"], |conn| {
//!     diesel::insert_into(users::table)
//!         .values((users::id.eq(1), users::name.eq("ada")))
//!         .execute(conn)?; // `?` on Diesel's error
//!     Ok::<_, liteorm_diesel::Error>(())
//! })?;
//!
//! // Replay them on another database, and undo them there.
//! liteorm_diesel::apply(&mut replica, &changes).run()?;
//! assert_eq!(users::table.select(users::name).first::<String>(&mut replica)?, "ada");
//! liteorm_diesel::apply(&mut replica, &changes.invert()?)
//!     .on_conflict(|_| ConflictAction::Abort)
//!     .run()?;
//! assert_eq!(users::table.count().get_result::<i64>(&mut replica)?, 0);
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]

mod apply;
pub mod async_conn;
mod capture;
mod error;
// The one module allowed `unsafe`: Diesel lends its `sqlite3*`.
#[allow(unsafe_code)]
mod ffi;
mod log;

pub use apply::apply;
pub use capture::{capture, capture_with, patchset, patchset_with};
pub use error::{Error, Result};
pub use ffi::Lent;
pub use log::ChangeLog;
