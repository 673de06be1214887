//! Owned changeset and patchset blobs: validation, iteration, invert and concat without a
//! database connection.

use std::fmt;
use std::sync::Arc;

use crate::build::Builder;
use crate::change::Change;
use crate::inspect::{self, ColumnNames};
use crate::iter::{self, ChangeIter};
use crate::{Error, ffi, format};

/// The first byte of every table section: `T` in a changeset, `P` in a patchset.
const CHANGESET_TABLE: u8 = format::CHANGESET;
const PATCHSET_TABLE: u8 = format::PATCHSET;

pub(crate) use sealed::BlobKind;

/// A [`Changeset`] or a [`Patchset`]: what an apply takes. Sealed: implemented by these two only.
pub trait Changes: sealed::Changes {}

impl<T: sealed::Changes> Changes for T {}

pub(crate) mod sealed {
    use std::sync::Arc;

    /// Which of the two blob formats a blob is in.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum BlobKind {
        /// Old and new values of every changed column.
        Changeset,
        /// Only the key of a deleted row, only new values of an updated one.
        Patchset,
    }

    impl BlobKind {
        /// `"changeset"` or `"patchset"`, as errors name it.
        pub(crate) const fn name(self) -> &'static str {
            match self {
                BlobKind::Changeset => "changeset",
                BlobKind::Patchset => "patchset",
            }
        }

        /// The kind a table header marker (`T` or `P`) says; a changeset when none was seen.
        pub(crate) fn of_marker(marker: Option<u8>) -> Self {
            if marker == Some(crate::format::PATCHSET) {
                BlobKind::Patchset
            } else {
                BlobKind::Changeset
            }
        }
    }

    /// Implemented by [`Changeset`](crate::Changeset) and [`Patchset`](crate::Patchset).
    pub trait Changes: Sized {
        /// The blob, shared.
        fn blob(&self) -> Arc<[u8]>;
        /// Wraps bytes SQLite produced for this process.
        fn from_trusted(bytes: Arc<[u8]>) -> Self;
        /// Checks untrusted bytes; returns how many changes they hold.
        fn validate(bytes: &[u8]) -> Result<usize, crate::Error>;
        /// Changeset or patchset.
        const KIND: BlobKind;
        /// The table header marker, `T` or `P`.
        const MARKER: u8;
    }
}

