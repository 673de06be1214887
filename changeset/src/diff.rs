//! Diffing databases: the changeset that turns the tables of another database into those of
//! `main` (`sqlite3session_diff`), without having recorded how they diverged.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Arc;

use liteorm_core::Session;

use crate::ffi::{self, Handle, RawSession};
use crate::{Changeset, Error, Patchset, gate};

/// The schema name a database file is attached under while it is diffed.
const ALIAS: &str = "liteorm_diff";

/// A diff being configured: the changes that, applied to the tables of another database (the
/// "from" side), make them equal to the same tables of the `main` database of a session.
///
/// The other database is a file ([`Diff::from_file`], attached for the diff and detached after)
/// or a database already attached to the session's connection ([`Diff::from_schema`]; that needs
/// a pinned session, e.g. a transaction, since `ATTACH` is per connection). Each table must have
/// the same columns and primary key on both sides, or the diff fails with
/// [`Error::SchemaMismatch`] saying how they differ.
///
/// ```
/// use liteorm_changeset::{Diff, apply};
/// use liteorm_core::Session;
/// use liteorm_sqlite::SqliteSession;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), liteorm_changeset::Error> {
/// let dir = tempfile::tempdir()?;
/// let path = |name| dir.path().join(name).to_string_lossy().into_owned();
/// let live = SqliteSession::open(&path("live.db")).await?;
/// let backup = SqliteSession::open(&path("backup.db")).await?;
/// for db in [&live, &backup] {
///     db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
///                       INSERT INTO t VALUES (1, 'a')").await?;
/// }
/// live.execute_batch("UPDATE t SET v = 'b' WHERE id = 1; INSERT INTO t VALUES (2, 'c')").await?;
///
/// // What the backup lacks, as a changeset: one update and one insert.
/// let changes = Diff::from_file(&live, path("backup.db")).tables(["t"]).changeset().await?;
/// assert_eq!(changes.changes()?.len(), 2);
/// apply(&backup, &changes).await?;
/// assert_eq!(backup.query("SELECT * FROM t", &[]).await?.len(), 2);
/// # Ok(())
/// # }
/// ```
#[must_use = "a Diff does nothing until `changeset` or `patchset` is awaited"]
pub struct Diff<'s> {
    session: &'s dyn Session,
    from: From,
    tables: Vec<String>,
}

enum From {
    File(PathBuf),
    Schema(String),
}

impl<'s> Diff<'s> {
    /// Diffs against the database file at `path`, which is attached to the session's connection
    /// for the diff and detached after. It must exist.
    pub fn from_file(session: &'s dyn Session, path: impl Into<PathBuf>) -> Self {
        Diff {
            session,
            from: From::File(path.into()),
            tables: Vec::new(),
        }
    }

    /// Diffs against the database attached to the session's connection as `schema`.
    pub fn from_schema(session: &'s dyn Session, schema: impl Into<String>) -> Self {
        Diff {
            session,
            from: From::Schema(schema.into()),
            tables: Vec::new(),
        }
    }

    /// Diffs only the given tables (adds to earlier calls). By default: every table of `main`
    /// that has a primary key.
    pub fn tables<I, T>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tables.extend(tables.into_iter().map(Into::into));
        self
    }

    /// The differences as a changeset.
    pub async fn changeset(self) -> Result<Changeset, Error> {
        self.run(false).await.map(Changeset::trusted)
    }

    /// The differences as a patchset.
    pub async fn patchset(self) -> Result<Patchset, Error> {
        self.run(true).await.map(Patchset::trusted)
    }

    async fn run(self, patchset: bool) -> Result<Arc<[u8]>, Error> {
        let sqlite = gate::gate(self.session, "diffing databases")?;
        let (attach, schema, shown) = match self.from {
            From::File(path) => {
                // ATTACH would create a missing file and diff against an empty database.
                std::fs::metadata(&path)?;
                let text = path.to_str().ok_or_else(|| {
                    Error::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{} is not valid UTF-8", path.display()),
                    ))
                })?;
                (
                    Some(text.to_owned()),
                    ALIAS.to_owned(),
                    path.display().to_string(),
                )
            }
            From::Schema(schema) => (None, schema.clone(), schema),
        };
        let target = Target {
            attach,
            schema,
            shown,
            tables: self.tables,
            patchset,
        };
        let pinned = sqlite.pin().await?;
        let mut guard = pinned.lock().await?;
        // Diffing reads both tables whole: off the executor.
        let task = liteorm_sqlite::blocking::spawn(move || {
            let diffed = guard.with_raw_blocking(|db| target.diff(db));
            drop(guard);
            drop(pinned);
            diffed
        });
        task.await
            .map_err(|panic| Error::task_failed("diff task", panic))??
    }
}

