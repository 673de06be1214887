//! Routing a pool-backed session to the connection a capture pinned, on the capture's own task.
//!
//! A capture records only what runs on the one connection that carries its session object. Code
//! inside the capture's closure often still holds the application's pool-backed session (or an
//! ORM built on the same pool) and writes through it; on another pool connection that write
//! would wait for the capture's write lock and fail, or, worse, go unrecorded.
//! [`PinnedConnection::route`](crate::PinnedConnection::route) runs a future with every
//! pool-backed [`SqliteSession`](crate::SqliteSession) on the same pool routed to the pinned
//! connection for the future's duration, on the task that polls it: its statements,
//! transactions (as savepoints) and pins join the pinned connection, and so the capture.
//! Tasks spawned from there are not routed (a task-local does not follow `tokio::spawn`).

use std::future::Future;
use std::sync::Arc;

use crate::pinned::Slot;
use crate::sqlx_compat::PoolId;

tokio::task_local! {
    /// The routes in force on this task, innermost last.
    static ROUTES: Routes;
}

/// Pinned connections by the pool they came from.
#[derive(Clone, Default)]
struct Routes(Arc<Vec<(PoolId, Slot)>>);

/// Runs `fut` with the pool `pool` routed to `slot` (in addition to the routes already in force).
pub(crate) async fn scope<F: Future>(pool: PoolId, slot: Slot, fut: F) -> F::Output {
    let mut routes = ROUTES
        .try_with(|routes| routes.0.as_ref().clone())
        .unwrap_or_default();
    routes.push((pool, slot));
    ROUTES.scope(Routes(Arc::new(routes)), fut).await
}

/// The pinned connection that operations on `pool` are routed to on this task, if any.
pub(crate) fn routed(pool: PoolId) -> Option<Slot> {
    ROUTES
        .try_with(|routes| {
            routes
                .0
                .iter()
                .rev()
                .find(|(routed, _)| *routed == pool)
                .map(|(_, slot)| Arc::clone(slot))
        })
        .ok()
        .flatten()
}
