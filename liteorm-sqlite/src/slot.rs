//! The lock around a pinned connection: an async mutex whose uncontended lock and unlock are
//! one atomic swap each, and which hands the connection to waiting lockers in arrival order.
//!
//! Every statement on a pinned connection takes this lock (most of them on the inline path,
//! where the lock is all the synchronization there is), so its uncontended cost is on the path
//! of every `execute`. `tokio::sync::Mutex` takes its waiter list's lock on every unlock, waiters
//! or not; this lock keeps the value itself in an atomic cell while it is free, so that taking
//! the value is locking and putting it back is unlocking, and it looks at its queue only when a
//! locker waits. It stays fair as tokio's is: a value released while lockers wait goes straight
//! to the first of them (a running task cannot take it back first), and `try_lock` fails while
//! anyone waits, so a task that runs statement after statement lets a waiting one in between.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crossbeam_utils::atomic::AtomicCell;

/// An async mutex around a `T` (see the module docs).
pub(crate) struct Lock<T> {
    /// The value while nobody holds it and nobody it was handed to has taken it yet.
    free: AtomicCell<Option<Box<T>>>,
    /// The lockers that wait, in arrival order.
    queue: Mutex<Queue<T>>,
    /// How many lockers `queue` holds (changed only with `queue` locked): while it is not 0,
    /// `try_lock` fails and an unlock hands the value over instead of putting it back.
    waiting: AtomicUsize,
}

struct Queue<T> {
    next_id: u64,
    entries: VecDeque<Entry<T>>,
}

/// A waiting locker: how to wake it, and the value once it was handed to it.
struct Entry<T> {
    id: u64,
    waker: Waker,
    handed: Option<Box<T>>,
}

impl<T> Lock<T> {
    pub(crate) fn new(value: T) -> Self {
        Lock {
            free: AtomicCell::new(Some(Box::new(value))),
            queue: Mutex::new(Queue {
                next_id: 0,
                entries: VecDeque::new(),
            }),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The value, if it is free and nobody waits for it.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<Guard<&Self, T>> {
        try_lock(self)
    }

    /// [`Self::try_lock`] with a guard that owns a reference to the lock.
    #[inline]
    pub(crate) fn try_lock_owned(self: &Arc<Self>) -> Option<OwnedGuard<T>> {
        try_lock(Arc::clone(self))
    }

    /// The value, once every locker that came first had it.
    pub(crate) fn lock(&self) -> Acquire<&Self, T> {
        Acquire {
            lock: Some(self),
            id: None,
        }
    }

    /// [`Self::lock`] with a guard that owns a reference to the lock.
    pub(crate) fn lock_owned(self: Arc<Self>) -> Acquire<Arc<Self>, T> {
        Acquire {
            lock: Some(self),
            id: None,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue<T>> {
        // Nothing panics while the queue is locked; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Unlocks: puts `value` back, or hands it to the first waiting locker and wakes it.
    #[inline]
    fn release(&self, value: Box<T>) {
        if self.waiting.load(SeqCst) != 0 {
            return self.hand_over(value);
        }
        // (`store` would drop the `None` it replaces out of line.)
        if let Some(previous) = self.free.swap(Some(value)) {
            // Unreachable: the one value was held here.
            drop(previous);
        }
        // A locker that queued before the swap takes the value itself when it looks (it queues,
        // then looks); one that queues after it sees the value; one that queued in between is
        // seen here, and the value, if still there, is handed to it.
        if self.waiting.load(SeqCst) != 0
            && let Some(value) = self.free.take()
        {
            self.hand_over(value);
        }
    }

    /// [`Self::release`] while lockers wait.
    #[cold]
    fn hand_over(&self, value: Box<T>) {
        let mut queue = self.queue();
        // At most one entry was handed the value (this one is it), so an entry that was not
        // handed it exists whenever one exists at all.
        if let Some(entry) = queue.entries.iter_mut().find(|e| e.handed.is_none()) {
            entry.handed = Some(value);
            let waker = entry.waker.clone();
            drop(queue);
            waker.wake();
            return;
        }
        // The lockers that were counted left meanwhile: put the value back, as then nobody
        // waits.
        drop(queue);
        self.release(value);
    }

    /// Removes the entry `id` from the queue; returns the value if it had been handed to it.
    fn leave_queue(&self, id: u64) -> Option<Box<T>> {
        let mut queue = self.queue();
        let position = queue.entries.iter().position(|e| e.id == id)?;
        let entry = queue.entries.remove(position)?;
        self.waiting.fetch_sub(1, SeqCst);
        entry.handed
    }
}

/// Takes the value through `lock` if it is free and nobody waits.
#[inline]
fn try_lock<L: Deref<Target = Lock<T>>, T>(lock: L) -> Option<Guard<L, T>> {
    if lock.waiting.load(SeqCst) != 0 {
        return None;
    }
    let value = lock.free.take()?;
    Some(Guard {
        lock,
        value: Some(value),
    })
}

/// Exclusive access to the value; unlocks when dropped.
pub(crate) struct Guard<L: Deref<Target = Lock<T>>, T> {
    lock: L,
    /// `Some` until the guard is dropped.
    value: Option<Box<T>>,
}

/// A [`Guard`] that owns a reference to its lock (`'static`, and `Send` when `T` is).
pub(crate) type OwnedGuard<T> = Guard<Arc<Lock<T>>, T>;

impl<T> OwnedGuard<T> {
    /// Whether this guard holds `lock`.
    pub(crate) fn is_of(&self, lock: &Arc<Lock<T>>) -> bool {
        Arc::ptr_eq(&self.lock, lock)
    }
}

const HELD: &str = "a guard holds its value until it is dropped";

impl<L: Deref<Target = Lock<T>>, T> Deref for Guard<L, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.value.as_deref().expect(HELD)
    }
}

impl<L: Deref<Target = Lock<T>>, T> DerefMut for Guard<L, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_deref_mut().expect(HELD)
    }
}

impl<L: Deref<Target = Lock<T>>, T> Drop for Guard<L, T> {
    #[inline]
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            self.lock.release(value);
        }
    }
}

