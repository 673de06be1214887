//! Merging many changesets (or patchsets) into one: SQLite's changegroup.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::sync::Arc;

use liteorm_core::Session;

use crate::change::Change;
use crate::changeset::BlobKind;
use crate::changeset::sealed::Changes;
#[cfg(sqlite_has_changegroup_add_change)]
use crate::ffi;
use crate::ffi::{Handle, Input, Output, RawChangegroup, RawError};
use crate::format::{Checked, Checker, Section};
use crate::{Error, gate};

/// Many changesets (or many patchsets, never mixed) merged into one, as if one session had
/// recorded all of their changes: changes to the same row combine (an insert then an update is
/// one insert, an insert then a delete is nothing). [`Changeset::concat`](crate::Changeset::concat)
/// is the two-input case.
///
/// The group holds the merged changes in memory; it can read its inputs from streams
/// ([`Changegroup::add_stream`]) and write its output to one ([`Changegroup::output_stream`]).
/// For stream in, stream out in one call see [`stream::merge`](crate::stream::merge).
///
/// ```
/// use liteorm_changeset::{Changegroup, Changeset, capture};
/// use liteorm_core::Session;
/// use liteorm_sqlite::SqliteSession;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), liteorm_changeset::Error> {
/// let db = SqliteSession::open_in_memory().await?;
/// db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await?;
/// let mut steps = Vec::new();
/// for sql in [
///     "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
///     "UPDATE t SET v = 'c' WHERE id = 1",
///     "DELETE FROM t WHERE id = 2",
/// ] {
///     steps.push(capture(&db, &["t"], move |s| async move {
///         s.execute(sql, &[]).await?;
///         Ok::<_, liteorm_changeset::Error>(())
///     }).await?);
/// }
///
/// // One insert of (1, 'c') is what the three steps add up to.
/// let merged: Changeset = Changegroup::merge(&steps)?;
/// let changes = merged.changes()?;
/// assert_eq!(changes.len(), 1);
/// assert_eq!(changes[0].new[1], Some("c".into()));
///
/// // Or pick changes one by one (SQLite 3.46+).
/// if liteorm_changeset::Capability::ChangegroupAddChange.is_available() {
///     let mut group = Changegroup::new()?;
///     group.add_filtered(&steps[0], |change| change.primary_key() == [2.into()])?;
///     assert_eq!(group.output()?.changes()?.len(), 1);
/// }
/// # Ok(())
/// # }
/// ```
pub struct Changegroup<C> {
    raw: RawChangegroup<'static>,
    /// The header of every table added so far, to explain a schema mismatch.
    headers: HashMap<String, Vec<u8>>,
    /// An add failed: SQLite leaves the group in an undefined state.
    broken: bool,
    _kind: PhantomData<fn() -> C>,
}

impl<C: Changes> Changegroup<C> {
    /// An empty group.
    pub fn new() -> Result<Self, Error> {
        Ok(Changegroup {
            raw: RawChangegroup::new()?,
            headers: HashMap::new(),
            broken: false,
            _kind: PhantomData,
        })
    }

    /// Merges every input, in order, into one.
    pub fn merge<'a, I>(inputs: I) -> Result<C, Error>
    where
        I: IntoIterator<Item = &'a C>,
        C: 'a,
    {
        let mut group = Self::new()?;
        for input in inputs {
            group.add(input)?;
        }
        group.output()
    }

    /// Adds every change of `changes`. A table must have the same columns and primary key in
    /// every input ([`Error::SchemaMismatch`] otherwise; the group cannot be used after an
    /// error).
    pub fn add(&mut self, changes: &C) -> Result<&mut Self, Error> {
        self.usable()?;
        let blob = changes.blob();
        let sections = sections::<C>(&blob);
        let added = self.raw.add(&blob);
        self.added(added, sections)?;
        Ok(self)
    }

