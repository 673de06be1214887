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

/// Counts the changes of `blob`, failing where [`decode`] would, with the same error, but
/// without decoding a value (no allocation per change).
pub(crate) fn count(blob: &[u8], kind: &'static str) -> Result<usize, Error> {
    let mut iter = ChangesetIter::start_v2(blob, false).map_err(|err| invalid(kind, 0, err))?;
    let mut entry = 0;
    loop {
        match iter.advance() {
            Ok(true) => iter
                .current()
                .check()
                .map_err(|err| invalid(kind, entry, err))?,
            Ok(false) => return Ok(entry),
            Err(err) => return Err(invalid(kind, entry, err)),
        }
        entry += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format;

    /// `t(a PRIMARY KEY, b)`: an INSERT (1, 'ab'), an UPDATE of b (1 -> 2) and a DELETE of
    /// (3, NULL).
    const BLOB: &[u8] = b"T\x02\x01\x00t\x00\
        \x12\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x03\x02ab\
        \x17\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x01\x00\x00\x00\x00\x00\x00\x00\x01\
        \x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\
        \x09\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03\x05";

    fn outcome<T>(result: Result<T, Error>, len: impl Fn(T) -> usize) -> Result<usize, String> {
        result.map(len).map_err(|err| err.to_string())
    }

    #[test]
    fn counting_fails_exactly_where_decoding_does() {
        assert_eq!(count(BLOB, "changeset").ok(), Some(3));
        // Every variant that passes the structural check (what validation runs first) and so
        // reaches SQLite's iterator: each byte changed to a few values, and every truncation.
        // (The check leaves SQLite nothing to refuse in these; both must agree on the rest.)
        let mut variants = Vec::new();
        for i in 0..BLOB.len() {
            for byte in [0x00, 0x01, 0x02, 0x05, 0x12, 0x17, 0x7f, 0xff] {
                let mut blob = BLOB.to_vec();
                blob[i] = byte;
                variants.push(blob);
            }
            variants.push(BLOB[..i].to_vec());
        }
        let mut compared = 0;
        for blob in variants.iter().filter(|b| format::check(b, b'T').is_ok()) {
            let counted = outcome(count(blob, "changeset"), |n| n);
            assert_eq!(
                counted,
                outcome(decode(blob, "changeset"), |changes| changes.len()),
                "{blob:02x?}"
            );
            compared += 1;
        }
        assert!(compared > BLOB.len(), "only {compared} variants compared");
    }
}
