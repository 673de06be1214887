//! Pool connections that a pool-backed session keeps for a short while after an operation, with
//! sqlx's handle lock still held, so that the next operation skips sqlx's pool and worker.
//!
//! Each time a connection goes back to sqlx's pool, sqlx pings it on its worker thread, and the
//! next inline statement or raw call on it has to take sqlx's handle lock again: two round trips
//! to the worker (each several context switches) for every pool-backed operation, which is most
//! of the cost of a one-row transaction. A pool-backed [`SqliteSession`](crate::SqliteSession)
//! instead *parks* a connection it is done with, when that connection is in autocommit mode and
//! its handle lock is held, and the next operation of the session (or of a clone of it) takes it
//! from here, handle lock, prepared statements and all.
//!
//! A parked connection still counts as checked out of sqlx's pool. So that nobody waits long for
//! it: a connection is parked only while no operation of this session is waiting for one from
//! the pool (it goes straight back to the pool otherwise), parked connections go back to the pool
//! after the session's linger without use, and none is parked or handed out once the pool is
//! closed. Code that uses the sqlx pool directly may wait up to one linger for a connection that
//! is parked; [`crate::SqliteSession::close`] returns the parked connections before it closes the
//! pool.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use liteorm_core::Result;
use sqlx::sqlite::SqlitePool;
use tokio::time::Instant;

use crate::convert;
use crate::pinned::{Held, Slot};
use crate::slot::Lock;
use crate::sqlx_compat::{self, PoolId};

/// How long a connection stays parked without use, unless the session says otherwise.
pub(crate) const DEFAULT_LINGER: Duration = Duration::from_millis(10);

/// The parked connections of one pool-backed session and its clones.
pub(crate) struct Parking {
    pool: SqlitePool,
    pool_id: PoolId,
    linger: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Parked connections, each in the slot it was pinned in (which nothing else refers to), with
    /// the time each was parked, oldest first.
    idle: Vec<(Slot, Instant)>,
    /// Whether a task is running that returns expired connections to the pool (there is one
    /// whenever `idle` is not empty).
    reaper: bool,
    /// Operations of this session waiting for a connection from the pool.
    waiting: usize,
    /// When a connection was last parked.
    last_park: Option<Instant>,
}

impl Parking {
    pub(crate) fn new(pool: SqlitePool, linger: Duration) -> Self {
        Parking {
            pool_id: sqlx_compat::pool_id(&pool),
            pool,
            linger,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) fn pool_id(&self) -> PoolId {
        self.pool_id
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, so poison is harmless.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The most recently parked connection, or one from the pool (in a new slot).
    pub(crate) async fn acquire(&self) -> Result<Slot> {
        let waiting = match self.take_or_wait() {
            Ok(held) => return Ok(held),
            Err(waiting) => waiting,
        };
        // Boxed: sqlx's acquire future is large, and every statement's future holds this one's
        // state, so a statement that takes a parked connection (or runs on a pinned one) would
        // otherwise move and allocate room for it on each call.
        let conn = Box::pin(self.pool.acquire()).await.map_err(convert::error);
        drop(waiting);
        Ok(Arc::new(Lock::new(Held::new(conn?))))
    }

    /// The most recently parked connection, or else this operation counted as waiting for the
    /// pool (`None` once the pool is closed: the pool then reports it).
    fn take_or_wait(&self) -> std::result::Result<Slot, Option<Waiting<'_>>> {
        let mut state = self.state();
        if self.pool.is_closed() {
            // Returned (and so closed) outside the lock.
            let idle = std::mem::take(&mut state.idle);
            drop(state);
            drop(idle);
            return Err(None);
        }
        if let Some((slot, _)) = state.idle.pop() {
            return Ok(slot);
        }
        // Counted under the same lock as the check above, so that a connection released from
        // now on goes to the pool, where this operation waits, and is not parked.
        state.waiting += 1;
        Err(Some(Waiting(self)))
    }

    /// Parks the connection in `slot` (unlocked, referred to by nothing else, in autocommit
    /// mode with its handle lock held), or returns it to the pool if parking is off, the pool
    /// is closed, another operation of this session is waiting for a connection, or there is
    /// no Tokio runtime to return it later.
    pub(crate) fn park(self: &Arc<Self>, slot: Slot) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return drop(slot);
        };
        let mut state = self.state();
        if self.linger.is_zero() || state.waiting > 0 || self.pool.is_closed() {
            drop(state);
            return drop(slot);
        }
        let now = Instant::now();
        state.idle.push((slot, now));
        state.last_park = Some(now);
        if !state.reaper {
            state.reaper = true;
            runtime.spawn(Arc::clone(self).reap());
        }
    }

    /// Returns every parked connection to the pool now.
    pub(crate) fn drain(&self) {
        let idle = std::mem::take(&mut self.state().idle);
        drop(idle);
    }

    /// Returns parked connections to the pool once they have lingered unused; ends when none
    /// is left. (It needs Tokio's timers, as sqlx's pool does.)
    async fn reap(self: Arc<Self>) {
        let mut reaper = Reaper {
            parking: &self,
            done: false,
        };
        loop {
            let next = {
                let mut state = self.state();
                // The oldest parked connection expires first. With none parked (they are in
                // use), the task stays while connections were parked within one linger, so
                // that a session in steady use does not start one per operation.
                let next = match state.idle.first() {
                    Some((_, parked)) => *parked,
                    None => state.last_park.unwrap_or_else(Instant::now),
                } + self.linger;
                if state.idle.is_empty() && next <= Instant::now() {
                    state.reaper = false;
                    reaper.done = true;
                    return;
                }
                next
            };
            tokio::time::sleep_until(next).await;
            let expired = {
                let mut state = self.state();
                let now = Instant::now();
                let fresh = state
                    .idle
                    .iter()
                    .position(|(_, parked)| *parked + self.linger > now)
                    .unwrap_or(state.idle.len());
                state.idle.drain(..fresh).collect::<Vec<_>>()
            };
            // Back to the pool (sqlx pings each on the way), outside the lock.
            drop(expired);
        }
    }
}

/// An operation waiting for a pool connection, counted while it waits (also if cancelled).
struct Waiting<'a>(&'a Parking);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state().waiting -= 1;
    }
}

/// The running reaper task. If the task is dropped before it is done (its runtime shut down),
/// the parked connections go back to the pool at once and the next one parked starts a new one.
struct Reaper<'a> {
    parking: &'a Parking,
    done: bool,
}

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut state = self.parking.state();
            state.reaper = false;
            let idle = std::mem::take(&mut state.idle);
            drop(state);
            drop(idle);
        }
    }
}
