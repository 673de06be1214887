//! The capability gate: `&dyn Session` to the SQLite dialect, or `Error::Unsupported`.

use liteorm_core::Session;
use liteorm_sqlite::SqliteSession;

use crate::Error;

/// The SQLite session behind `session`, if it is one whose SQLite has the session extension.
pub(crate) fn sqlite<'s>(
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
