//! The engine on a connection lent by any SQLite driver: the capability a driver implements
//! ([`RawConnection`], and [`BlockingConnection`] for async code), over which capture
//! ([`CaptureOptions::start`](crate::CaptureOptions::start)) and apply
//! ([`Apply::on`](crate::Apply::on)) run the same code as on a liteorm session.
//!
//! A driver crate (`liteorm-diesel`, say) lends its connection's `sqlite3*` as a
//! [`Handle`], keeps its own transactions, and leaves everything else to this crate:
//!
//! ```
//! use liteorm_changeset::driver::{Handle, RawConnection};
//! use liteorm_changeset::{Apply, CaptureOptions};
//! use liteorm_core::Session;
//! use liteorm_sqlite::SqliteSession;
//!
//! /// A liteorm pinned connection standing in for another driver's connection.
//! struct Lent(liteorm_sqlite::PinnedGuard);
//!
//! impl RawConnection for Lent {
//!     fn with_handle<R>(&mut self, f: impl FnOnce(Handle<'_>) -> R) -> R {
//!         self.0.with_raw_blocking(f).expect("the connection is alive")
//!     }
//! }
//!
//! # fn main() -> Result<(), liteorm_changeset::Error> {
//! # let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
//! # let _context = runtime.enter();
//! let db = runtime.block_on(SqliteSession::open_in_memory())?;
//! runtime.block_on(db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"))?;
//! let pinned = runtime.block_on(db.pin())?;
//! let mut conn = Lent(runtime.block_on(pinned.lock())?);
//!
//! // The driver's transaction, the session object, the work, the changeset, the commit.
//! runtime.block_on(conn.0.begin_immediate())?;
//! let recording = CaptureOptions::new().tables(["t"]).start(&mut conn)?;
//! runtime.block_on(conn.0.execute_batch("INSERT INTO t VALUES (1, 'a')"))?;
//! let changes = recording.changeset(&mut conn)?;
//! runtime.block_on(conn.0.commit())?;
//!
//! // Applying it again conflicts: omitted, as the handler says.
//! let report = Apply::on(&mut conn, &changes)
//!     .on_conflict(|_| liteorm_changeset::ConflictAction::Omit)
//!     .run()?;
//! assert_eq!(report.omitted, 1);
//! # Ok(())
//! # }
//! ```

use std::future::Future;

pub use liteorm_sqlite::raw::Handle;

use crate::Error;

/// A connection that lends its `sqlite3*` for the duration of a call: what a driver
/// implements (with [`Handle::from_raw`] and a SAFETY argument) for capture and apply to run
/// on it.
pub trait RawConnection {
    /// Runs `f` with the connection's handle, on the calling thread; nothing else uses the
    /// connection meanwhile.
    fn with_handle<R>(&mut self, f: impl FnOnce(Handle<'_>) -> R) -> R;
}

impl<C: RawConnection + ?Sized> RawConnection for &mut C {
    fn with_handle<R>(&mut self, f: impl FnOnce(Handle<'_>) -> R) -> R {
        (**self).with_handle(f)
    }
}

/// A connection that async code reaches through a blocking thread (as diesel-async's
/// `SyncConnectionWrapper` does): awaiting an [`Apply`](crate::Apply) on it runs the apply
/// there, so the executor keeps running.
pub trait BlockingConnection: Send {
    /// Runs `f` with the connection's handle on a thread that may block; resolves to its
    /// result, or to an error if the connection could not be reached. The work runs to its end
    /// even if the future is dropped.
    fn with_handle_blocking<R: Send + 'static>(
        self,
        f: impl FnOnce(Handle<'_>) -> Result<R, Error> + Send + 'static,
    ) -> impl Future<Output = Result<R, Error>> + Send;
}
