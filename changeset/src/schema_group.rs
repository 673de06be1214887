//! A changegroup conformed to a database's schema, fed one input at a time.

use std::fmt;
use std::marker::PhantomData;

use liteorm_core::Session;
use liteorm_sqlite::{PinnedConnection, PinnedGuard};

use crate::changeset::sealed::Changes;
use crate::{Error, gate};

use crate::ffi::RawSchemaGroup;

/// Changes merged as a [`Changegroup`](crate::Changegroup) merges them, conformed to the schema
/// of a database's `main` (`sqlite3changegroup_schema`), one input at a time: changes recorded
/// before `ALTER TABLE ... ADD COLUMN` get the new columns' default values, so they merge with
/// changes recorded after it. [`Changegroup::merge_with_schema`](crate::Changegroup::merge_with_schema)
/// is the one-call form. Needs SQLite 3.44
/// ([`Capability::ChangegroupSchema`](crate::Capability::ChangegroupSchema)).
///
/// The group reads the schema through one connection of the session, which it keeps pinned
/// and locked while it lives: drop it when done.
///
/// ```
/// use liteorm_changeset::{Capability, Changeset, SchemaChangegroup, capture};
/// use liteorm_core::Session;
/// use liteorm_sqlite::SqliteSession;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), liteorm_changeset::Error> {
/// let db = SqliteSession::open_in_memory().await?;
/// db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await?;
/// let before = capture(&db, &["t"], |s| async move {
///     s.execute("INSERT INTO t VALUES (1, 'one')", &[]).await?;
///     Ok::<_, liteorm_changeset::Error>(())
/// })
/// .await?;
/// db.execute_batch("ALTER TABLE t ADD COLUMN note TEXT DEFAULT 'none'").await?;
/// let after = capture(&db, &["t"], |s| async move {
///     s.execute("INSERT INTO t VALUES (2, 'two', 'new')", &[]).await?;
///     Ok::<_, liteorm_changeset::Error>(())
/// })
/// .await?;
///
/// if Capability::ChangegroupSchema.is_available() {
///     let mut group = SchemaChangegroup::<Changeset>::new(&db).await?;
///     group.add(&before).await?.add(&after).await?;
///     let merged = group.output()?;
///     // Both inserts, each with three columns.
///     assert!(merged.changes()?.iter().all(|c| c.new.len() == 3));
/// }
/// # Ok(())
/// # }
/// ```
pub struct SchemaChangegroup<C> {
    // Declared first: dropped before the connection whose schema it reads.
    raw: RawSchemaGroup,
    guard: PinnedGuard,
    _pinned: PinnedConnection,
    /// An add failed: SQLite leaves the group in an undefined state.
    broken: bool,
    _kind: PhantomData<fn() -> C>,
}

impl<C: Changes> SchemaChangegroup<C> {
    /// An empty group conformed to the schema of `main` of `session`'s database.
    pub async fn new(session: &dyn Session) -> Result<Self, Error> {
        let sqlite = gate::gate(session, "merging changes to a schema")?;
        crate::Capability::ChangegroupSchema.require()?;
        let pinned = sqlite.pin().await?;
        let mut guard = pinned.lock().await?;
        let raw = guard.with_raw(RawSchemaGroup::new).await??;
        Ok(SchemaChangegroup {
            raw,
            guard,
            _pinned: pinned,
            broken: false,
            _kind: PhantomData,
        })
    }

    /// Adds every change of `changes`, conformed to the schema. A table that cannot be
    /// conformed (missing, other key, more columns than the table) is an
    /// [`Error::SchemaMismatch`] naming it; the group cannot be used after an error.
    pub async fn add(&mut self, changes: &C) -> Result<&mut Self, Error> {
        self.usable()?;
        {
            let blob = changes.blob();
            let raw = &mut self.raw;
            let added = self
                .guard
                .with_raw(|db| match raw.add(db, &blob) {
                    Ok(()) => Ok(()),
                    Err(err) if err.is_schema() => {
                        Err(crate::group::schema_mismatch(db, &blob, C::KIND)
                            .unwrap_or_else(|| err.into()))
                    }
                    Err(err) => Err(Error::from(err)),
                })
                .await?;
            if let Err(err) = added {
                self.broken = true;
                return Err(err);
            }
        }
        Ok(self)
    }

    /// The merged changes.
    pub fn output(&self) -> Result<C, Error> {
        self.usable()?;
        Ok(C::from_trusted(self.raw.output()?))
    }

    fn usable(&self) -> Result<(), Error> {
        crate::group::usable(self.broken)
    }
}

impl<C> fmt::Debug for SchemaChangegroup<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaChangegroup")
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}
