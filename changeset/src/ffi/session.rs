//! `sqlite3_session`: recording the changes made on a connection, and diffing tables.

use std::borrow::Cow;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use libsqlite3_sys as sys;

use super::stream::{Output, output_trampoline};
use super::{Handle, RawError, check, check_on, code_error, db_error, panic_message, take_output};

/// How many `sqlite3_session` objects exist per database file (for tests and diagnostics).
/// A file's entry stays at 0 when its last session goes (so that the next one allocates
/// nothing); entries at 0 are dropped once there are more than [`LIVE_FILES_KEPT`] files.
static LIVE_SESSIONS: std::sync::Mutex<std::collections::BTreeMap<Arc<str>, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// How many files [`LIVE_SESSIONS`] keeps an entry for before it drops those at 0.
const LIVE_FILES_KEPT: usize = 64;

/// Counts a new session on `file`; returns the key to give back to [`session_deleted`].
fn session_created(file: &str) -> Arc<str> {
    let mut live = LIVE_SESSIONS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let key = match live.get_key_value(file) {
        Some((key, _)) => Arc::clone(key),
        None => Arc::from(file),
    };
    let count = live.entry(Arc::clone(&key)).or_default();
    *count = count.saturating_add(1);
    key
}

/// Counts a session on `file` gone.
fn session_deleted(file: &str) {
    let mut live = LIVE_SESSIONS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    if let Some(count) = live.get_mut(file) {
        *count = count.saturating_sub(1);
    }
    if live.len() > LIVE_FILES_KEPT {
        live.retain(|_, count| *count > 0);
    }
}

/// How many session objects are alive on connections to `file`.
pub(crate) fn live_sessions(file: &str) -> usize {
    let live = LIVE_SESSIONS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    live.get(file).copied().unwrap_or(0)
}

/// A `sqlite3_session` object. It must be deleted (with [`RawSession::delete`]) while its
/// connection is locked and before the connection is closed or goes back to the pool.
///
/// Every call takes the [`Handle`] of the session's connection: it proves the connection locked
/// for the call (and is checked to be that connection's).
pub(crate) struct RawSession {
    ptr: NonNull<sys::sqlite3_session>,
    /// The connection the session records.
    db: NonNull<sys::sqlite3>,
    /// The database file it records (`""` for in-memory databases), as counted in
    /// [`LIVE_SESSIONS`].
    file: Arc<str>,
    /// The table filter SQLite calls back, owned here so that it outlives the session.
    filter: Option<Box<TableFilter>>,
}

/// Whether to record a table, by name.
pub(crate) type TableFilterFn = Box<dyn FnMut(&str) -> bool + Send>;

/// A capture's table filter and what happened to it.
pub(crate) struct TableFilter {
    /// Whether to record a table.
    pub(crate) filter: TableFilterFn,
    /// The panic message, if the filter panicked (it then records nothing more).
    pub(crate) panicked: Option<String>,
}

unsafe extern "C" fn table_filter_trampoline(ctx: *mut c_void, table: *const c_char) -> c_int {
    // SAFETY: `ctx` is the `TableFilter` boxed in the session, which outlives it; SQLite calls
    // the filter only from statements on the session's connection, one at a time.
    let state = unsafe { &mut *ctx.cast::<TableFilter>() };
    if state.panicked.is_some() {
        return 0;
    }
    // SAFETY: SQLite passes a NUL-terminated table name that lives for the call.
    let table = unsafe { CStr::from_ptr(table) }.to_string_lossy();
    match catch_unwind(AssertUnwindSafe(|| (state.filter)(&table))) {
        Ok(keep) => c_int::from(keep),
        Err(payload) => {
            state.panicked = Some(panic_message(payload.as_ref()));
            0
        }
    }
}

// SAFETY: the session is only touched through a `Handle` of its connection, which only the
// thread that holds the connection's lock has, so moving the pointer between threads is fine.
unsafe impl Send for RawSession {}

impl RawSession {
    /// Creates a session on the `main` database of `db`.
    pub(crate) fn create(db: Handle<'_>) -> Result<Self, RawError> {
        let mut session = ptr::null_mut();
        // SAFETY: `db` is valid and locked (a `Handle` proves it); "main" is NUL-terminated;
        // `session` is an out-pointer.
        let rc = unsafe { sys::sqlite3session_create(db.as_ptr(), c"main".as_ptr(), &mut session) };
        check_on(db, rc, "sqlite3session_create")?;
        let ptr = NonNull::new(session)
            .ok_or_else(|| code_error(sys::SQLITE_NOMEM, "sqlite3session_create"))?;
        // SAFETY: `db` is valid and locked; the returned name (NULL or NUL-terminated) is owned
        // by the connection and copied at once.
        let file = unsafe {
            let name = sys::sqlite3_db_filename(db.as_ptr(), c"main".as_ptr());
            if name.is_null() {
                Cow::Borrowed("")
            } else {
                CStr::from_ptr(name).to_string_lossy()
            }
        };
        let file = session_created(&file);
        Ok(RawSession {
            ptr,
            db: db.as_non_null(),
            file,
            filter: None,
        })
    }

