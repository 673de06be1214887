//! Applying a changeset or patchset to a Diesel connection, with liteorm's `Apply` builder.

use diesel::SqliteConnection;
use liteorm_changeset::{Apply, Changes};

use crate::ffi::Lent;

/// Applies `changes` to `conn`'s `main` database: liteorm's [`Apply`] builder (conflict
/// handler, table filter, flags, conflict log, rebase buffer), run with [`Apply::run`].
///
/// As with liteorm's sessions, the apply is atomic: without a conflict handler any conflict
/// aborts it and nothing is applied
/// ([`Error::Aborted`](liteorm_changeset::Error::Aborted)); a panicking handler or filter
/// rolls it back ([`Error::CallbackPanicked`](liteorm_changeset::Error::CallbackPanicked)) and
/// never unwinds through SQLite. Inside a Diesel transaction (`conn.transaction(|conn| ..)`)
/// the apply joins it; outside one it runs in its own `BEGIN IMMEDIATE` transaction.
///
/// ```
/// use diesel::prelude::*;
/// use diesel::sql_query;
/// use liteorm_changeset::{ConflictAction, ConflictKind};
///
/// # fn main() -> Result<(), liteorm_diesel::Error> {
/// let mut primary = SqliteConnection::establish(":memory:")?;
/// let mut replica = SqliteConnection::establish(":memory:")?;
/// for conn in [&mut primary, &mut replica] {
///     sql_query("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(conn)?;
/// }
/// sql_query("INSERT INTO users VALUES (1, 'someone else')").execute(&mut replica)?;
/// let changes = liteorm_diesel::capture(&mut primary, &["users"], |conn| {
///     sql_query("INSERT INTO users VALUES (1, 'ada')").execute(conn)?;
///     Ok::<_, liteorm_diesel::Error>(())
/// })?;
/// let report = liteorm_diesel::apply(&mut replica, &changes)
///     .on_conflict(|c| match c.kind {
///         ConflictKind::Conflict => ConflictAction::Replace, // the primary wins
///         _ => ConflictAction::Abort,
///     })
///     .run()?;
/// assert_eq!(report.replaced, 1);
/// # Ok(())
/// # }
/// ```
pub fn apply<'c, C: Changes>(conn: &'c mut SqliteConnection, changes: &C) -> Apply<'c, Lent<'c>> {
    Apply::on(Lent(conn), changes)
}
