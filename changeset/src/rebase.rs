//! Rebasing: rewriting local changes so they apply cleanly on top of remote changes that were
//! applied here with conflicts resolved (SQLite's experimental `sqlite3_rebaser`).

use std::fmt;
use std::sync::Arc;

use crate::ffi::RawRebaser;
use crate::{Changeset, Error, format};

/// How an apply resolved its conflicts, in SQLite's rebase format: what a [`Rebaser`] needs to
/// rebase local changes over the changes that were applied. Every apply returns one in
/// [`ApplyReport::rebase`](crate::ApplyReport::rebase); it is empty when no conflict was resolved
/// with `Omit` or `Replace` (and always for a patchset). Owned, `Send + Sync`, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RebaseBuffer(Arc<[u8]>);

impl RebaseBuffer {
    /// Validates untrusted bytes (a rebase buffer has the structure of a changeset).
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Result<Self, Error> {
        let bytes = bytes.into();
        format::check(&bytes, format::CHANGESET).map_err(|m| Error::Invalid {
            kind: "rebase buffer",
            entry: m.entry,
            offset: Some(m.offset),
            reason: m.reason,
        })?;
        Ok(RebaseBuffer(bytes))
    }

    /// Wraps bytes SQLite produced for this process.
    pub(crate) fn trusted(bytes: Arc<[u8]>) -> Self {
        RebaseBuffer(bytes)
    }

    /// The serialized bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no conflict resolution is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl AsRef<[u8]> for RebaseBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for RebaseBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RebaseBuffer({} bytes)", self.0.len())
    }
}

/// Rebases local changesets over remote changes that were applied here with conflicts resolved.
///
/// Two databases make changes independently, then exchange them. Here the remote changeset was
/// applied with a conflict handler, and the local changes won (`Omit`) or lost (`Replace`) some
/// conflicts. Sending the local changeset as it is would conflict on the other side again;
/// rebased with the resolutions of this apply it carries them along: a change that lost is
/// dropped or trimmed, one that won gets the remote values as its old values, so that the
/// other database converges on what this one has. Patchsets cannot be rebased.
///
/// ```
/// use changeset::{ConflictAction, Rebaser, apply, capture};
/// use liteorm_core::Session;
/// use liteorm_sqlite::SqliteSession;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), changeset::Error> {
/// let here = SqliteSession::open_in_memory().await?;
/// let there = SqliteSession::open_in_memory().await?;
/// for db in [&here, &there] {
///     db.execute_batch("CREATE TABLE doc(id INTEGER PRIMARY KEY, title TEXT);
///                       INSERT INTO doc VALUES (1, 'draft')").await?;
/// }
/// let edit = |db, title: &'static str| capture(db, &["doc"], move |s| async move {
///     s.execute("UPDATE doc SET title = ? WHERE id = 1", &[title.into()]).await?;
///     Ok::<_, changeset::Error>(())
/// });
/// let local = edit(&here, "ours").await?;
/// let remote = edit(&there, "theirs").await?;
///
/// // Apply theirs here, keeping ours where they conflict...
/// let report = apply(&here, &remote).on_conflict(|_| ConflictAction::Omit).await?;
/// // ...and send ours there rebased on that decision: it now applies without a conflict.
/// let mut rebaser = Rebaser::new()?;
/// rebaser.configure(&report.rebase)?;
/// apply(&there, &rebaser.rebase(&local)?).await?;
///
/// assert_eq!(title(&here).await?, "ours");
/// assert_eq!(title(&there).await?, "ours");
/// # Ok(())
/// # }
///
/// async fn title(db: &SqliteSession) -> Result<String, changeset::Error> {
///     Ok(db.query("SELECT title FROM doc", &[]).await?[0].try_get(0)?)
/// }
/// ```
pub struct Rebaser {
    raw: RawRebaser,
}

impl Rebaser {
    /// A rebaser with no resolutions yet.
    pub fn new() -> Result<Self, Error> {
        Ok(Rebaser {
            raw: RawRebaser::new()?,
        })
    }

    /// Adds the resolutions of one apply (call once per remote changeset applied).
    pub fn configure(&mut self, resolutions: &RebaseBuffer) -> Result<(), Error> {
        if resolutions.is_empty() {
            return Ok(());
        }
        self.raw.configure(resolutions.as_bytes())
    }

    /// `local`, rewritten to carry the configured resolutions.
    pub fn rebase(&mut self, local: &Changeset) -> Result<Changeset, Error> {
        if local.is_empty() {
            return Ok(Changeset::default());
        }
        Ok(Changeset::trusted(self.raw.rebase(local.as_bytes())?))
    }
}

impl fmt::Debug for Rebaser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rebaser").finish_non_exhaustive()
    }
}
