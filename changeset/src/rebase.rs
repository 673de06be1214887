//! Rebasing: rewriting local changes so they apply cleanly on top of remote changes that were
//! applied here with conflicts resolved (SQLite's experimental `sqlite3_rebaser`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::ffi::{Input, Output, RawRebaser};
use crate::format::{ChangeAt, Checked, CheckedWriter, Checker, Item, Malformed, Section};
use crate::{Changeset, Error, format};

/// How an apply resolved its conflicts, in SQLite's rebase format: what a [`Rebaser`] needs to
/// rebase local changes over the changes that were applied. An apply returns one in
/// [`ApplyReport::rebase`](crate::ApplyReport::rebase) when asked with
/// [`Apply::rebase_buffer`](crate::Apply::rebase_buffer); it is empty otherwise, when no conflict
/// was resolved with `Omit` or `Replace`, and always for a patchset. Owned, `Send + Sync`, cheap
/// to clone.
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
/// use liteorm_changeset::{ConflictAction, Rebaser, apply, capture};
/// use liteorm_core::Session;
/// use liteorm_sqlite::SqliteSession;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), liteorm_changeset::Error> {
/// let here = SqliteSession::open_in_memory().await?;
/// let there = SqliteSession::open_in_memory().await?;
/// for db in [&here, &there] {
///     db.execute_batch("CREATE TABLE doc(id INTEGER PRIMARY KEY, title TEXT);
///                       INSERT INTO doc VALUES (1, 'draft')").await?;
/// }
/// let edit = |db, title: &'static str| capture(db, &["doc"], move |s| async move {
///     s.execute("UPDATE doc SET title = ? WHERE id = 1", &[title.into()]).await?;
///     Ok::<_, liteorm_changeset::Error>(())
/// });
/// let local = edit(&here, "ours").await?;
/// let remote = edit(&there, "theirs").await?;
///
/// // Apply theirs here, keeping ours where they conflict...
/// let report = apply(&here, &remote)
///     .on_conflict(|_| ConflictAction::Omit)
///     .rebase_buffer()
///     .await?;
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
/// async fn title(db: &SqliteSession) -> Result<String, liteorm_changeset::Error> {
///     Ok(db.query("SELECT title FROM doc", &[]).await?[0].try_get(0)?)
/// }
/// ```
pub struct Rebaser {
    raw: RawRebaser,
    /// The primary key flags of every table the configured resolutions name, by name in ASCII
    /// lower case (SQLite matches the names of local tables case-insensitively).
    tables: HashMap<String, Vec<u8>>,
    /// The entry SQLite holds for every row the configured resolutions name, by table name in
    /// ASCII lower case and serialized key (see [`Rebaser::guard_leak`]).
    rows: HashMap<(Vec<u8>, Vec<u8>), Resolved>,
}

/// What SQLite's rebaser holds for one row: the op and indirect flag of its merged entry.
#[derive(Clone, Copy)]
struct Resolved {
    delete: bool,
    indirect: bool,
}

impl Rebaser {
    /// A rebaser with no resolutions yet.
    pub fn new() -> Result<Self, Error> {
        Ok(Rebaser {
            raw: RawRebaser::new()?,
            tables: HashMap::new(),
            rows: HashMap::new(),
        })
    }

    /// Adds the resolutions of one apply (call once per remote changeset applied). A table
    /// must have the same columns and primary key in every buffer ([`Error::SchemaMismatch`]).
    pub fn configure(&mut self, resolutions: &RebaseBuffer) -> Result<(), Error> {
        if resolutions.is_empty() {
            return Ok(());
        }
        let sections = headers(resolutions.as_bytes());
        for section in &sections {
            if let Some(earlier) = self.tables.get(&section.table.to_ascii_lowercase()) {
                mismatch(
                    &section.table,
                    earlier,
                    &section.pk,
                    "earlier resolutions",
                    "these",
                )?;
            }
        }
        let resolutions = self.guard_leak(resolutions.as_bytes());
        self.raw.configure(&resolutions)?;
        for section in sections {
            self.tables
                .entry(section.table.to_ascii_lowercase())
                .or_insert(section.pk);
        }
        Ok(())
    }

