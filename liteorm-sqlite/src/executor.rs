//! sqlx's query API on a [`SqliteSession`]: `impl sqlx::Executor for &SqliteSession`.
//!
//! So that an app's own sqlx code (`sqlx::query(..).execute(&s)`, `query_as::<_, T>`,
//! `fetch_*`, `FromRow`, the `query!` macros) can run on the session a capture hands its
//! closure, on the connection that carries the recording session object, inside capture's
//! transaction, interleaved in any order with liteorm's own `execute`/`query` calls.
//!
//! Each command takes the session's connection (the pinned one, or for a pool-backed session
//! the one [`SqliteSession::pin`] gives) for as long as that one command or stream lives,
//! gives sqlx's handle lock back to sqlx's worker thread, and runs through sqlx's own
//! `Executor for &mut SqliteConnection`. Dropping the future or stream at any point leaves the
//! connection consistent: the slot is unlocked on drop, and a command sqlx's worker may still
//! be running is finished by the worker before the next liteorm statement takes the handle
//! lock again (the worker reads its commands in order; see `Held::unlock_queued`).
//!
//! One statement at a time, as on sqlx's `&mut SqliteConnection` (where the borrow checker
//! enforces it): while a `fetch` stream of a pinned session is open, any other statement on that
//! session waits until the stream is dropped. A loop that writes while it reads a stream of the
//! same session therefore waits for itself: read with `fetch_all` first, then write.
//!
//! sqlx's transactions (`Acquire`, `Connection::begin`) are not offered: liteorm runs the
//! transaction control of its sessions itself, so nest with [`liteorm_core::Session::begin`]
//! (a savepoint inside a capture), whose transaction's session is again an executor.

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::sqlite::{Sqlite, SqliteQueryResult, SqliteRow, SqliteStatement, SqliteTypeInfo};
use sqlx::{Describe, Either, Execute, Executor, SqlStr};

use crate::{PinnedConnection, PinnedGuard, SqliteSession};

/// The connection one sqlx command runs on, held until it is dropped.
struct Lease {
    /// Declared first: unlocked before `_pin` (which needs the lock to give the connection back).
    guard: PinnedGuard,
    /// For a pool-backed session, the connection taken for this command.
    _pin: Option<PinnedConnection>,
}

impl SqliteSession {
    async fn lease(&self) -> liteorm_core::Result<Lease> {
        let (guard, pin) = self.command_connection().await?;
        Ok(Lease { guard, _pin: pin })
    }
}

/// sqlx's error for a liteorm error met while taking the connection: a sqlx error it wraps as
/// it was, anything else as an I/O error whose source is the liteorm error.
fn to_sqlx(err: liteorm_core::Error) -> sqlx::Error {
    match err {
        liteorm_core::Error::Driver(inner) => match inner.downcast::<sqlx::Error>() {
            Ok(sqlx) => *sqlx,
            Err(other) => sqlx::Error::Io(std::io::Error::other(other)),
        },
        other => sqlx::Error::Io(std::io::Error::other(other)),
    }
}

impl<'c> Executor<'c> for &'c SqliteSession {
    type Database = Sqlite;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<SqliteQueryResult, SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        Box::pin(async_stream::try_stream! {
            let mut lease = self.lease().await.map_err(to_sqlx)?;
            let mut answered = false;
            {
                let mut steps = lease.guard.connection().fetch_many(query);
                while let Some(step) = steps.next().await {
                    let step = step?;
                    answered = true;
                    yield step;
                }
            }
            // Only a stream read to its end says the worker is done with the command (see
            // `Held::unlock_queued`); one dropped midway leaves the flag as it was.
            if answered {
                lease.guard.sqlx_result(Ok(())).map_err(to_sqlx)?;
            }
        })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        Box::pin(async move {
            let mut lease = self.lease().await.map_err(to_sqlx)?;
            let row = lease.guard.connection().fetch_optional(query).await?;
            lease.guard.sqlx_result(Ok(())).map_err(to_sqlx)?;
            Ok(row)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [SqliteTypeInfo],
    ) -> BoxFuture<'e, Result<SqliteStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let mut lease = self.lease().await.map_err(to_sqlx)?;
            let statement = lease
                .guard
                .connection()
                .prepare_with(sql, parameters)
                .await?;
            lease.guard.sqlx_result(Ok(())).map_err(to_sqlx)?;
            Ok(statement)
        })
    }

    // Required whenever sqlx-core's `offline` feature is on, which sqlx's `macros` feature turns
    // on: this crate always enables it (through sqlx-sqlite), so the impl builds either way.
    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Sqlite>, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let mut lease = self.lease().await.map_err(to_sqlx)?;
            let described = lease.guard.connection().describe(sql).await?;
            lease.guard.sqlx_result(Ok(())).map_err(to_sqlx)?;
            Ok(described)
        })
    }
}
