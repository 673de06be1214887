//! The raw interface for capability crates (changesets and the like): scoped access to the
//! `sqlite3*` of a pinned connection through a lifetime-bound [`Handle`], and values read from
//! the schema kept per connection under typed [`MemoKey`]s.
//!
//! A [`Handle`] is only created by [`PinnedGuard`]'s `with_raw*` methods (valid, and locked out
//! from sqlx's worker, for the closure it is passed to), or by a driver that vouches for its
//! pointer through [`Handle::from_raw`]. Wrappers over the C API can therefore take a
//! `Handle<'_>` and be safe functions.

use std::any::Any;
use std::marker::PhantomData;
use std::ptr::NonNull;

use liteorm_core::{Result, Row, Value, ValueRef};

use crate::PinnedGuard;

/// The C type of a database connection, for the signatures of raw calls.
pub use libsqlite3_sys::sqlite3;

/// Bytes of heap the linked SQLite holds in this process (`sqlite3_memory_used`): the page
/// caches, schemas and statements of every connection, whatever opened it. 0 when SQLite was
/// built without memory statistics (`SQLITE_DEFAULT_MEMSTATUS=0`).
pub fn memory_used() -> i64 {
    // SAFETY: no preconditions; SQLite reads its own counter under its mutex.
    unsafe { libsqlite3_sys::sqlite3_memory_used() }
}

/// Of [`memory_used`], the bytes that hold cached database pages beyond the first 20 of each
/// connection's page cache (`SQLITE_STATUS_PAGECACHE_OVERFLOW`; the first pages of a cache come
/// from one allocation made when it opens). This part grows with the database files until each
/// connection's cache reaches its `cache_size` (2 MiB by default), then stays there: growth of
/// [`memory_used`] less this is what could be a leak. 0 without memory statistics.
pub fn page_cache_used() -> i64 {
    let (mut current, mut highwater) = (0_i64, 0_i64);
    // SAFETY: both pointers are valid for writes for the duration of the call; SQLite reads its
    // own counter under its mutex and does not keep the pointers.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_status64(
            libsqlite3_sys::SQLITE_STATUS_PAGECACHE_OVERFLOW,
            &mut current,
            &mut highwater,
            0,
        )
    };
    if rc == libsqlite3_sys::SQLITE_OK {
        current
    } else {
        0
    }
}

/// A `sqlite3*` that is valid, and used by nobody else, for the lifetime `'a`.
///
/// `Copy`, so that a callee can pass it on; neither `Send` nor `Sync`, and the closures of
/// [`PinnedGuard::with_raw`] get it for a lifetime they cannot name, so it cannot outlive the
/// access it stands for.
///
/// A handle cannot leave the closure it was given to:
///
/// ```compile_fail
/// # async fn escape(guard: &mut liteorm_sqlite::PinnedGuard) {
/// let escaped = guard.with_raw(|db| db).await;
/// # }
/// ```
///
/// nor move to another thread:
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// fn escape(db: liteorm_sqlite::raw::Handle<'_>) {
///     send(db);
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Handle<'a> {
    db: NonNull<sqlite3>,
    /// Ties the handle to the access it was created for, and keeps it on the creating thread.
    _access: PhantomData<(&'a mut sqlite3, *mut ())>,
}

impl<'a> Handle<'a> {
    /// Created by the guard's raw access, for the duration of one closure.
    pub(crate) fn new(db: NonNull<sqlite3>) -> Self {
        Handle {
            db,
            _access: PhantomData,
        }
    }

    /// A handle for a connection that another driver (a Diesel or rusqlite connection, say)
    /// lends for `'a`.
    ///
    /// # Safety
    /// `db` is an open connection, opened in SQLite's multi-thread or serialized mode, that no
    /// other thread uses and nobody closes during `'a`, and whose owner makes no call on it
    /// meanwhile that relies on state the holder of the handle may change (open statements,
    /// transaction state it tracks itself).
    pub unsafe fn from_raw(db: NonNull<sqlite3>) -> Self {
        Handle::new(db)
    }

    /// The pointer, for a call into the C API.
    pub fn as_ptr(self) -> *mut sqlite3 {
        self.db.as_ptr()
    }

    /// The pointer, known not to be NULL.
    pub fn as_non_null(self) -> NonNull<sqlite3> {
        self.db
    }