    /// `resolutions` without the changes for a row whose entry in SQLite's rebaser is already an
    /// indirect DELETE (a remote delete resolved with `Replace`), in this buffer or an earlier
    /// one.
    ///
    /// SQLite (3.51.3 to at least 3.54.1) leaks such an entry: `sessionChangeMerge` means to keep
    /// it (`*ppNew = pExist`) and ignore the later change, but then returns NULL, so the entry,
    /// already unlinked from the rebaser's hash table, is dropped and never freed (found by the
    /// `rebase` fuzz target under LeakSanitizer; a C reproducer is in
    /// `tests/repro/rebaser_configure_leak.c`). Leaving those changes out is what SQLite meant,
    /// and it keeps the resolution that SQLite would lose. The entries are tracked as SQLite
    /// merges them: a new row takes the change's op and flag; a merged one the later op and
    /// either flag.
    fn guard_leak<'a>(&mut self, resolutions: &'a [u8]) -> Cow<'a, [u8]> {
        let mut skipped: Vec<ChangeAt> = Vec::new();
        let mut table: Vec<u8> = Vec::new();
        let mut flags: Vec<u8> = Vec::new();
        let rows = &mut self.rows;
        // The buffer was validated on construction, so the walk sees all of it; if it did not,
        // SQLite would refuse the buffer.
        let _ = format::walk(resolutions, |item| match item {
            Item::Header { name, pk } => {
                table = name.to_ascii_lowercase();
                flags = pk.to_vec();
            }
            Item::Change(change) => {
                let key = format::key_fields(resolutions, change.record, &flags);
                let this = Resolved {
                    delete: change.is_delete(),
                    indirect: change.indirect,
                };
                match rows.entry((table.clone(), key)) {
                    Entry::Vacant(row) => {
                        row.insert(this);
                    }
                    Entry::Occupied(row) if row.get().delete && row.get().indirect => {
                        skipped.push(change);
                    }
                    Entry::Occupied(mut row) => {
                        let indirect = this.indirect || row.get().indirect;
                        row.insert(Resolved { indirect, ..this });
                    }
                }
            }
        });
        if skipped.is_empty() {
            return Cow::Borrowed(resolutions);
        }
        let mut kept = Vec::with_capacity(resolutions.len());
        let mut at = 0;
        for change in skipped {
            kept.extend_from_slice(&resolutions[at..change.start]);
            at = change.end;
        }
        kept.extend_from_slice(&resolutions[at..]);
        Cow::Owned(kept)
    }

    /// `local`, rewritten to carry the configured resolutions. A table of `local` that the
    /// resolutions also name must have the same columns and primary key there
    /// ([`Error::SchemaMismatch`]).
    pub fn rebase(&mut self, local: &Changeset) -> Result<Changeset, Error> {
        if local.is_empty() {
            return Ok(Changeset::default());
        }
        // SQLite looks the local changes up in the resolutions by table name only and then
        // walks their records with the resolutions' column count and key flags: a table that
        // differs would make it read past the end of a record (found by the `rebase` fuzz
        // target: a heap-buffer-overflow read in `sessionChangeHash` ← `sessionRebase`).
        for section in headers(local.as_bytes()) {
            if let Some(configured) = self.tables.get(&section.table.to_ascii_lowercase()) {
                mismatch(
                    &section.table,
                    configured,
                    &section.pk,
                    "the resolutions",
                    "the local changes",
                )?;
            }
        }
        // SQLite builds the output from the local records and the resolutions without checking
        // it: from some valid inputs it writes a change whose key is NULL (found by the `rebase`
        // fuzz target), which SQLite's own apply would then bind unchecked. Check it like
        // untrusted bytes.
        let rebased = self.raw.rebase(local.as_bytes())?;
        Changeset::from_bytes(rebased).map_err(|err| match err {
            Error::Invalid {
                entry,
                offset,
                reason,
                ..
            } => Error::Invalid {
                kind: "rebased changeset",
                entry,
                offset,
                reason,
            },
            other => other,
        })
    }

    /// Like [`Rebaser::rebase`], for a changeset that `local` reads, writing the rebased
    /// changeset to `output` in chunks; returns `output` (flushed). SQLite reads the input in
    /// small chunks and writes as it goes, so memory stays bounded by the largest change
    /// whatever the size of the stream (the configured resolutions are in memory, as always).
    ///
    /// The input is untrusted: it is checked on its way to SQLite as [`crate::stream`] input
    /// is ([`Error::Invalid`] naming the change and offset), and a table header that does not
    /// match the resolutions ([`Error::SchemaMismatch`]) is refused before SQLite reads a
    /// record of it. A patchset is [`Error::Misuse`]. The output is checked before it reaches
    /// `output` ([`Error::Invalid`] of kind `"rebased changeset"`). On any error `output` may
    /// hold the start of the rebased changeset: discard it.
    ///
    /// This blocks while it runs; in async code call it from a blocking task.
    pub fn rebase_stream<R: Read, W: Write>(&mut self, local: R, output: W) -> Result<W, Error> {
        let mut input = Input::new(MatchingTables {
            inner: Checked::surveying(local),
            tables: &self.tables,
            checked: 0,
            mismatch: None,
        });
        let mut output = Output::new(CheckedWriter::new(output, format::CHANGESET));
        let rebased = self.raw.rebase_strm(&mut input, &mut output);
        if let Some(mismatch) = input.reader.mismatch.take() {
            return Err(mismatch);
        }
        if input.reader.inner.checker().marker() == Some(format::PATCHSET) {
            return Err(Error::Misuse("a patchset cannot be rebased"));
        }
        if let Some(malformed) = output.writer.malformed() {
            return Err(rebased_invalid(malformed));
        }
        rebased?;
        let mut output = output.writer.finish().map_err(rebased_invalid)?;
        output.flush()?;
        Ok(output)
    }
}

