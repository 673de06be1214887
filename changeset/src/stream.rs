//! Changesets as streams: apply, invert, concatenate, merge and inspect changesets (or
//! patchsets) read from a [`Read`] and written to a [`Write`], with SQLite's `_strm` APIs.
//!
//! SQLite pulls the input in small chunks, so [`apply`] and [`changes`] work in memory bounded
//! by the largest single change, whatever the size of the stream. [`invert`] writes its output
//! as it goes, but SQLite keeps the input it has read (`sqlite3changeset_invert_strm` never
//! discards it), so it holds about the size of the input. [`concat()`] and [`merge`] stream
//! their input and output, but merging needs every distinct changed row in memory (SQLite's
//! changegroup is an in-memory hash), as the blob versions do. A
//! [`Rebaser::rebase_stream`](crate::Rebaser::rebase_stream) is bounded by the largest change
//! too (plus the resolutions it was configured with).
//!
//! The async functions run on a blocking thread (`liteorm_sqlite::blocking`), so the reader and writer
//! may block; they must be `Send + 'static` and are handed back (the writer) when done.
//!
//! Stream input is untrusted: every byte is checked for structure on its way to SQLite, and an
//! error in it (or input that ends in the middle of a change) ends the operation with
//! [`Error::Invalid`] naming the change and byte offset, before SQLite can act on it.
//!
//! ```
//! use liteorm_changeset::{capture, stream};
//! use liteorm_core::Session;
//! use liteorm_sqlite::SqliteSession;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), liteorm_changeset::Error> {
//! let dir = tempfile::tempdir()?;
//! let db = SqliteSession::open_in_memory().await?;
//! db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await?;
//! let changes = capture(&db, &["t"], |s| async move {
//!     s.execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')", &[]).await?;
//!     Ok::<_, liteorm_changeset::Error>(())
//! })
//! .await?;
//! let path = dir.path().join("changes.bin");
//! std::fs::write(&path, changes.as_bytes())?;
//!
//! // Invert the file into another file, then apply that from disk: the rows are gone.
//! let undo = dir.path().join("undo.bin");
//! stream::invert(std::fs::File::open(&path)?, std::fs::File::create(&undo)?).await?;
//! let report = stream::apply(&db, std::fs::File::open(&undo)?).await?;
//! assert_eq!(report.applied, 2);
//! assert!(db.query("SELECT * FROM t", &[]).await?.is_empty());
//! # Ok(())
//! # }
//! ```

use std::io::{Read, Write};

use liteorm_core::Session;

use crate::Error;
use crate::apply::Apply;
use crate::change::Change;
use crate::changeset::BlobKind;
use crate::ffi::{self, Input, Output, RawChangegroup, StreamIter};
use crate::format::{self, Checked, Checker};
use crate::iter::invalid;

/// Runs `job` on a blocking thread.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    liteorm_sqlite::blocking::spawn(job)
        .await
        .map_err(|panic| Error::task_failed("stream task", panic))?
}

/// Applies the changeset or patchset `input` reads to the `main` database of `session`.
///
/// The returned [`Apply`] takes the same options as [`crate::apply`] (conflict handler, filter,
/// flags) and gives the same [`ApplyReport`](crate::ApplyReport); it always runs on a blocking
/// thread with the connection, and reads the input in small chunks, so memory use does not grow
/// with the size of the stream. The apply is atomic: a failure, including malformed or
/// truncated input, rolls everything back.
pub fn apply<'a, R: Read + Send + 'static>(session: &'a dyn Session, input: R) -> Apply<'a> {
    Apply::from_stream(session, Box::new(input))
}

/// Writes the inverse of the changeset `input` reads to `output` (see
/// [`Changeset::invert`](crate::Changeset::invert)), and returns `output`. A patchset cannot be
/// inverted ([`Error::Misuse`]). The output is written as it is produced, but SQLite keeps
/// what it has read of the input until the end: memory grows with the input's size.
pub async fn invert<R, W>(input: R, output: W) -> Result<W, Error>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    blocking(move || {
        let mut input = Input::new(Checked::new(input));
        let mut output = Output::new(output);
        let inverted = ffi::invert_strm(&mut input, &mut output);
        if inverted.is_err() && input.reader.checker().marker() == Some(format::PATCHSET) {
            return Err(Error::Misuse("a patchset cannot be inverted"));
        }
        inverted?;
        output.writer.flush()?;
        Ok(output.writer)
    })
    .await
}

