//! Capturing the changes a closure makes, on one pinned connection, inside one transaction.

use std::future::Future;
use std::sync::Arc;

use futures::executor::block_on as futures_lite_block_on;
use liteorm_core::Session;
use liteorm_sqlite::{PinnedConnection, PinnedGuard, SqliteSession};

use crate::ffi::{self, RawSession};
use crate::{Changeset, Error, Patchset, gate};

/// Sessions whose recorded data is larger than this generate their changeset on a blocking
/// thread instead of the calling task.
const INLINE_GENERATE_MAX: i64 = 256 * 1024;

/// Records every change `f` makes to `tables` (none listed: every table with a primary key) and
/// returns them as a [`Changeset`]. Shorthand for `Capture::new(session).tables(tables).changeset(f)`.
///
/// See [`Capture`] for the guarantees.
pub async fn capture<F, Fut, E>(
    session: &dyn Session,
    tables: &[&str],
    f: F,
) -> Result<Changeset, E>
where
    F: FnOnce(SqliteSession) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send,
    E: From<Error>,
{
    Capture::new(session)
        .tables(tables.iter().copied())
        .changeset(f)
        .await
}

/// A capture being configured.
///
/// The closure receives a [`SqliteSession`] pinned to the one connection on which the recording
/// session object lives: only statements run through it are recorded (changes made through any
/// other handle, such as another pool connection, are not). The closure runs inside a transaction
/// that capture opens (a savepoint when `session` is already in one):
///
/// - `Ok` from the closure: the changes are committed and returned as a changeset, together, or
///   neither (if producing the changeset fails, the transaction is rolled back).
/// - `Err` from the closure: the transaction is rolled back and the error returned as is; the
///   database is as before the capture.
/// - The future is dropped (cancelled): the transaction is rolled back and the session object
///   deleted before the connection goes back to the pool.
///
/// The closure may nest transactions with `begin()` (savepoints) but must not end capture's own
/// transaction with a raw `COMMIT`/`ROLLBACK` ([`Error::TransactionEnded`]).
#[must_use = "a Capture does nothing until `changeset` or `patchset` is awaited"]
pub struct Capture<'s> {
    session: &'s dyn Session,
    tables: Option<Vec<String>>,
}

impl<'s> Capture<'s> {
    /// A capture on `session` of every table that has a primary key.
    pub fn new(session: &'s dyn Session) -> Self {
        Capture {
            session,
            tables: None,
        }
    }

    /// Records only the given tables (adds to earlier calls). An empty list keeps "every table".
    pub fn tables<I, T>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tables: Vec<String> = tables.into_iter().map(Into::into).collect();
        if !tables.is_empty() {
            self.tables.get_or_insert_with(Vec::new).extend(tables);
        }
        self
    }

    /// Runs `f` and returns its changes as a changeset.
    pub async fn changeset<F, Fut, E>(self, f: F) -> Result<Changeset, E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error>,
    {
        self.run(false, f).await.map(Changeset::trusted)
    }

    /// Runs `f` and returns its changes as a patchset.
    pub async fn patchset<F, Fut, E>(self, f: F) -> Result<Patchset, E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error>,
    {
        self.run(true, f).await.map(Patchset::trusted)
    }

    async fn run<F, Fut, E>(self, patchset: bool, f: F) -> Result<Arc<[u8]>, E>
    where
        F: FnOnce(SqliteSession) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send,
        E: From<Error>,
    {
        let sqlite = gate::sqlite(self.session, "capturing a changeset")?;
        let pinned = sqlite.pin().await.map_err(Error::from)?;
        // Declared before the closure's future so that, on cancellation, it is dropped after it
        // (and so after any statement future that still holds the connection).
        let recording = Recording::start(pinned, self.tables.as_deref()).await?;
        f(recording.pinned.session()).await?;
        Ok(recording.finish(patchset).await?)
    }
}

/// A live recording: the session object and capture's transaction on the pinned connection.
/// Dropping it before [`Recording::finish`] undoes both.
struct Recording {
    pinned: PinnedConnection,
    session: Option<RawSession>,
    depth: Option<usize>,
}