/// What to diff, movable to a blocking thread.
struct Target {
    /// A file to attach as [`ALIAS`] first.
    attach: Option<String>,
    /// The schema name of the "from" database.
    schema: String,
    /// How errors name the "from" database.
    shown: String,
    tables: Vec<String>,
    patchset: bool,
}

impl Target {
    fn diff(&self, db: Handle<'_>) -> Result<Arc<[u8]>, Error> {
        let Some(path) = &self.attach else {
            return self.diff_attached(db);
        };
        ffi::query_text(
            db,
            c"ATTACH DATABASE ?1 AS liteorm_diff",
            &[path],
            "attaching the database to diff from",
        )?;
        let diffed = self.diff_attached(db);
        let detached = ffi::query_text(
            db,
            c"DETACH DATABASE liteorm_diff",
            &[],
            "detaching the database",
        );
        let diffed = diffed?;
        detached?;
        Ok(diffed)
    }

    fn diff_attached(&self, db: Handle<'_>) -> Result<Arc<[u8]>, Error> {
        let attached = ffi::query_text(
            db,
            c"SELECT 1 FROM pragma_database_list WHERE name = ?1",
            &[&self.schema],
            "listing attached databases",
        )?;
        if attached.is_empty() {
            return Err(Error::NoSuchSchema(self.schema.clone()));
        }
        let tables = self.tables(db)?;
        let from = CString::new(self.schema.as_str())
            .map_err(|_| Error::InvalidName(self.schema.clone()))?;
        let session = RawSession::create(db)?;
        let diffed = (|| {
            for table in &tables {
                let name =
                    CString::new(table.as_str()).map_err(|_| Error::InvalidName(table.clone()))?;
                // `sqlite3session_diff` is documented to attach the table itself, but SQLite
                // 3.40.1 then records nothing (3.51 does): attach it first, which both accept.
                session.attach(db, Some(table))?;
                session.diff(db, &from, &name).map_err(|err| {
                    if err.is_schema() {
                        self.mismatch(db, table)
                    } else {
                        err.into()
                    }
                })?;
            }
            Ok::<_, Error>(session.generate(db, self.patchset)?)
        })();
        session.delete(db);
        diffed
    }

    /// The tables to diff: the listed ones, checked to exist with a key, or every keyed table.
    fn tables(&self, db: Handle<'_>) -> Result<Vec<String>, Error> {
        if self.tables.is_empty() {
            let rows = ffi::query_text(
                db,
                c"SELECT m.name FROM main.sqlite_schema AS m WHERE m.type = 'table' \
                  AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                  AND EXISTS (SELECT 1 FROM pragma_table_info(m.name, 'main') WHERE pk > 0) \
                  ORDER BY m.name",
                &[],
                "listing tables",
            )?;
            return Ok(rows
                .into_iter()
                .filter_map(|mut row| row.remove(0))
                .collect());
        }
        for table in &self.tables {
            match ffi::table_pk(db, table)? {
                None => return Err(Error::NoSuchTable(table.clone())),
                Some(pk) if pk.iter().all(|&p| p == 0) => {
                    return Err(Error::NoPrimaryKey(table.clone()));
                }
                Some(_) => {}
            }
        }
        Ok(self.tables.clone())
    }

    /// How `table` differs between the two databases.
    fn mismatch(&self, db: Handle<'_>, table: &str) -> Error {
        let describe = |schema: &str| -> Result<String, Error> {
            let rows = ffi::query_text(
                db,
                c"SELECT name, pk FROM pragma_table_info(?1, ?2) ORDER BY cid",
                &[table, schema],
                "reading table schema",
            )?;
            let columns: Vec<String> = rows
                .into_iter()
                .map(|row| {
                    let name = row[0].clone().unwrap_or_default();
                    match row[1].as_deref() {
                        Some("0") | None => name,
                        Some(pk) => format!("{name} [pk {pk}]"),
                    }
                })
                .collect();
            Ok(columns.join(", "))
        };
        let detail = match (describe("main"), describe(&self.schema)) {
            (Ok(_), Ok(from)) if from.is_empty() => format!("{} has no such table", self.shown),
            (Ok(main), Ok(from)) => format!("main has ({main}), {} has ({from})", self.shown),
            (Err(err), _) | (_, Err(err)) => return err,
        };
        Error::SchemaMismatch {
            table: table.to_owned(),
            detail,
        }
    }
}