/// Writes `a` then `b` concatenated to `output` (see
/// [`Changeset::concat`](crate::Changeset::concat)), and returns `output`. Both must be
/// changesets or both patchsets.
pub async fn concat<A, B, W>(a: A, b: B, output: W) -> Result<W, Error>
where
    A: Read + Send + 'static,
    B: Read + Send + 'static,
    W: Write + Send + 'static,
{
    blocking(move || {
        let mut a = Input::new(Checked::new(a));
        let mut b = Input::new(Checked::new(b));
        let mut output = Output::new(output);
        let concatenated = ffi::concat_strm(&mut a, &mut b, &mut output);
        if concatenated.is_err() {
            mixed_kinds([a.reader.checker(), b.reader.checker()])?;
        }
        concatenated?;
        output.writer.flush()?;
        Ok(output.writer)
    })
    .await
}

/// Merges every input, in order, into one changeset (or patchset) written to `output`, as a
/// [`Changegroup`](crate::Changegroup) does, and returns `output`. All inputs must be of one
/// kind.
pub async fn merge<I, R, W>(inputs: I, output: W) -> Result<W, Error>
where
    I: IntoIterator<Item = R> + Send + 'static,
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    blocking(move || {
        let mut group = RawChangegroup::new()?;
        let mut first: Option<u8> = None;
        for input in inputs {
            let mut input = Input::new(Checked::new(input));
            let added = group.add_strm(&mut input);
            let marker = input.reader.checker().marker();
            if added.is_err() && first.is_some() && marker.is_some() && marker != first {
                return Err(Error::Misuse("cannot merge changesets with patchsets"));
            }
            added?;
            first = first.or(marker);
        }
        let mut output = Output::new(output);
        group.output_strm(&mut output)?;
        output.writer.flush()?;
        Ok(output.writer)
    })
    .await
}

/// `Err` if the checkers saw both kinds.
fn mixed_kinds(checkers: [&Checker; 2]) -> Result<(), Error> {
    match checkers.map(Checker::marker) {
        [Some(a), Some(b)] if a != b => Err(Error::Misuse(
            "cannot concatenate a changeset with a patchset",
        )),
        _ => Ok(()),
    }
}

/// Iterates the changes of the changeset or patchset `input` reads, decoding one at a time.
///
/// This is a plain (blocking) iterator: reading blocks on `input`, so for a file or socket run
/// it on a blocking thread (`spawn_blocking`). It ends after the first error.
///
/// ```
/// # fn main() -> Result<(), liteorm_changeset::Error> {
/// // One insert into t(id PRIMARY KEY, v): (1, 'ab').
/// let bytes: &[u8] = b"T\x02\x01\x00t\x00\x12\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x03\x02ab";
/// let ops: Vec<_> = liteorm_changeset::stream::changes(bytes)?
///     .map(|change| change.map(|c| (c.table.to_string(), c.op)))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(ops, [("t".to_owned(), liteorm_changeset::ChangeOp::Insert)]);
///
/// // A stream that stops in the middle of a change is an error, not a shorter changeset.
/// let truncated = &bytes[..bytes.len() - 1];
/// let last = liteorm_changeset::stream::changes(truncated)?.last();
/// assert!(matches!(last, Some(Err(liteorm_changeset::Error::Invalid { .. }))));
/// # Ok(())
/// # }
/// ```
pub fn changes<R: Read>(input: R) -> Result<ChangeStream<R>, Error> {
    Ok(ChangeStream {
        iter: Some(StreamIter::start(Input::new(Checked::new(input)))?),
        entry: 0,
        table: None,
    })
}

/// An iterator over the changes of a stream; made by [`changes`].
pub struct ChangeStream<R> {
    iter: Option<StreamIter<Checked<R>>>,
    entry: usize,
    table: Option<std::sync::Arc<str>>,
}

impl<R: Read> Iterator for ChangeStream<R> {
    type Item = Result<Change, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let iter = self.iter.as_mut()?;
        let entry = self.entry;
        self.entry += 1;
        let change = match iter.advance() {
            Ok(true) => iter
                .current()
                .change(&mut self.table)
                .map(Change::from)
                .map_err(|err| {
                    let kind = BlobKind::of_marker(iter.reader().checker().marker());
                    invalid(kind.name(), entry, err)
                }),
            Ok(false) => {
                self.iter = None;
                return None;
            }
            Err(err) => Err(err.into()),
        };
        if change.is_err() {
            self.iter = None;
        }
        Some(change)
    }
}

impl<R: Read> std::iter::FusedIterator for ChangeStream<R> {}

impl<R> std::fmt::Debug for ChangeStream<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("entry", &self.entry)
            .field("done", &self.iter.is_none())
            .finish_non_exhaustive()
    }
}