impl Recording {
    async fn start(pinned: PinnedConnection, tables: Option<&[String]>) -> Result<Self, Error> {
        let mut recording = Recording {
            pinned,
            session: None,
            depth: None,
        };
        let mut guard = recording.pinned.lock().await?;
        let session = guard
            .with_raw(|db| -> Result<RawSession, Error> {
                // SAFETY: `db` comes from `with_raw`: valid and locked for this closure.
                unsafe {
                    for table in tables.unwrap_or_default() {
                        match ffi::table_pk(db, table)? {
                            None => return Err(Error::NoSuchTable(table.clone())),
                            Some(pk) if pk.iter().all(|&p| p == 0) => {
                                return Err(Error::NoPrimaryKey(table.clone()));
                            }
                            Some(_) => {}
                        }
                    }
                    let session = RawSession::create(db)?;
                    let attached = match tables {
                        None => session.attach(None),
                        Some(tables) => tables.iter().try_for_each(|t| session.attach(Some(t))),
                    };
                    if let Err(err) = attached {
                        session.delete();
                        return Err(err);
                    }
                    Ok(session)
                }
            })
            .await??;
        recording.session = Some(session);
        recording.depth = Some(guard.begin().await?);
        Ok(recording)
    }

    /// Produces the blob, commits capture's transaction and deletes the session object. On any
    /// error, `Drop` rolls back and deletes what is left.
    async fn finish(mut self, patchset: bool) -> Result<Arc<[u8]>, Error> {
        let mut guard = self.pinned.lock().await?;
        let depth = self.depth.unwrap_or_default();
        if guard.transaction_depth() != depth {
            return Err(Error::TransactionEnded);
        }
        let Some(session) = self.session.take() else {
            return Err(Error::TransactionEnded);
        };
        // SAFETY: `db` comes from `with_raw`: valid and locked for this closure.
        let small = guard.with_raw(|_db| unsafe { session.memory_used() }).await;
        let (blob, mut guard) = match small {
            Ok(used) if used <= INLINE_GENERATE_MAX => {
                let blob = guard
                    .with_raw(|db| generate_and_delete(db, session, patchset))
                    .await;
                (blob, guard)
            }
            Ok(_) => {
                let task = tokio::task::spawn_blocking(move || {
                    let blob =
                        guard.with_raw_blocking(|db| generate_and_delete(db, session, patchset));
                    (blob, guard)
                });
                task.await.map_err(|join| Error::Sqlite {
                    code: -1,
                    message: join.to_string(),
                    context: "generating the changeset",
                })?
            }
            Err(err) => {
                self.session = Some(session);
                return Err(err.into());
            }
        };
        let blob = blob??;
        guard.commit().await?;
        self.depth = None;
        Ok(blob)
    }
}

/// Checks that capture's transaction is still open, then generates the blob and deletes the
/// session (also when generating fails).
fn generate_and_delete(
    db: std::ptr::NonNull<liteorm_sqlite::ffi::sqlite3>,
    session: RawSession,
    patchset: bool,
) -> Result<Arc<[u8]>, Error> {
    // SAFETY: `db` comes from `with_raw*`: valid and locked for this call; `session` lives on it.
    unsafe {
        let result = if ffi::in_transaction(db) {
            session.generate(db, patchset)
        } else {
            Err(Error::TransactionEnded)
        };
        session.delete();
        result
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let session = self.session.take();
        let depth = self.depth.take();
        if session.is_none() && depth.is_none() {
            return;
        }
        if let Some(mut guard) = self.pinned.try_lock() {
            // The usual case: nothing else is running on the connection. Waiting for sqlx's
            // worker to hand over the handle takes at most the end of its current command.
            undo(&mut guard, session, depth);
            return;
        }
        // A statement is still in flight on the connection (a clone of the capture's session
        // outlived it): clean up once it is done, before the connection can go back to the pool.
        let pinned = self.pinned.share();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Ok(mut guard) = pinned.lock().await {
                        let _ =
                            tokio::task::spawn_blocking(move || undo(&mut guard, session, depth))
                                .await;
                    }
                });
            }
            Err(_) => {
                std::thread::spawn(move || {
                    if let Ok(mut guard) = futures_lite_block_on(pinned.lock()) {
                        undo(&mut guard, session, depth);
                    }
                });
            }
        }
    }
}

/// Rolls back capture's transaction level (and anything the closure left open above it), then
/// deletes the session object.
fn undo(guard: &mut PinnedGuard, session: Option<RawSession>, depth: Option<usize>) {
    if let Some(depth) = depth {
        // Failing here means the connection is broken; sqlx will not hand it out again.
        let _ = guard.rollback_levels_blocking(depth);
    }
    if let Some(session) = session {
        // SAFETY: `db` comes from `with_raw_blocking`: valid and locked; the session lives on it.
        let _ = guard.with_raw_blocking(|_db| unsafe { session.delete() });
    }
}
