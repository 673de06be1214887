//! SQLite's session extension (changesets and patchsets) for liteorm sessions, in async Rust.
//!
//! A changeset is a compact binary description of the rows a set of statements changed. Capture
//! one on a primary with [`capture`], ship its bytes, and [`apply`] it to a replica with a conflict
//! policy; [`Changeset::invert`] gives the changeset that undoes it (an audit log's "revert") and
//! [`Changeset::concat`] merges two. Every entry point takes a `&dyn liteorm_core::Session` and
//! works only on the SQLite dialect: any other dialect gets [`Error::Unsupported`].
//!
//! Beyond that, the whole session extension:
//!
//! - **Inspect**: [`Changeset::iter`] decodes [`Change`]s one at a time; [`inspect`] renders them
//!   as stable JSON ([`Changeset::to_json`]) or SQL ([`Changeset::to_sql`]); untrusted bytes are
//!   validated by [`Changeset::from_bytes`], with errors naming the change and byte.
//! - **Capture options** on [`Capture`]: indirect changes, a table filter, tables without a
//!   primary key, and a [`Recorder`] to pause recording or look at its size mid-capture.
//! - **Build** changesets and patchsets by hand with a [`Builder`], or from the JSON format
//!   ([`Changeset::from_json`]): what SQLite decoded builds the same bytes again.
//! - [`Diff`]: the changeset between a table of another database and the one in `main`.
//! - [`Changegroup`]: many changesets merged into one, optionally conformed to a schema.
//! - [`Apply`] flags (invert, no savepoint, ignore no-ops, FK no action) and a [`Rebaser`] fed
//!   by the [`RebaseBuffer`] an apply returns when asked ([`Apply::rebase_buffer`]).
//! - [`stream`]: apply, invert, concat, merge and iterate changesets over `Read`/`Write` in
//!   bounded memory.
//!
//! Features that need a newer SQLite than the one linked (see [`Capability`]) return
//! [`Error::Unsupported`] naming the version they need.
//!
//! ```
//! use liteorm_changeset::{ConflictAction, ConflictKind, apply, capture};
//! use liteorm_core::Session;
//! use liteorm_sqlite::SqliteSession;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), liteorm_changeset::Error> {
//! let primary = SqliteSession::open_in_memory().await?;
//! let replica = SqliteSession::open_in_memory().await?;
//! for db in [&primary, &replica] {
//!     db.execute_batch("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)").await?;
//! }
//!
//! // Record what the closure does, through the pinned session it is handed.
//! let changes = capture(&primary, &["users"], |s| async move {
//!     s.execute("INSERT INTO users VALUES (?, ?)", &[1.into(), "ada".into()]).await?;
//!     Ok::<_, liteorm_changeset::Error>(())
//! })
//! .await?;
//!
//! // Replay it elsewhere; a row that already exists is overwritten.
//! replica.execute("INSERT INTO users VALUES (1, 'someone else')", &[]).await?;
//! let report = apply(&replica, &changes)
//!     .on_conflict(|c| match c.kind {
//!         ConflictKind::Conflict => ConflictAction::Replace,
//!         _ => ConflictAction::Abort,
//!     })
//!     .await?;
//! assert_eq!(report.replaced, 1);
//!
//! // And undo it.
//! apply(&replica, &changes.invert()?).await?;
//! assert!(replica.query("SELECT * FROM users", &[]).await?.is_empty());
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]

// First: its macro is used by the modules below (macros are scoped by textual order).
#[macro_use]
mod capability_table;

mod apply;
mod build;
mod capability;
mod capture;
mod change;
mod changeset;
mod conflict;
mod diff;
pub mod driver;
mod error;
// The one module allowed `unsafe`: every call into libsqlite3-sys.
#[allow(unsafe_code)]
mod ffi;
mod format;
mod gate;
mod group;
pub mod inspect;
mod iter;
mod rebase;
mod schema_group;
pub mod stream;

pub use apply::{Apply, ApplyReport, ConflictCounts, ConflictRef, SkipReason, SkippedTable, apply};
pub use build::Builder;
pub use capability::{Capability, SQLITE_BUILD_VERSION};
pub use capture::{Capture, CaptureOptions, LentRecording, Recorder, capture};
pub use change::{Change, ChangeOp};
pub use changeset::{Changes, Changeset, Patchset};
pub use conflict::{Conflict, ConflictAction, ConflictKind};
pub use diff::Diff;
pub use error::{Error, Result};
pub use gate::gate;
pub use group::Changegroup;
pub use inspect::ColumnNames;
pub use iter::ChangeIter;
pub use rebase::{RebaseBuffer, Rebaser};
pub use schema_group::SchemaChangegroup;

/// How many SQLite session objects (open captures) exist right now on connections to the
/// database file at `path` (as SQLite names it: the absolute path). Every capture deletes its
/// own, also when it fails or is cancelled, so this is 0 whenever no capture is running there.
pub fn live_session_objects(path: &str) -> usize {
    ffi::live_sessions(path)
}