macro_rules! blob_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $marker:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, Default)]
        pub struct $name(Arc<[u8]>);

        impl $name {
            /// Validates untrusted bytes: every change must decode. The error names the change
            /// where decoding failed.
            pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Result<Self, Error> {
                let bytes = bytes.into();
                Self::validate(&bytes)?;
                Ok($name(bytes))
            }

            /// Checks that `bytes` is a well-formed
            #[doc = $kind]
            /// and returns how many changes it holds.
            pub fn validate(bytes: &[u8]) -> Result<usize, Error> {
                // Structure first: SQLite's iterator must never see a malformed blob.
                format::check(bytes, $marker).map_err(|m| Error::Invalid {
                    kind: $kind,
                    entry: m.entry,
                    offset: Some(m.offset),
                    reason: m.reason,
                })?;
                iter::count(bytes, $kind)
            }

            /// Wraps bytes that SQLite itself produced for this process.
            pub(crate) fn trusted(bytes: Arc<[u8]>) -> Self {
                $name(bytes)
            }

            /// The serialized bytes, in SQLite's wire format.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// The size in bytes.
            pub fn len(&self) -> usize {
                self.0.len()
            }

            /// Whether it holds no change.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }

            /// Decodes every change, in stored order (grouped by table; the order of rows within
            /// a table is not defined).
            pub fn changes(&self) -> Result<Vec<Change>, Error> {
                iter::decode(&self.0, $kind)
            }

            /// The names of the tables it changes, in stored order, each once. Reads only the
            /// table headers and skips the records (no value is decoded).
            pub fn tables(&self) -> Result<Vec<String>, Error> {
                if let Some(tables) = format::changed_tables(&self.0) {
                    return Ok(tables);
                }
                // Refused by the walk: the checker names what is wrong.
                let sections = format::checked_sections(&self.0).map_err(|m| Error::Invalid {
                    kind: $kind,
                    entry: m.entry,
                    offset: Some(m.offset),
                    reason: m.reason,
                })?;
                let mut tables: Vec<String> = Vec::new();
                for section in sections.iter().filter(|s| s.changes > 0) {
                    if !tables.contains(&section.table) {
                        tables.push(section.table.clone());
                    }
                }
                Ok(tables)
            }

            /// Iterates the changes, decoding one at a time, in stored order.
            pub fn iter(&self) -> ChangeIter<'_> {
                ChangeIter::new(&self.0, $kind, false)
            }

            /// Renders every change in the stable JSON format of [`crate::inspect`]: an array
            /// with one object per change and line.
            pub fn to_json(&self) -> Result<String, Error> {
                inspect::to_json(self.iter())
            }

            /// Builds one from changes in the JSON format of [`crate::inspect`]: a JSON array (as
            /// [`Self::to_json`] writes) or one change per line. Changes are written in the order
            /// given, so the JSON of a blob builds the same bytes again.
            pub fn from_json(json: &str) -> Result<Self, Error> {
                let mut builder = Builder::<$name>::new();
                for change in inspect::from_json(json, $kind)? {
                    builder.push(&change)?;
                }
                builder.finish()
            }

            /// Renders every change as an SQL statement, one per line (see [`crate::inspect`]),
            /// with the column names `names` knows.
            pub fn to_sql(&self, names: &ColumnNames) -> Result<String, Error> {
                inspect::to_sql(self.iter(), names)
            }

            /// The changes of every part, in order, in one blob: the parts' bytes one after the
            /// other. Unlike [`Self::concat`] nothing is merged: a row changed by several parts
            /// is changed once per part, in order. Applying the result applies the parts one
            /// after the other in one call, in which SQLite prepares its statements once per run
            /// of the same table instead of once per part; the one difference from applying
            /// them in turn is when SQLite checks what it defers: a change that failed on a
            /// constraint is retried at the end of the run of its table, and foreign keys are
            /// checked at the end of the call.
            pub fn join<'a>(parts: impl IntoIterator<Item = &'a Self>) -> Self {
                let parts: Vec<&Self> = parts.into_iter().collect();
                if let [one] = parts[..] {
                    return one.clone();
                }
                let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
                for part in parts {
                    bytes.extend_from_slice(&part.0);
                }
                $name(bytes.into())
            }

            /// Concatenates `self` then `other` into one, as if both sets of changes had been
            /// recorded by one session (a change and a later change to the same row merge).
            pub fn concat(&self, other: &Self) -> Result<Self, Error> {
                Ok($name(ffi::concat(&self.0, &other.0)?))
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl TryFrom<Vec<u8>> for $name {
            type Error = Error;
            fn try_from(bytes: Vec<u8>) -> Result<Self, Error> {
                Self::from_bytes(bytes)
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = Error;
            fn try_from(bytes: &[u8]) -> Result<Self, Error> {
                Self::from_bytes(bytes)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({} bytes)", stringify!($name), self.0.len())
            }
        }

        impl<'a> IntoIterator for &'a $name {
            type Item = Result<Change, Error>;
            type IntoIter = ChangeIter<'a>;
            fn into_iter(self) -> ChangeIter<'a> {
                self.iter()
            }
        }

        impl sealed::Changes for $name {
            fn blob(&self) -> Arc<[u8]> {
                Arc::clone(&self.0)
            }
            fn from_trusted(bytes: Arc<[u8]>) -> Self {
                $name(bytes)
            }
            fn validate(bytes: &[u8]) -> Result<usize, Error> {
                $name::validate(bytes)
            }
            const KIND: BlobKind = BlobKind::$name;
            const MARKER: u8 = $marker;
        }
    };
}

blob_type!(
    /// A changeset: every changed row with its old and new values, so it can be applied with
    /// conflict detection and inverted. Owned, `Send + Sync`, cheap to clone.
    Changeset,
    "changeset",
    CHANGESET_TABLE
);

blob_type!(
    /// A patchset: like a changeset but without old values of non-key columns, so it is smaller
    /// and cannot be inverted. Owned, `Send + Sync`, cheap to clone.
    Patchset,
    "patchset",
    PATCHSET_TABLE
);

impl Changeset {
    /// The changeset that undoes this one: inserts become deletes, deletes inserts, and updates
    /// swap their old and new values.
    pub fn invert(&self) -> Result<Changeset, Error> {
        Ok(Changeset(ffi::invert(&self.0)?))
    }

    /// Iterates the changes of [`Self::invert`]'s result without building it
    /// (`SQLITE_CHANGESETSTART_INVERT`): no second blob in memory, one change decoded at a time,
    /// the same changes in the same order as iterating the inverse.
    pub fn iter_inverted(&self) -> ChangeIter<'_> {
        ChangeIter::new(&self.0, "changeset", true)
    }
}
