//! [`SeaSession`]: SeaORM's connection traits on a liteorm [`SqliteSession`], so entities run on
//! the session's connection (inside a capture, the recording one).

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use liteorm_core::{Session, Transaction};
use liteorm_sqlite::SqliteSession;
use sea_orm::sea_query::Values;
use sea_orm::{
    AccessMode, ConnectionTrait, DbBackend, DbErr, ExecResult, IsolationLevel, QueryResult,
    SqliteTransactionMode, Statement, TransactionError, TransactionOptions, TransactionSession,
    TransactionTrait,
};
use sea_query_sqlx::SqlxValues;
use sqlx::AssertSqlSafe;
use sqlx::sqlite::Sqlite;

use crate::error::{exec_err, liteorm_err, query_err};

/// A SeaORM connection (`ConnectionTrait` + `TransactionTrait`) on a liteorm [`SqliteSession`].
///
/// Every statement runs on the session's connection through sqlx, bound as sea-orm binds it
/// (so results, errors and `RETURNING` behave as on a `DatabaseConnection`). On the pinned
/// session that [`crate::capture`] or [`crate::record`] hands its closure, that is the recording
/// connection, inside capture's transaction: everything the entities write is recorded.
/// [`TransactionTrait::begin`] nests: a savepoint inside a capture or another transaction,
/// whose rollback undoes (and un-records) its writes. On a pool-backed session each statement
/// runs on a pool connection, and `begin` holds one for the transaction.
#[derive(Clone, Debug)]
pub struct SeaSession {
    session: SqliteSession,
}

impl SeaSession {
    /// SeaORM on `session`.
    pub fn new(session: SqliteSession) -> Self {
        SeaSession { session }
    }

    /// The liteorm session the statements run on (for liteorm's own `execute`/`query`, or sqlx
    /// queries, interleaved with the entities' statements).
    pub fn session(&self) -> &SqliteSession {
        &self.session
    }

    /// Begins a transaction: `BEGIN IMMEDIATE` if `immediate`, else `BEGIN`; a savepoint when
    /// the session is already in one.
    async fn begin_transaction(&self, immediate: bool) -> Result<SeaTransaction, DbErr> {
        let tx: Box<dyn Transaction> = if immediate {
            Box::new(self.session.begin_immediate().await.map_err(liteorm_err)?)
        } else {
            Session::begin(&self.session).await.map_err(liteorm_err)?
        };
        // A SQLite transaction's session is the pinned `SqliteSession` it runs on.
        let session = tx
            .as_session()
            .as_any()
            .downcast_ref::<SqliteSession>()
            .cloned()
            .ok_or_else(|| {
                DbErr::Custom("a liteorm SQLite transaction without its session".into())
            })?;
        Ok(SeaTransaction {
            conn: SeaSession::new(session),
            tx,
        })
    }
}

/// sqlx's query for a SeaORM statement, bound as sea-orm's own SQLite driver binds it.
fn sqlx_query(stmt: Statement) -> sqlx::query::Query<'static, Sqlite, SqlxValues> {
    let values = stmt.values.unwrap_or(Values(Vec::new()));
    sqlx::query_with(AssertSqlSafe(stmt.sql), SqlxValues(values))
}

#[async_trait]
impl ConnectionTrait for SeaSession {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        sqlx_query(stmt)
            .execute(&self.session)
            .await
            .map(ExecResult::from)
            .map_err(exec_err)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        sqlx::Executor::execute(&self.session, AssertSqlSafe(sql.to_owned()))
            .await
            .map(ExecResult::from)
            .map_err(exec_err)
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        sqlx_query(stmt)
            .fetch_optional(&self.session)
            .await
            .map(|row| row.map(QueryResult::from))
            .map_err(query_err)
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        sqlx_query(stmt)
            .fetch_all(&self.session)
            .await
            .map(|rows| rows.into_iter().map(QueryResult::from).collect())
            .map_err(query_err)
    }
}

/// Runs `callback` in `tx`: commits on `Ok`, rolls back on `Err`.
async fn run_in<F, T, E>(tx: SeaTransaction, callback: F) -> Result<T, TransactionError<E>>
where
    F: for<'c> FnOnce(
            &'c SeaTransaction,
        ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
        + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    let result = callback(&tx).await;
    match result {
        Ok(value) => {
            tx.commit().await.map_err(TransactionError::Connection)?;
            Ok(value)
        }
        Err(err) => {
            tx.rollback().await.map_err(TransactionError::Connection)?;
            Err(TransactionError::Transaction(err))
        }
    }
}

#[async_trait]
impl TransactionTrait for SeaSession {
    type Transaction = SeaTransaction;

    async fn begin(&self) -> Result<SeaTransaction, DbErr> {
        self.begin_transaction(false).await
    }

    /// SQLite has no isolation levels or access modes to set (sea-orm's own SQLite driver
    /// ignores them too): the same as [`Self::begin`].
    async fn begin_with_config(
        &self,
        _isolation_level: Option<IsolationLevel>,
        _access_mode: Option<AccessMode>,
    ) -> Result<SeaTransaction, DbErr> {
        self.begin_transaction(false).await
    }

    /// `Immediate` and `Exclusive` both begin with `BEGIN IMMEDIATE` (in WAL mode they are
    /// the same); nested, any mode is a savepoint.
    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<SeaTransaction, DbErr> {
        let immediate = matches!(
            options.sqlite_transaction_mode,
            Some(SqliteTransactionMode::Immediate | SqliteTransactionMode::Exclusive)
        );
        self.begin_transaction(immediate).await
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c SeaTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let tx = self.begin().await.map_err(TransactionError::Connection)?;
        run_in(tx, callback).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        _isolation_level: Option<IsolationLevel>,
        _access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c SeaTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.transaction(callback).await
    }
}

/// A transaction (a savepoint when nested) begun through [`SeaSession`]'s `TransactionTrait`.
///
/// Dropping it without [`TransactionSession::commit`] rolls it back.
pub struct SeaTransaction {
    conn: SeaSession,
    tx: Box<dyn Transaction>,
}

impl std::fmt::Debug for SeaTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeaTransaction")
            .field("session", &self.conn.session)
            .finish()
    }
}

impl SeaTransaction {
    /// The connection of this transaction, as a [`SeaSession`] (statements through it join the
    /// transaction).
    pub fn connection(&self) -> &SeaSession {
        &self.conn
    }
}

#[async_trait]
impl ConnectionTrait for SeaTransaction {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.conn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.conn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.conn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.conn.query_all_raw(stmt).await
    }
}

#[async_trait]
impl TransactionTrait for SeaTransaction {
    type Transaction = SeaTransaction;

    async fn begin(&self) -> Result<SeaTransaction, DbErr> {
        self.conn.begin().await
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<SeaTransaction, DbErr> {
        self.conn
            .begin_with_config(isolation_level, access_mode)
            .await
    }

    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<SeaTransaction, DbErr> {
        self.conn.begin_with_options(options).await
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c SeaTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.conn.transaction(callback).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c SeaTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.conn
            .transaction_with_config(callback, isolation_level, access_mode)
            .await
    }
}

#[async_trait]
impl TransactionSession for SeaTransaction {
    async fn commit(self) -> Result<(), DbErr> {
        self.tx.commit().await.map_err(liteorm_err)
    }

    async fn rollback(self) -> Result<(), DbErr> {
        self.tx.rollback().await.map_err(liteorm_err)
    }
}