/// The future of [`Lock::lock`]: queues on its first poll unless the value is free and nobody
/// waits. Dropped while queued, it leaves the queue (handing the value on if it had been handed
/// it).
pub(crate) struct Acquire<L: Deref<Target = Lock<T>>, T> {
    /// `None` once the guard was returned.
    lock: Option<L>,
    /// The queue entry, once queued.
    id: Option<u64>,
}

impl<L: Deref<Target = Lock<T>> + Unpin, T> Future for Acquire<L, T> {
    type Output = Guard<L, T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Guard<L, T>> {
        let this = &mut *self;
        let Some(lock) = this.lock.as_ref() else {
            panic!("a lock future was polled after it completed");
        };
        let value = match this.id {
            None => {
                if lock.waiting.load(SeqCst) == 0
                    && let Some(value) = lock.free.take()
                {
                    Some(value)
                } else {
                    let mut queue = lock.queue();
                    let id = queue.next_id;
                    queue.next_id += 1;
                    queue.entries.push_back(Entry {
                        id,
                        waker: cx.waker().clone(),
                        handed: None,
                    });
                    lock.waiting.fetch_add(1, SeqCst);
                    drop(queue);
                    this.id = Some(id);
                    // Put back by an unlock that counted no waiter before this one counted
                    // itself: take it (nothing can have been handed to this new entry, as the
                    // one value was free).
                    lock.free.take().inspect(|_| {
                        lock.leave_queue(id);
                        this.id = None;
                    })
                }
            }
            Some(id) => {
                let mut queue = lock.queue();
                let handed = queue
                    .entries
                    .iter_mut()
                    .find(|e| e.id == id)
                    .and_then(|entry| {
                        let handed = entry.handed.take();
                        if handed.is_none() && !entry.waker.will_wake(cx.waker()) {
                            entry.waker = cx.waker().clone();
                        }
                        handed
                    });
                drop(queue);
                handed.inspect(|_| {
                    lock.leave_queue(id);
                    this.id = None;
                })
            }
        };
        match value {
            Some(value) => Poll::Ready(Guard {
                lock: this.lock.take().expect("checked above"),
                value: Some(value),
            }),
            None => Poll::Pending,
        }
    }
}