    /// Runs one statement with positional (`?`) parameters and returns its rows, with the
    /// value conversions and errors of a [`SqliteSession`](crate::SqliteSession) query. It runs
    /// on the calling thread and may wait for another connection's lock (up to the busy
    /// timeout): for a driver's blocking thread, not an async task.
    pub fn query(self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        // SAFETY: a `Handle` is valid and unshared for its lifetime (its type invariant).
        unsafe { crate::inline::query_once(self.db, sql, params) }
    }

    /// [`Handle::query`] with borrowed parameters: text and blobs are bound where they are,
    /// without a copy.
    pub fn query_refs(self, sql: &str, params: &[ValueRef<'_>]) -> Result<Vec<Row>> {
        // SAFETY: as above.
        unsafe { crate::inline::query_once(self.db, sql, params) }
    }

    /// Runs `sql`, one or more statements without parameters (a schema, say), as
    /// [`Handle::query`] runs one.
    pub fn execute_batch(self, sql: &str) -> Result<()> {
        // SAFETY: as above.
        unsafe { crate::inline::exec_once(self.db, sql) }
    }

    /// Whether the connection is in autocommit mode: no transaction is open on it.
    pub fn autocommit(self) -> bool {
        // SAFETY: as above.
        unsafe { libsqlite3_sys::sqlite3_get_autocommit(self.db.as_ptr()) != 0 }
    }
}

/// The key of a value read from the schema and kept per connection (see
/// [`PinnedGuard::schema_cached`]): its name, unique in the program (a crate name prefix keeps
/// it so), and the type of the values kept under it.
///
/// ```
/// use liteorm_sqlite::raw::MemoKey;
/// /// Primary-key layouts by table name.
/// const TABLE_PK: MemoKey<Option<Vec<u8>>> = MemoKey::new("my_crate::table_pk");
/// ```
pub struct MemoKey<T> {
    name: &'static str,
    _value: PhantomData<fn() -> T>,
}

impl<T> MemoKey<T> {
    /// A key named `name`.
    pub const fn new(name: &'static str) -> Self {
        MemoKey {
            name,
            _value: PhantomData,
        }
    }

    /// The key's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for MemoKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for MemoKey<T> {}

impl<T> std::fmt::Debug for MemoKey<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MemoKey").field(&self.name).finish()
    }
}

/// A reading of the main database's *data version* on one connection
/// (`SQLITE_FCNTL_DATA_VERSION`): SQLite moves it whenever a transaction commits to the
/// database, through this connection or any other (another connection's commit is seen when
/// this one next reads the database, at the latest when it starts a transaction). Two readings
/// tell whether anything committed in between without reading the database: for keeping facts
/// about its content (the newest row of a table, say) across transactions.
///
/// Readings compare only when taken on the same connection while liteorm kept sqlx's handle
/// lock on it throughout, with no raw access to the handle in between that could have replaced
/// the database ([`PinnedGuard::with_raw`] and its blocking variant, `schema_cached`'s reader;
/// the `_same_settings` variants do not count, as they must not do that). Otherwise
/// [`Self::moves_since`] says `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataVersion {
    lock: u64,
    handouts: u64,
    version: u32,
}

impl DataVersion {
    pub(crate) fn new(lock: u64, handouts: u64, version: u32) -> Self {
        DataVersion {
            lock,
            handouts,
            version,
        }
    }

    /// How many times the data version moved between `earlier` and this reading, or `None` if
    /// the two do not compare (see above). 0: nothing committed. A commit through this
    /// connection moves it by exactly one; commits through other connections move it by at
    /// least one however many they were. So after a commit of one's own, 1 means that no one
    /// else committed. (The count is of SQLite's pager, which this relies on and a test checks
    /// against the linked SQLite; it wraps after 2^32 moves.)
    pub fn moves_since(&self, earlier: &DataVersion) -> Option<u32> {
        (self.lock == earlier.lock && self.handouts == earlier.handouts)
            .then(|| self.version.wrapping_sub(earlier.version))
    }
}

impl PinnedGuard {
    /// The [`DataVersion`] of the main database now. Needs sqlx's handle lock, which a pinned
    /// connection keeps across statements, so usually costs no trip to sqlx's worker.
    pub async fn data_version(&mut self) -> Result<DataVersion> {
        let version = self.raw_lock().await?.data_version();
        version.ok_or_else(|| liteorm_core::Error::Database {
            dialect: crate::DIALECT,
            code: None,
            message: "SQLITE_FCNTL_DATA_VERSION failed on the main database".into(),
        })
    }

