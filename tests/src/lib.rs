//! Test support for the liteorm integration suite: a second, non-SQLite dialect.
//!
//! [`MemSession`] is a tiny in-memory dialect: tables are lists of rows, and it understands just
//! `INSERT INTO t VALUES (?, ...)`, `DELETE FROM t` and `SELECT * FROM t`, with transactions that
//! work on a copy and swap it in on commit. It exists so that capability gates can be tested
//! against a dialect that really is not SQLite, through the same `Session` trait.
//!
//! [`DropAfter`] drops a future after a given number of polls, for the cancellation tests here
//! and in the ORM adapters' suites.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_trait::async_trait;
use liteorm_core::{Dialect, Error, Result, Row, Session, Transaction, Value};

/// The test dialect's identity.
pub const MEM_DIALECT: Dialect = Dialect::new("mem");

type Tables = BTreeMap<String, Vec<Vec<Value>>>;

/// A session of the in-memory test dialect. Clones share the same tables.
#[derive(Clone, Default)]
pub struct MemSession {
    tables: Arc<Mutex<Tables>>,
}

impl MemSession {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave the map half-updated: every write replaces
        // a whole entry, so the poisoned data is still consistent.
        self.tables
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn unsupported(sql: &str) -> Error {
    Error::Database {
        dialect: MEM_DIALECT,
        code: None,
        message: format!("mem dialect does not understand: {sql}"),
    }
}

/// Splits `sql` into words, treating `(`, `)` and `,` as spaces.
fn words(sql: &str) -> Vec<String> {
    sql.replace(['(', ')', ','], " ")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[async_trait]
impl Session for MemSession {
    fn dialect(&self) -> Dialect {
        MEM_DIALECT
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        let w = words(sql);
        let w: Vec<&str> = w.iter().map(String::as_str).collect();
        let mut tables = self.tables();
        match w.as_slice() {
            ["INSERT", "INTO", table, "VALUES", marks @ ..] if marks.len() == params.len() => {
                tables
                    .entry((*table).to_owned())
                    .or_default()
                    .push(params.to_vec());
                Ok(1)
            }
            ["DELETE", "FROM", table] => {
                let removed = tables.remove(*table).map_or(0, |rows| rows.len());
                Ok(removed as u64)
            }
            _ => Err(unsupported(sql)),
        }
    }

    async fn execute_batch(&self, sql: &str) -> Result<()> {
        for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
            self.execute(statement, &[]).await?;
        }
        Ok(())
    }

    async fn query(&self, sql: &str, _params: &[Value]) -> Result<Vec<Row>> {
        let w = words(sql);
        let w: Vec<&str> = w.iter().map(String::as_str).collect();
        let ["SELECT", "*", "FROM", table] = w.as_slice() else {
            return Err(unsupported(sql));
        };
        let tables = self.tables();
        let rows = tables.get(*table).cloned().unwrap_or_default();
        let width = rows.first().map_or(0, Vec::len);
        let columns: Arc<[String]> = (0..width).map(|i| format!("c{i}")).collect();
        Ok(rows
            .into_iter()
            .map(|values| Row::new(Arc::clone(&columns), values))
            .collect())
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let copy = MemSession {
            tables: Arc::new(Mutex::new(self.tables().clone())),
        };
        Ok(Box::new(MemTransaction {
            parent: self.clone(),
            work: copy,
        }))
    }
}

/// A transaction of the test dialect: writes go to a copy that replaces the parent on commit.
pub struct MemTransaction {
    parent: MemSession,
    work: MemSession,
}

#[async_trait]
impl Session for MemTransaction {
    fn dialect(&self) -> Dialect {
        MEM_DIALECT
    }
    fn as_any(&self) -> &dyn Any {
        &self.work
    }
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64> {
        self.work.execute(sql, params).await
    }
    async fn execute_batch(&self, sql: &str) -> Result<()> {
        self.work.execute_batch(sql).await
    }
    async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.work.query(sql, params).await
    }
    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        self.work.begin().await
    }
}

#[async_trait]
impl Transaction for MemTransaction {
    async fn commit(self: Box<Self>) -> Result<()> {
        let committed = self.work.tables().clone();
        *self.parent.tables() = committed;
        Ok(())
    }
    async fn rollback(self: Box<Self>) -> Result<()> {
        Ok(())
    }
    fn as_session(&self) -> &dyn Session {
        self
    }
}

/// Polls the wrapped future at most `polls` times; on the next poll drops it unfinished (inside
/// the runtime, like a `select!` or a timeout would) and returns `None`.
pub struct DropAfter<F> {
    inner: Option<Pin<Box<F>>>,
    polls: usize,
}

impl<F: Future> DropAfter<F> {
    /// Wraps `inner`, to be polled at most `polls` times.
    pub fn new(inner: F, polls: usize) -> Self {
        DropAfter {
            inner: Some(Box::pin(inner)),
            polls,
        }
    }
}

impl<F: Future> Future for DropAfter<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            self.inner = None;
            return Poll::Ready(None);
        }
        self.polls -= 1;
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll(cx) {
            Poll::Ready(output) => {
                self.inner = None;
                Poll::Ready(Some(output))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