impl<L: Deref<Target = Lock<T>>, T> Drop for Acquire<L, T> {
    fn drop(&mut self) {
        if let (Some(lock), Some(id)) = (self.lock.as_ref(), self.id)
            && let Some(value) = lock.leave_queue(id)
        {
            lock.release(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    /// A waker that records that it was woken.
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, SeqCst);
        }
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (Arc::clone(&flag), Waker::from(flag))
    }

    fn poll<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn an_uncontended_lock_takes_and_puts_back_the_value() {
        let lock = Lock::new(1);
        {
            let mut guard = lock.try_lock().expect("free");
            *guard += 1;
            assert!(lock.try_lock().is_none(), "held");
        }
        let (_, waker) = flag();
        let Poll::Ready(guard) = poll(&mut lock.lock(), &waker) else {
            panic!("free, so ready at once");
        };
        assert_eq!(*guard, 2);
    }

    #[test]
    fn the_value_goes_to_waiters_in_arrival_order_and_try_lock_waits_its_turn() {
        let lock = Lock::new(Vec::new());
        let first = lock.try_lock().expect("free");
        let (woken_a, waker_a) = flag();
        let (woken_b, waker_b) = flag();
        let mut a = lock.lock();
        let mut b = lock.lock();
        assert!(poll(&mut a, &waker_a).is_pending());
        assert!(poll(&mut b, &waker_b).is_pending());
        drop(first);
        assert!(woken_a.0.load(SeqCst) && !woken_b.0.load(SeqCst));
        // `a` was handed the value: nobody else can take it, even before `a` runs.
        assert!(lock.try_lock().is_none());
        assert!(poll(&mut b, &waker_b).is_pending());
        let Poll::Ready(mut guard) = poll(&mut a, &waker_a) else {
            panic!("handed the value");
        };
        guard.push('a');
        // While `b` waits, a newcomer's try_lock fails even once the value is released.
        drop(guard);
        assert!(woken_b.0.load(SeqCst));
        assert!(lock.try_lock().is_none());
        let Poll::Ready(mut guard) = poll(&mut b, &waker_b) else {
            panic!("handed the value");
        };
        guard.push('b');
        drop(guard);
        assert_eq!(*lock.try_lock().expect("free again"), ['a', 'b']);
    }

    #[test]
    fn a_waiter_dropped_after_it_was_handed_the_value_passes_it_on() {
        let lock = Lock::new(0);
        let held = lock.try_lock().expect("free");
        let (_, waker_a) = flag();
        let (woken_b, waker_b) = flag();
        let mut a = lock.lock();
        let mut b = lock.lock();
        assert!(poll(&mut a, &waker_a).is_pending());
        assert!(poll(&mut b, &waker_b).is_pending());
        drop(held);
        drop(a);
        assert!(
            woken_b.0.load(SeqCst),
            "the value went on to the next waiter"
        );
        assert!(poll(&mut b, &waker_b).is_ready());
    }

    #[test]
    fn a_waiter_dropped_before_its_turn_leaves_the_queue() {
        let lock = Lock::new(0);
        let held = lock.try_lock().expect("free");
        let (_, waker) = flag();
        let mut a = lock.lock();
        assert!(poll(&mut a, &waker).is_pending());
        drop(a);
        drop(held);
        assert!(
            lock.try_lock().is_some(),
            "no waiter left: the value is free"
        );
    }

    #[test]
    fn many_threads_and_tasks_increment_under_the_lock() {
        const TASKS: usize = 8;
        const ROUNDS: usize = 2000;
        let lock = Arc::new(Lock::new(0_usize));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    let lock = Arc::clone(&lock);
                    tokio::spawn(async move {
                        for round in 0..ROUNDS {
                            let mut guard = if (task + round) % 2 == 0 {
                                match lock.try_lock_owned() {
                                    Some(guard) => guard,
                                    None => Arc::clone(&lock).lock_owned().await,
                                }
                            } else {
                                Arc::clone(&lock).lock_owned().await
                            };
                            let seen = *guard;
                            tokio::task::yield_now().await;
                            *guard = seen + 1;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
        });
        assert_eq!(*lock.try_lock().expect("free"), TASKS * ROUNDS);
        assert_eq!(lock.waiting.load(SeqCst), 0);
    }
}