    /// Runs `f` with the connection's [`Handle`] inside sqlx's `lock_handle()` guard, so that
    /// sqlx's worker thread makes no FFI call on the connection meanwhile. The handle is only
    /// valid inside `f`.
    ///
    /// The guard is kept after `f` returns (until something runs on the connection through
    /// sqlx, or it goes back to the pool), so that further raw calls and inline statements on
    /// the pinned connection need no trip to sqlx's worker thread.
    pub async fn with_raw<R>(&mut self, f: impl FnOnce(Handle<'_>) -> R) -> Result<R> {
        let raw = self.raw_lock().await?;
        Ok(f(Handle::new(raw.db())))
    }

    /// Like [`Self::with_raw`], for a thread that may block ([`crate::blocking`], or `Drop` cleanup):
    /// waits synchronously for the worker to hand over the handle, which it does between commands.
    pub fn with_raw_blocking<R>(&mut self, f: impl FnOnce(Handle<'_>) -> R) -> Result<R> {
        let raw = self.raw_lock_blocking()?;
        Ok(f(Handle::new(raw.db())))
    }

    /// Like [`Self::with_raw`], for an `f` that changes none of the connection's settings: not
    /// its busy timeout or busy handler (`sqlite3_busy_timeout`, `sqlite3_busy_handler`, `PRAGMA
    /// busy_timeout`), nor any other pragma. Calls into the session extension, reads, and
    /// statements that change rows qualify.
    ///
    /// liteorm keeps a copy of the busy timeout while the guard's handle lock lives (SQLite has
    /// no call that returns it, and reading it with its pragma costs about as much as a
    /// one-row transaction): [`Self::with_raw`] drops that copy, since `f` could have changed
    /// the timeout, and this keeps it. An `f` that does change the timeout here leaves liteorm
    /// putting back the old one after its next statement that must not wait for a lock.
    pub async fn with_raw_same_settings<R>(
        &mut self,
        f: impl FnOnce(Handle<'_>) -> R,
    ) -> Result<R> {
        let raw = self.raw_lock().await?;
        Ok(f(Handle::new(raw.db_same_settings())))
    }

    /// [`Self::with_raw_same_settings`] for a thread that may block (see
    /// [`Self::with_raw_blocking`]).
    pub fn with_raw_same_settings_blocking<R>(
        &mut self,
        f: impl FnOnce(Handle<'_>) -> R,
    ) -> Result<R> {
        let raw = self.raw_lock_blocking()?;
        Ok(f(Handle::new(raw.db_same_settings())))
    }

    /// What `read` (given the handle, inside sqlx's handle lock as [`Self::with_raw`]) returns
    /// for `item` under `key`, kept per connection while the schema of `main` does not change:
    /// for facts about tables (their columns, keys) that are read often and change rarely.
    /// Changes made through this connection or any other are noticed (SQLite re-prepares a
    /// watch statement on its next step after any change to the schema), so at most a change
    /// made concurrently with the call is missed, as with reading it anew. Only `Ok` values are
    /// kept, and only while the connection stays pinned or parked with sqlx's handle lock.
    pub async fn schema_cached<T, E>(
        &mut self,
        key: MemoKey<T>,
        item: &str,
        read: impl FnOnce(Handle<'_>) -> std::result::Result<T, E>,
    ) -> Result<std::result::Result<T, E>>
    where
        T: Clone + Send + Any,
    {
        let raw = self.raw_lock().await?;
        Ok(raw.schema_memo(key.name, item, |db| read(Handle::new(db))))
    }

    /// Like [`Self::with_raw`], for an `f` that changes no schema but may expire the connection's
    /// prepared statements, as `sqlite3changeset_apply` does (through `PRAGMA
    /// defer_foreign_keys`): what [`Self::schema_cached`] keeps stays valid across `f`, where
    /// the expiry alone would have it read anew. A schema change `f` makes anyway is still
    /// noticed (by the schema cookie), unless `f` also ends the transaction that made an earlier
    /// one.
    pub async fn with_raw_same_schema<R>(&mut self, f: impl FnOnce(Handle<'_>) -> R) -> Result<R> {
        let raw = self.raw_lock().await?;
        Ok(raw.keeping_schema(|db| f(Handle::new(db))))
    }

    /// [`Self::with_raw_same_schema`] for a thread that may block (see
    /// [`Self::with_raw_blocking`]).
    pub fn with_raw_same_schema_blocking<R>(
        &mut self,
        f: impl FnOnce(Handle<'_>) -> R,
    ) -> Result<R> {
        let raw = self.raw_lock_blocking()?;
        Ok(raw.keeping_schema(|db| f(Handle::new(db))))
    }
}
