//! The capability gate: `&dyn Session` to the SQLite dialect, or `Error::Unsupported`.

use liteorm_core::Session;
use liteorm_sqlite::SqliteSession;

use crate::Error;

/// The SQLite session behind `session`, if it is one whose SQLite has the session extension;
/// otherwise [`Error::Unsupported`] naming `capability` (what was asked for, e.g. `"change
/// logs"`) and the session's dialect. Every crate built on changesets gates with this.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), liteorm_changeset::Error> {
/// let db = liteorm_sqlite::SqliteSession::open_in_memory().await?;
/// let sqlite = liteorm_changeset::gate(&db, "my capability")?;
/// assert!(sqlite.info().session_extension);
/// # Ok(())
/// # }
/// ```
pub fn gate<'s>(
    session: &'s dyn Session,
    capability: &'static str,
) -> Result<&'s SqliteSession, Error> {
    let sqlite = session
        .as_any()
        .downcast_ref::<SqliteSession>()
        .ok_or(Error::Unsupported {
            capability,
            dialect: session.dialect(),
        })?;
    sqlite.info().require_session_extension()?;
    Ok(sqlite)
}
