//! The order in which `liteorm_sqlite::blocking` hands jobs to its idle threads (alone in its
//! binary: other tests' jobs would take threads in between).

use std::thread::{self, ThreadId};
use std::time::Duration;

use liteorm_sqlite::blocking;

/// Runs three jobs at once, ending 20, 50 and 80 ms after they start; their threads, in that order.
async fn three_at_once() -> [ThreadId; 3] {
    let job = |ms| {
        blocking::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            thread::current().id()
        })
    };
    let (a, b, c) = tokio::join!(job(20), job(50), job(80));
    [a, b, c].map(|id| id.expect("the job returns"))
}

#[tokio::test]
async fn a_job_goes_to_the_thread_that_went_idle_last_and_idle_threads_end() {
    let threads = three_at_once().await;
    assert_ne!(threads[0], threads[1]);
    assert_ne!(threads[1], threads[2]);
    assert_ne!(threads[0], threads[2]);
    // tokio's blocking pool would wake the thread idle longest (`threads[0]`).
    for _ in 0..3 {
        let next = blocking::spawn(|| thread::current().id())
            .await
            .expect("the job returns");
        assert_eq!(next, threads[2]);
    }
    // Three at once again: the idle threads are reused, none is started.
    let again = three_at_once().await;
    assert!(
        again.iter().all(|id| threads.contains(id)),
        "{again:?} {threads:?}"
    );
    // Idle for longer than the keep-alive, they end: the next job starts a new thread (a
    // `ThreadId` is never reused).
    thread::sleep(blocking::KEEP_ALIVE + Duration::from_secs(1));
    let next = blocking::spawn(|| thread::current().id())
        .await
        .expect("the job returns");
    assert!(!threads.contains(&next), "{next:?} {threads:?}");
}
