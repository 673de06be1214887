//! Iterating the changes of a changeset or patchset, one decoded change at a time.

use std::sync::Arc;

use crate::Error;
use crate::change::Change;
use crate::ffi::ChangesetIter;

/// An iterator over the changes of a [`Changeset`](crate::Changeset) or
/// [`Patchset`](crate::Patchset) that decodes one change at a time (see
/// [`Changeset::iter`](crate::Changeset::iter)), so inspecting a large blob does not hold every
/// decoded change in memory. After an error it ends.
pub struct ChangeIter<'a> {
    state: IterState<'a>,
    kind: &'static str,
    entry: usize,
    table: Option<Arc<str>>,
}

enum IterState<'a> {
    Running(ChangesetIter<'a>),
    Failed(Error),
    Done,
}

impl<'a> ChangeIter<'a> {
    /// Iterates a validated blob, inverted if `invert`.
    pub(crate) fn new(blob: &'a [u8], kind: &'static str, invert: bool) -> Self {
        let state = match ChangesetIter::start_v2(blob, invert) {
            Ok(iter) => IterState::Running(iter),
            Err(err) => IterState::Failed(invalid(kind, 0, err)),
        };
        ChangeIter {
            state,
            kind,
            entry: 0,
            table: None,
        }
    }
}

impl Iterator for ChangeIter<'_> {
    type Item = Result<Change, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut iter = match std::mem::replace(&mut self.state, IterState::Done) {
            IterState::Running(iter) => iter,
            IterState::Failed(err) => return Some(Err(err)),
            IterState::Done => return None,
        };
        let next = match iter.advance() {
            Ok(true) => iter.current().change(&mut self.table).map(Change::from),
            Ok(false) => return None,
            Err(err) => Err(err),
        };
        let entry = self.entry;
        self.entry += 1;
        match next {
            Ok(change) => {
                self.state = IterState::Running(iter);
                Some(Ok(change))
            }
            Err(err) => Some(Err(invalid(self.kind, entry, err))),
        }
    }
}

impl std::iter::FusedIterator for ChangeIter<'_> {}

impl std::fmt::Debug for ChangeIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeIter")
            .field("kind", &self.kind)
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// An error at change `entry` of a blob of `kind`.
pub(crate) fn invalid(kind: &'static str, entry: usize, err: impl Into<Error>) -> Error {
    let err = err.into();
    Error::Invalid {
        kind,
        entry,
        offset: None,
        reason: err.to_string(),
    }
}

/// Decodes every change of `blob`.
pub(crate) fn decode(blob: &[u8], kind: &'static str) -> Result<Vec<Change>, Error> {
    ChangeIter::new(blob, kind, false).collect()
}