    /// Adds the changes of `changes` for which `keep` returns `true`
    /// (`sqlite3changegroup_add_change`). Needs SQLite 3.46
    /// ([`Capability::ChangegroupAddChange`](crate::Capability::ChangegroupAddChange)).
    pub fn add_filtered(
        &mut self,
        changes: &C,
        keep: impl FnMut(&Change) -> bool,
    ) -> Result<&mut Self, Error> {
        crate::Capability::ChangegroupAddChange.require()?;
        self.usable()?;
        #[cfg(sqlite_has_changegroup_add_change)]
        {
            let mut keep = keep;
            let blob = changes.blob();
            let sections = sections::<C>(&blob);
            // `add_change` hashes the iterator's current record like `add` does, so it can
            // read one byte past a patchset DELETE that ends the input: iterate over a copy
            // with a spare byte after it (see `ffi::padded`).
            let spare = ffi::padded(&blob);
            let mut iter = ffi::ChangesetIter::start_v2(&spare[..blob.len()], false)?;
            let (mut table, mut entry, mut added) = (None, 0, Ok(()));
            while added.is_ok()
                && iter
                    .advance()
                    .map_err(|e| crate::iter::invalid(C::KIND.name(), entry, e))?
            {
                let change = iter
                    .current()
                    .change(&mut table)
                    .map(Change::from)
                    .map_err(|e| crate::iter::invalid(C::KIND.name(), entry, e))?;
                if keep(&change) {
                    added = self.raw.add_change(&iter);
                }
                entry += 1;
            }
            self.added(added, sections)?;
        }
        #[cfg(not(sqlite_has_changegroup_add_change))]
        let _ = (changes, keep);
        Ok(self)
    }

    /// Adds every change `input` reads (a changeset stream for a group of changesets, a
    /// patchset stream for patchsets), checked as SQLite reads it. The group holds what it
    /// merged in memory; the input is read in small chunks. After an error (malformed input,
    /// a read error, a table that does not match earlier changes) the group cannot be used.
    pub fn add_stream<R: Read>(&mut self, input: R) -> Result<&mut Self, Error> {
        self.usable()?;
        let mut input = Input::new(Checked::surveying_kind(input, C::MARKER));
        let added = self.raw.add_strm(&mut input);
        let sections = input.reader.checker().sections().to_vec();
        // Part of the stream may be in the group: unlike a refused blob, it is not as it was.
        self.added(added, sections)
            .inspect_err(|_| self.broken = true)?;
        Ok(self)
    }

    /// The merged changes.
    pub fn output(&self) -> Result<C, Error> {
        self.usable()?;
        Ok(C::from_trusted(self.raw.output()?))
    }

    /// Writes the merged changes to `output` in chunks, without building them in memory
    /// first; returns `output`.
    pub fn output_stream<W: Write>(&self, output: W) -> Result<W, Error> {
        self.usable()?;
        let mut output = Output::new(output);
        self.raw.output_strm(&mut output)?;
        output.writer.flush()?;
        Ok(output.writer)
    }

    /// Merges `inputs` into changes that match the schema of the `main` database of `session`
    /// (`sqlite3changegroup_schema`): an input recorded before columns were added to a table
    /// (with fewer columns) is filled up with the columns' default values, so changes from
    /// before and after an `ALTER TABLE ADD COLUMN` merge into one. An input that does not fit
    /// the schema is an [`Error::SchemaMismatch`]. Needs SQLite 3.44
    /// ([`Capability::ChangegroupSchema`](crate::Capability::ChangegroupSchema)).
    pub async fn merge_with_schema<I>(session: &dyn Session, inputs: I) -> Result<C, Error>
    where
        I: IntoIterator<Item = C>,
    {
        let sqlite = gate::gate(session, "merging changes to a schema")?;
        crate::Capability::ChangegroupSchema.require()?;
        let blobs: Vec<Arc<[u8]>> = inputs.into_iter().map(|c| c.blob()).collect();
        let pinned = sqlite.pin().await?;
        let mut guard = pinned.lock().await?;
        let task = liteorm_sqlite::blocking::spawn(move || {
            let merged = guard.with_raw_blocking(|db| merge_to_schema::<C>(db, &blobs));
            drop(guard);
            drop(pinned);
            merged
        });
        let merged = task
            .await
            .map_err(|panic| Error::task_failed("changegroup task", panic))???;
        Ok(C::from_trusted(merged))
    }

