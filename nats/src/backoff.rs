//! Retry delays for the `run` loops while the NATS server is unreachable.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(50);
const MAX: Duration = Duration::from_secs(2);

/// Doubling delays from 50 ms up to 2 s: short enough that a restarted server is picked up
/// quickly, long enough not to spin while it is down.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { next: FIRST }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = FIRST;
    }
}