/// The error for a rebased changeset that is not well formed.
fn rebased_invalid(malformed: Malformed) -> Error {
    Error::Invalid {
        kind: "rebased changeset",
        entry: malformed.entry,
        offset: Some(malformed.offset),
        reason: malformed.reason,
    }
}

/// A checked changeset reader that also fails, before SQLite sees them, on a patchset and on a
/// table header whose columns or key differ from the configured resolutions' (see
/// [`Rebaser::rebase`]).
struct MatchingTables<'a, R> {
    inner: Checked<R>,
    /// The configured resolutions' primary key flags, by lower-case table name.
    tables: &'a HashMap<String, Vec<u8>>,
    /// Table sections already compared.
    checked: usize,
    mismatch: Option<Error>,
}

impl<R: Read> Read for MatchingTables<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.inner.checker().marker() == Some(format::PATCHSET) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a patchset cannot be rebased",
            ));
        }
        // A header is surveyed when its last byte has been read, so one that does not match
        // is refused in the read that completes it: SQLite never gets its bytes.
        let sections = self.inner.checker().sections();
        for section in &sections[self.checked..] {
            if let Some(configured) = self.tables.get(&section.table.to_ascii_lowercase())
                && let Err(err) = mismatch(
                    &section.table,
                    configured,
                    &section.pk,
                    "the resolutions",
                    "the local changes",
                )
            {
                let message = err.to_string();
                self.mismatch = Some(err);
                return Err(io::Error::new(io::ErrorKind::InvalidData, message));
            }
        }
        self.checked = sections.len();
        Ok(n)
    }
}

/// The table headers of a validated changeset (or rebase buffer), in order.
fn headers(blob: &[u8]) -> Vec<Section> {
    let mut checker = Checker::new(Some(format::CHANGESET)).surveying();
    // The blob was validated on construction, so this cannot fail; if it did, there would just
    // be fewer headers to check.
    let _ = checker.feed(blob);
    checker.sections().to_vec()
}

/// `Err` unless the two headers of `table` have the same columns and key columns (SQLite only
/// cares whether a column is in the key, not about its position).
fn mismatch(table: &str, a: &[u8], b: &[u8], a_is: &str, b_is: &str) -> Result<(), Error> {
    let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (*x != 0) == (*y != 0));
    if same {
        return Ok(());
    }
    Err(Error::SchemaMismatch {
        table: table.to_owned(),
        detail: format!(
            "{a_is} record {} columns (primary key flags {a:?}), {b_is} record {} (primary key \
             flags {b:?})",
            a.len(),
            b.len()
        ),
    })
}

impl fmt::Debug for Rebaser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rebaser").finish_non_exhaustive()
    }
}