    /// The session, for a call that `db` (its connection's handle) makes safe.
    fn on(&self, db: Handle<'_>) -> *mut sys::sqlite3_session {
        assert_eq!(
            db.as_non_null(),
            self.db,
            "a session is used with the handle of its own connection"
        );
        self.ptr.as_ptr()
    }

    /// Turns on `sqlite3session_changeset_size` bookkeeping (before any table is attached).
    #[cfg(sqlite_has_changeset_size)]
    pub(crate) fn track_size(&self, db: Handle<'_>) -> Result<(), RawError> {
        self.object_config(db, sys::SQLITE_SESSION_OBJCONFIG_SIZE)
    }

    /// Records tables without a PRIMARY KEY, keyed by rowid (before any table is attached).
    #[cfg(sqlite_has_implicit_pk)]
    pub(crate) fn implicit_pk(&self, db: Handle<'_>) -> Result<(), RawError> {
        self.object_config(db, sys::SQLITE_SESSION_OBJCONFIG_ROWID)
    }

    /// Sets boolean option `op` of `sqlite3session_object_config`.
    #[cfg(sqlite_has_changeset_size)]
    fn object_config(&self, db: Handle<'_>, op: c_int) -> Result<(), RawError> {
        let session = self.on(db);
        let mut on: c_int = 1;
        // SAFETY: the session is live and its connection locked (`on` checked the handle); the
        // option takes an `int*`.
        let rc = unsafe {
            sys::sqlite3session_object_config(session, op, ptr::from_mut(&mut on).cast())
        };
        check(rc, "sqlite3session_object_config")?;
        if on == 1 {
            Ok(())
        } else {
            Err(code_error(rc, "sqlite3session_object_config"))
        }
    }

    /// Starts (`true`) or stops recording changes.
    pub(crate) fn enable(&self, db: Handle<'_>, on: bool) {
        let session = self.on(db);
        // SAFETY: the session is live and its connection locked (`on` checked the handle).
        unsafe { sys::sqlite3session_enable(session, c_int::from(on)) };
    }

    /// Marks the changes recorded from now on as indirect (`true`) or direct.
    pub(crate) fn indirect(&self, db: Handle<'_>, on: bool) {
        let session = self.on(db);
        // SAFETY: the session is live and its connection locked (`on` checked the handle).
        unsafe { sys::sqlite3session_indirect(session, c_int::from(on)) };
    }

    /// Whether no change has been recorded.
    pub(crate) fn is_empty(&self, db: Handle<'_>) -> bool {
        let session = self.on(db);
        // SAFETY: the session is live and its connection locked (`on` checked the handle).
        unsafe { sys::sqlite3session_isempty(session) != 0 }
    }

    /// The size of the changeset the session would generate now (needs [`Self::track_size`]).
    #[cfg(sqlite_has_changeset_size)]
    pub(crate) fn changeset_size(&self, db: Handle<'_>) -> i64 {
        let session = self.on(db);
        // SAFETY: the session is live and its connection locked (`on` checked the handle).
        unsafe { sys::sqlite3session_changeset_size(session) }
    }

    /// Installs the filter that decides which tables an all-tables session records.
    pub(crate) fn set_table_filter(&mut self, db: Handle<'_>, filter: TableFilter) {
        let session = self.on(db);
        let mut boxed = Box::new(filter);
        let ctx = ptr::from_mut(boxed.as_mut()).cast::<c_void>();
        // SAFETY: the session is live and its connection locked (`on` checked the handle);
        // `ctx` points into a box that `self` owns and frees only after deleting the session.
        unsafe { sys::sqlite3session_table_filter(session, Some(table_filter_trampoline), ctx) };
        self.filter = Some(boxed);
    }

    /// The panic message of the table filter, if it panicked.
    pub(crate) fn filter_panic(&self) -> Option<String> {
        self.filter.as_ref().and_then(|f| f.panicked.clone())
    }

