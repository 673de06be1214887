//! The one place with `unsafe`: a Diesel connection lends its `sqlite3*` to the changeset
//! engine, as a [`Handle`] valid for one call.

use std::ptr::NonNull;

use diesel::SqliteConnection;
use liteorm_changeset::driver::{Handle, RawConnection};

/// A Diesel SQLite connection, lent to the changeset engine for the calls made through it.
///
/// Made by this crate's functions ([`apply`](crate::apply) returns an `Apply` on one); it
/// borrows the connection mutably, so Diesel makes no call on it while the engine holds the
/// handle.
pub struct Lent<'c>(pub(crate) &'c mut SqliteConnection);

impl std::fmt::Debug for Lent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lent(SqliteConnection)")
    }
}

impl RawConnection for Lent<'_> {
    fn with_handle<R>(&mut self, f: impl FnOnce(Handle<'_>) -> R) -> R {
        // SAFETY: `with_raw_connection` lends the pointer of the connection we borrow mutably
        // for the whole call, so Diesel makes no call on it and nobody closes it until `f`
        // returns, and `Handle`'s lifetime keeps it inside `f`. Diesel opens its connections in
        // the library's default threading mode (serialized for libsqlite3-sys builds) and uses
        // them from one thread at a time (`SqliteConnection` is `Send`, not `Sync`). The engine
        // leaves no state behind that Diesel tracks: an apply outside a transaction opens and
        // ends its own within the call, inside one it uses a savepoint it releases; a capture's
        // session object records what Diesel runs and is deleted before the transaction ends.
        // Prepared statements in Diesel's cache that an apply expires are re-prepared by SQLite.
        unsafe {
            self.0.with_raw_connection(|db| {
                let db = NonNull::new(db).expect("Diesel's connection pointer is never NULL");
                // SAFETY: as above: valid, unshared and kept open for the duration of `f`.
                f(Handle::from_raw(db))
            })
        }
    }
}