    fn usable(&self) -> Result<(), Error> {
        usable(self.broken)
    }

    /// Records the outcome of an add of the changes with these `sections`.
    fn added(&mut self, added: Result<(), RawError>, sections: Vec<Section>) -> Result<(), Error> {
        let err = match added {
            Ok(()) => {
                for section in sections {
                    self.headers.entry(section.table).or_insert(section.pk);
                }
                return Ok(());
            }
            // Refused before SQLite saw it (too large): the group is as it was.
            Err(err) if err.code().is_none() => return Err(err.into()),
            Err(err) => err,
        };
        self.broken = true;
        let mismatch = sections.iter().find_map(|section| {
            let earlier = self.headers.get(&section.table)?;
            (*earlier != section.pk).then(|| Error::SchemaMismatch {
                table: section.table.clone(),
                detail: format!(
                    "earlier changes record {} columns (primary key flags {earlier:?}), these \
                     record {} (primary key flags {:?})",
                    earlier.len(),
                    section.pk.len(),
                    section.pk
                ),
            })
        });
        Err(mismatch.unwrap_or_else(|| err.into()))
    }
}

impl<C> fmt::Debug for Changegroup<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changegroup")
            .field("tables", &self.headers.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// `Ok` unless an earlier add to a changegroup failed (SQLite leaves the group in an undefined
/// state then).
pub(crate) fn usable(broken: bool) -> Result<(), Error> {
    if broken {
        Err(Error::Misuse(
            "an earlier add to this changegroup failed, leaving it unusable",
        ))
    } else {
        Ok(())
    }
}

/// The table sections of a validated blob.
fn sections<C: Changes>(blob: &[u8]) -> Vec<Section> {
    let mut checker = Checker::new(Some(C::MARKER)).surveying();
    // The blob was validated on construction, so this cannot fail; if it did, there would
    // just be no headers to explain an error with.
    let _ = checker.feed(blob);
    checker.sections().to_vec()
}

/// Merges `blobs` conformed to the schema of `main` of `db`.
#[cfg(sqlite_has_changegroup_schema)]
fn merge_to_schema<C: Changes>(db: Handle<'_>, blobs: &[Arc<[u8]>]) -> Result<Arc<[u8]>, Error> {
    // The group reads the schema through `db`, so it lives and dies inside this call, while the
    // connection is locked.
    let mut group = RawChangegroup::new()?;
    group.schema(db)?;
    for blob in blobs {
        match group.add(blob) {
            Ok(()) => {}
            Err(err) if err.is_schema() => {
                return Err(schema_mismatch(db, blob, C::KIND).unwrap_or_else(|| err.into()));
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(group.output()?)
}

#[cfg(not(sqlite_has_changegroup_schema))]
fn merge_to_schema<C: Changes>(_db: Handle<'_>, _blobs: &[Arc<[u8]>]) -> Result<Arc<[u8]>, Error> {
    crate::Capability::ChangegroupSchema.require()?;
    Err(Error::Misuse("changegroup schemas are not compiled in"))
}

/// The first table of `blob` that does not fit `main` of `db`, as an error.
pub(crate) fn schema_mismatch(db: Handle<'_>, blob: &[u8], kind: BlobKind) -> Option<Error> {
    let tables = crate::apply::survey(blob, kind).ok()?;
    let mut names: Vec<&String> = tables.keys().collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let reason = crate::apply::table_compatibility(db, name, &tables[name]);
        match reason {
            Ok(Some(reason)) => Some(Error::SchemaMismatch {
                table: name.clone(),
                detail: reason.to_string(),
            }),
            Ok(None) => None,
            Err(err) => Some(err),
        }
    })
}