    /// Records the changes that turn `from.table` into `main.table` (attaching `table`).
    /// On failure, the error has the message `sqlite3session_diff` gave, if it gave one.
    pub(crate) fn diff(&self, db: Handle<'_>, from: &CStr, table: &CStr) -> Result<(), RawError> {
        let session = self.on(db);
        let mut message: *mut c_char = ptr::null_mut();
        // SAFETY: the session is live and its connection locked (`on` checked the handle);
        // names are NUL-terminated; `message` is an out-pointer that SQLite fills with a
        // sqlite3_malloc'd string or NULL.
        let rc = unsafe {
            sys::sqlite3session_diff(session, from.as_ptr(), table.as_ptr(), &mut message)
        };
        let text = if message.is_null() {
            None
        } else {
            // SAFETY: a NUL-terminated string from sqlite3_mprintf, copied here.
            let text = unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: the string came from sqlite3_mprintf and is not used after the copy.
            unsafe { sys::sqlite3_free(message.cast()) };
            Some(text)
        };
        check_on(db, rc, "sqlite3session_diff").map_err(|err| match (err, text) {
            (RawError::Sqlite { code, context, .. }, Some(message)) => RawError::Sqlite {
                code,
                message,
                context,
            },
            (err, _) => err,
        })
    }

    /// Attaches one table, or every table (`None`).
    pub(crate) fn attach(&self, db: Handle<'_>, table: Option<&str>) -> Result<(), RawError> {
        let session = self.on(db);
        let name = table
            .map(|t| CString::new(t).map_err(|_| RawError::InvalidName(t.to_owned())))
            .transpose()?;
        let name_ptr = name.as_ref().map_or(ptr::null(), |n| n.as_ptr());
        // SAFETY: the session is live and its connection locked (`on` checked the handle);
        // `name_ptr` is NULL or a NUL-terminated string that outlives the call.
        let rc = unsafe { sys::sqlite3session_attach(session, name_ptr) };
        check(rc, "sqlite3session_attach")
    }

    /// The changeset (or patchset) of everything recorded so far.
    pub(crate) fn generate(&self, db: Handle<'_>, patchset: bool) -> Result<Arc<[u8]>, RawError> {
        let session = self.on(db);
        let generate = if patchset {
            sys::sqlite3session_patchset
        } else {
            sys::sqlite3session_changeset
        };
        let mut failed = None;
        let blob = take_output("sqlite3session_changeset", |len, buf| {
            // SAFETY: the session is live and its connection locked (`on` checked the handle);
            // the out-pointers are valid.
            let rc = unsafe { generate(session, len, buf) };
            failed = (rc != sys::SQLITE_OK).then_some(rc);
            rc
        });
        // The connection's message, which says more than the code.
        blob.map_err(|err| match failed {
            Some(rc) => db_error(db, rc, "sqlite3session_changeset"),
            None => err,
        })
    }

    /// Writes the changeset (or patchset) of everything recorded so far to `output`, in chunks
    /// (`sqlite3session_changeset_strm`): the whole blob is never in memory.
    pub(crate) fn generate_strm<W: Write>(
        &self,
        db: Handle<'_>,
        patchset: bool,
        output: &mut Output<W>,
    ) -> Result<(), RawError> {
        let session = self.on(db);
        let generate = if patchset {
            sys::sqlite3session_patchset_strm
        } else {
            sys::sqlite3session_changeset_strm
        };
        // SAFETY: the session is live and its connection locked (`on` checked the handle); the
        // output context outlives the call and matches its trampoline.
        let rc = unsafe {
            generate(
                session,
                Some(output_trampoline::<W>),
                ptr::from_mut(output).cast(),
            )
        };
        if let Some(err) = output.error.take() {
            return Err(RawError::Stream(err));
        }
        if rc == sys::SQLITE_OK {
            Ok(())
        } else {
            Err(db_error(db, rc, "sqlite3session_changeset_strm"))
        }
    }

    /// Bytes of heap the session uses.
    pub(crate) fn memory_used(&self, db: Handle<'_>) -> i64 {
        let session = self.on(db);
        // SAFETY: the session is live and its connection locked (`on` checked the handle).
        unsafe { sys::sqlite3session_memory_used(session) }
    }

    /// Deletes the session.
    pub(crate) fn delete(self, db: Handle<'_>) {
        let session = self.on(db);
        // SAFETY: the session is live, its connection locked (`on` checked the handle), and
        // `self` is consumed so it is never used again.
        unsafe { sys::sqlite3session_delete(session) };
        session_deleted(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_sessions_are_forgotten_past_the_kept_count_and_live_ones_never() {
        let live = session_created("/liteorm-test/live.db");
        for i in 0..(LIVE_FILES_KEPT * 2) {
            let file = session_created(&format!("/liteorm-test/{i}.db"));
            assert_eq!(live_sessions(&file), 1);
            session_deleted(&file);
            assert_eq!(live_sessions(&file), 0);
        }
        let kept = LIVE_SESSIONS
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .keys()
            .filter(|file| file.starts_with("/liteorm-test/") && !file.ends_with("/live.db"))
            .count();
        assert!(kept <= LIVE_FILES_KEPT, "{kept} files at 0 kept");
        assert_eq!(live_sessions("/liteorm-test/live.db"), 1);
        session_deleted(&live);
        assert_eq!(live_sessions("/liteorm-test/live.db"), 0);
    }
}
