//! The threads liteorm runs its long FFI calls on (an apply, a changeset's generation, a diff, a
//! merge), off the async executor: [`spawn`].
//!
//! Like tokio's `spawn_blocking`, but a job goes to the thread that went idle **last**. tokio
//! wakes its idle blocking threads in turn, so one connection's consecutive applies each ran on
//! another thread, and each thread's glibc malloc arena had meanwhile handed the pages of the
//! last apply's rollback journal back to the kernel: a 100 000-row apply faulted up to 1 400 pages
//! back in, where the same apply on one thread faulted none. Here a replica's applies, one after
//! another, land on one warm thread (its arena and CPU caches).
//!
//! A thread that has been idle for [`KEEP_ALIVE`] ends. A job runs inside the tokio runtime
//! of the task that spawned it, if any (as under `spawn_blocking`), and a panic in it is caught
//! and handed to the task's awaiter, like [`std::thread::JoinHandle::join`]'s. Unlike tokio's
//! pool, these threads are not waited for when a runtime shuts down: a job still running when
//! the process exits is cut off, as by a crash: SQLite leaves a database that a job was writing
//! (always inside a transaction or a savepoint) as it was before the job, and a writer that a
//! stream function was filling keeps what it had been given.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::task::{Context, Poll, ready};
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;

/// How long an idle thread waits for a job before it ends (tokio's blocking pool: 10 s too).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// An idle thread: its number and where to send it a job.
struct Idle {
    id: u64,
    jobs: mpsc::Sender<Job>,
}

/// The idle threads, the one that went idle last at the end.
static IDLE: Mutex<Vec<Idle>> = Mutex::new(Vec::new());

/// Numbers the threads, so that one that times out can find itself in [`IDLE`].
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn idle() -> std::sync::MutexGuard<'static, Vec<Idle>> {
    // Nothing panics while the lock is held (pushes, pops and a search).
    IDLE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `job` on one of liteorm's blocking threads; the returned future resolves to its result,
/// or to its panic payload.
///
/// The job runs to its end whether or not the future is awaited or dropped (as under
/// `spawn_blocking`); if the OS cannot start a thread, the future resolves to an error whose
/// payload says so.
pub fn spawn<F, R>(job: F) -> Task<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (done, result) = oneshot::channel();
    let runtime = tokio::runtime::Handle::try_current().ok();
    let job: Job = Box::new(move || {
        let result = {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            catch_unwind(AssertUnwindSafe(job))
        };
        // Idle before the awaiter hears of the result, so that a job it spawns next comes here.
        went_idle();
        // The awaiter may be gone: then nobody wants the result.
        let _ = done.send(result);
    });
    let taken = idle().pop();
    let job = match taken {
        // An idle thread leaves `IDLE` only under the lock, and only to end if it took itself
        // out; so the one popped here is waiting for this job.
        Some(thread) => match thread.jobs.send(job) {
            Ok(()) => return Task(result),
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (jobs, inbox) = mpsc::channel();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let started = thread::Builder::new()
        .name("liteorm-blocking".to_owned())
        .spawn(move || work(id, jobs, &inbox, job));
    match started {
        Ok(_) => Task(result),
        Err(err) => {
            let (done, result) = oneshot::channel();
            let payload: Box<dyn Any + Send> =
                Box::new(format!("the OS could not start a blocking thread: {err}"));
            let _ = done.send(Err(payload));
            Task(result)
        }
    }
}

thread_local! {
    /// On a thread of the pool, how to list it in [`IDLE`].
    static SELF: std::cell::RefCell<Option<Idle>> = const { std::cell::RefCell::new(None) };
}

/// Lists the current thread in [`IDLE`] (a job's last step, on a thread of the pool).
fn went_idle() {
    SELF.with_borrow(|me| {
        if let Some(me) = me {
            idle().push(Idle {
                id: me.id,
                jobs: me.jobs.clone(),
            });
        }
    });
}

/// A thread's life: runs `first`, then whatever it is sent while it is idle (each job lists the
/// thread in [`IDLE`] when it is done), until it has been idle for [`KEEP_ALIVE`].
fn work(id: u64, jobs: mpsc::Sender<Job>, inbox: &mpsc::Receiver<Job>, first: Job) {
    SELF.set(Some(Idle { id, jobs }));
    let mut job = first;
    loop {
        job();
        job = match inbox.recv_timeout(KEEP_ALIVE) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = idle();
                if let Some(at) = idle.iter().position(|thread| thread.id == id) {
                    idle.remove(at);
                    return;
                }
                drop(idle);
                // A spawner took this thread out of `IDLE` just now: its job is on the way.
                match inbox.recv() {
                    Ok(next) => next,
                    Err(mpsc::RecvError) => return,
                }
            }
            // Unreachable: this thread holds a sender of its own inbox.
            Err(RecvTimeoutError::Disconnected) => return,
        };
    }
}

/// A job started by [`spawn`]: resolves to its result, or to its panic payload.
#[must_use = "the job runs anyway; await the task for its result"]
pub struct Task<R>(oneshot::Receiver<thread::Result<R>>);

impl<R> Future for Task<R> {
    type Output = thread::Result<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(Pin::new(&mut self.0).poll(cx)) {
            Ok(result) => result,
            // The job is dropped without running only if its thread died, which a caught
            // panic cannot cause.
            Err(_) => Err(Box::new(
                "the blocking thread ended before its job finished",
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_returns_its_result_and_a_panic_its_payload() {
        assert_eq!(spawn(|| 6 * 7).await.expect("returns"), 42);
        let n = std::hint::black_box(1);
        let payload = spawn(move || panic!("boom {n}")).await.expect_err("panics");
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some("boom 1")
        );
        // A panicking job leaves the pool working.
        assert_eq!(spawn(|| 1).await.expect("returns"), 1);
    }

    #[tokio::test]
    async fn a_job_runs_in_the_runtime_of_its_spawner() {
        let handle = spawn(|| tokio::runtime::Handle::try_current().is_ok());
        assert!(handle.await.expect("returns"));
        let outside = std::thread::spawn(|| {
            futures::executor::block_on(spawn(|| tokio::runtime::Handle::try_current().is_ok()))
        })
        .join()
        .expect("the outside thread returns");
        assert!(!outside.expect("returns"));
    }
}
