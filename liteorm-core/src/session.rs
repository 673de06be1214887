//! The `Session` trait: what every dialect provides, and how capability crates find out which
//! dialect they were handed.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;

use crate::{Result, Row, Value};

/// A boxed, `Send` future, as returned by closures passed to [`transaction`] and to capability
/// crates' closure-taking APIs.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The identity of a dialect, e.g. [`Dialect::SQLITE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dialect(&'static str);

impl Dialect {
    /// The SQLite dialect (`liteorm-sqlite`).
    pub const SQLITE: Dialect = Dialect("sqlite");

    /// A dialect named `name`; each dialect crate defines one constant.
    pub const fn new(name: &'static str) -> Self {
        Dialect(name)
    }

    /// The dialect's name.
    pub const fn name(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// An async database session of some dialect.
///
/// Methods take `&self`: a session may be shared between tasks (behind an `Arc`) and each dialect
/// decides how statements are scheduled onto physical connections. Statements use `?` placeholders
/// with positional [`Value`] parameters.
#[async_trait]
pub trait Session: Send + Sync {
    /// Which dialect this session speaks.
    fn dialect(&self) -> Dialect;

    /// The concrete session, for capability crates that downcast to a dialect they support.
    fn as_any(&self) -> &dyn Any;

    /// Runs one statement and returns the number of rows it changed.
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64>;

    /// Runs one or more statements separated by `;`, without parameters.
    async fn execute_batch(&self, sql: &str) -> Result<()>;

    /// Runs a query and returns all of its rows.
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;

    /// Starts a transaction. Everything run through the returned [`Transaction`] happens inside
    /// it; dropping it without [`Transaction::commit`] rolls it back. Calling `begin` on a
    /// transaction nests (a savepoint where the dialect has them).
    async fn begin(&self) -> Result<Box<dyn Transaction>>;

    /// Runs a query and returns its first row, if any.
    async fn query_optional(&self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }
}

/// A transaction started by [`Session::begin`]; it is itself a [`Session`].
#[async_trait]
pub trait Transaction: Session {
    /// Makes the transaction's changes durable.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Discards the transaction's changes.
    async fn rollback(self: Box<Self>) -> Result<()>;

    /// The transaction as a plain session, to pass where `&dyn Session` is expected.
    fn as_session(&self) -> &dyn Session;
}

/// Runs `f` in a transaction on `session`: commits if it returns `Ok`, rolls back if it returns
/// `Err` (which is returned as is) or if the returned future is dropped.
///
/// ```
/// # use liteorm_core::{Session, Error, transaction};
/// async fn transfer(db: &dyn Session) -> Result<(), Error> {
///     transaction(db, |tx| Box::pin(async move {
///         tx.execute("UPDATE account SET balance = balance - 10 WHERE id = ?", &[1.into()]).await?;
///         tx.execute("UPDATE account SET balance = balance + 10 WHERE id = ?", &[2.into()]).await?;
///         Ok(())
///     }))
///     .await
/// }
/// ```
pub async fn transaction<T, E, F>(session: &dyn Session, f: F) -> Result<T, E>
where
    F: for<'a> FnOnce(&'a dyn Session) -> BoxFuture<'a, Result<T, E>>,
    E: From<crate::Error>,
{
    let tx = session.begin().await?;
    match f(tx.as_session()).await {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(err) => {
            // The caller's error is the one worth reporting; a failed rollback is also undone
            // by the dialect when the transaction handle is dropped.
            let _ = tx.rollback().await;
            Err(err)
        }
    }
}
