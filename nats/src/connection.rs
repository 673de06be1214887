//! Noticing that the connection to the server was lost while a request waits for its answer.
//!
//! A restarted server forgets the requests it had not answered: a waiting pull, a publish not yet
//! acknowledged. The client reconnects on its own, but an answer to such a request never comes,
//! so without this a follower waits out its pull's whole deadline (by default 10 s) and a
//! publisher its acknowledgement timeout before trying again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream;

/// How often a waiting request looks at the connection.
const POLL: Duration = Duration::from_millis(100);

/// The connection as it was when a request was sent.
pub(crate) struct ConnectionWatch {
    client: async_nats::Client,
    connects: u64,
}

impl ConnectionWatch {
    /// Watches `js`'s connection from now on.
    pub(crate) fn new(js: &jetstream::Context) -> Self {
        let client = js.client();
        let connects = client.statistics().connects.load(Ordering::Relaxed);
        ConnectionWatch { client, connects }
    }

    /// Completes once the connection is down or has been re-established since [`Self::new`]
    /// (a reconnect between two looks still counts); pending forever while it stays up.
    pub(crate) async fn lost(&self) {
        while !self.is_lost() {
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the connection is down or has been re-established since [`Self::new`], now.
    pub(crate) fn is_lost(&self) -> bool {
        self.client.connection_state() != State::Connected
            || self.client.statistics().connects.load(Ordering::Relaxed) != self.connects
    }

    /// The error of a request whose connection was lost: transient, so the run loops retry.
    pub(crate) fn error(op: &'static str) -> crate::Error {
        crate::Error::Nats {
            op,
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection to the server was lost while waiting for its answer",
            )),
        }
    }
}
