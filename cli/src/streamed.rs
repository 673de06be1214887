//! The files of the commands that transform blobs (`invert`, `concat`, `rebase`), streamed:
//! inputs are read in chunks and outputs written as SQLite produces them, so memory does not
//! grow with the blobs. An output file is written beside its path under a temporary name and
//! renamed over it once complete, so a failure leaves the path as it was.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::failure::Failure;

/// Bytes read or written per system call.
const CHUNK: usize = 64 * 1024;

/// What a [`Tracked`] reader or writer saw: whether it was used, and its first I/O error (the
/// library reports an I/O error without saying which file it came from).
#[derive(Clone, Default)]
struct Seen {
    used: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
}

impl Seen {
    fn record<T>(&self, result: io::Result<T>) -> io::Result<T> {
        self.used.store(true, Ordering::Relaxed);
        if let Err(err) = &result {
            let mut first = self.error.lock().unwrap_or_else(PoisonError::into_inner);
            first.get_or_insert_with(|| err.to_string());
        }
        result
    }

    fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    fn error(&self) -> Option<String> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A reader or writer that records what it [`Seen`].
pub(crate) struct Tracked<T> {
    inner: T,
    seen: Seen,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.seen.record(self.inner.read(buf))
    }
}

impl<W: Write> Write for Tracked<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.seen.record(self.inner.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.seen.record(self.inner.flush())
    }
}

/// A streamed input.
pub(crate) type Reader = Tracked<Box<dyn Read + Send>>;

/// A streamed output.
pub(crate) type Writer = Tracked<BufWriter<Box<dyn Write + Send>>>;

/// An input file (or standard input, `-`), for naming it in errors.
pub(crate) struct Source {
    path: PathBuf,
    seen: Seen,
}

/// Opens `path` (`-`: standard input) for reading in chunks.
pub(crate) fn open(path: &Path) -> Result<(Reader, Source), Failure> {
    let inner: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(io::stdin())
    } else {
        let file = File::open(path).map_err(|e| Failure::file(path, &e))?;
        Box::new(BufReader::with_capacity(CHUNK, file))
    };
    let seen = Seen::default();
    let source = Source {
        path: path.to_owned(),
        seen: seen.clone(),
    };
    Ok((Tracked { inner, seen }, source))
}

/// Where a streamed output goes: standard output, or a temporary file beside `path` that
/// [`Target::commit`] renames over it. Dropped without a commit, it removes the temporary
/// file.
pub(crate) struct Target {
    /// The output file and its temporary file; `None` for standard output.
    file: Option<(PathBuf, PathBuf)>,
    seen: Seen,
}

/// Tells the temporary files of one process apart.
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// Creates the output for `path` (`None`: standard output).
pub(crate) fn create(path: Option<&Path>) -> Result<(Writer, Target), Failure> {
    let (inner, file): (Box<dyn Write + Send>, _) = match path {
        None => (Box::new(io::stdout()), None),
        Some(path) => {
            let name = path
                .file_name()
                .ok_or_else(|| Failure::File(format!("{}: not a file name", path.display())))?;
            let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{}-{n}.tmp", std::process::id()));
            let temp = path.with_file_name(temp_name);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(|e| Failure::file(path, &e))?;
            (Box::new(file), Some((path.to_owned(), temp)))
        }
    };
    let seen = Seen::default();
    let writer = Tracked {
        inner: BufWriter::with_capacity(CHUNK, inner),
        seen: seen.clone(),
    };
    Ok((writer, Target { file, seen }))
}

impl Target {
    /// Finishes the output: flushes `writer` and puts the file in place.
    pub(crate) fn commit(mut self, mut writer: Writer) -> Result<(), Failure> {
        let path = self.path();
        writer.flush().map_err(|e| Failure::file(&path, &e))?;
        drop(writer);
        if let Some((path, temp)) = self.file.take() {
            std::fs::rename(&temp, &path).map_err(|e| {
                // Best effort: the rename failed, so the temporary file is not in use.
                let _ = std::fs::remove_file(&temp);
                Failure::file(&path, &e)
            })?;
        }
        Ok(())
    }

    /// The path errors name.
    fn path(&self) -> PathBuf {
        self.file
            .as_ref()
            .map_or_else(|| PathBuf::from("<stdout>"), |(path, _)| path.clone())
    }

    /// The failure for `err`, an error of a command that streamed `sources` (in order) to this
    /// output: an I/O error is named by the file it came from, and an invalid blob by the input
    /// being read when it was found.
    pub(crate) fn failure(&self, err: changeset::Error, sources: &[Source]) -> Failure {
        // The inputs are read in order: the last one used is the one being read.
        let reading = sources.iter().rev().find(|s| s.seen.used());
        match err {
            changeset::Error::Io(err) => {
                if let Some(source) = sources.iter().find(|s| s.seen.error().is_some()) {
                    let message = source.seen.error().unwrap_or_default();
                    return Failure::File(format!("{}: {message}", source.path.display()));
                }
                let message = self.seen.error().unwrap_or_else(|| err.to_string());
                Failure::File(format!("{}: {message}", self.path().display()))
            }
            changeset::Error::Invalid { .. } => match reading {
                Some(source) => Failure::InvalidBlob(format!("{}: {err}", source.path.display())),
                None => Failure::InvalidBlob(err.to_string()),
            },
            err => err.into(),
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some((_, temp)) = self.file.take() {
            // Best effort: nothing else refers to the temporary file.
            let _ = std::fs::remove_file(temp);
        }
    }
}
