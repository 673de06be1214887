//! Conversions between liteorm's `Value`/`Row`/`Error` and sqlx's SQLite types.

use std::sync::Arc;

use liteorm_core::{Error, Row, SqliteCode, Value, ValueRef as Borrowed};
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Column, Row as _, TypeInfo, ValueRef};

use crate::DIALECT;

/// Maps a sqlx error to a liteorm error, keeping SQLite's code and message (a database error
/// becomes [`Error::Database`], anything else [`Error::Driver`]). The error types of the crates
/// built on this one convert `sqlx::Error` with it, so that `?` works on sqlx queries inside a
/// capture's closure.
pub fn error(err: sqlx::Error) -> Error {
    match err {
        sqlx::Error::Database(db) => Error::Database {
            dialect: DIALECT,
            // sqlx reports SQLite's extended result code as its decimal text.
            code: db.code().and_then(|c| c.parse().ok()).map(SqliteCode),
            message: db.message().to_owned(),
        },
        other => Error::Driver(Box::new(other)),
    }
}

/// A positional statement parameter: an owned [`Value`], or a borrowed
/// [`liteorm_core::ValueRef`] whose text or bytes the inline path binds without a copy.
pub(crate) trait Param: Sync {
    /// The parameter's value, borrowed.
    fn value(&self) -> Borrowed<'_>;
}

impl Param for Value {
    #[inline]
    fn value(&self) -> Borrowed<'_> {
        self.as_ref()
    }
}

impl Param for Borrowed<'_> {
    #[inline]
    fn value(&self) -> Borrowed<'_> {
        *self
    }
}

/// Builds sqlx arguments from positional liteorm values (sqlx owns its arguments: text and
/// bytes are copied).
pub(crate) fn arguments<P: Param>(params: &[P]) -> Result<SqliteArguments, Error> {
    use sqlx::Arguments as _;
    let mut args = SqliteArguments::default();
    for param in params {
        let added = match param.value() {
            Borrowed::Null => args.add(None::<i64>),
            Borrowed::Integer(i) => args.add(i),
            Borrowed::Real(f) => args.add(f),
            Borrowed::Text(s) => args.add(s.to_owned()),
            Borrowed::Blob(b) => args.add(b.to_vec()),
        };
        added.map_err(Error::Driver)?;
    }
    Ok(args)
}

/// Converts sqlx rows into liteorm rows, reading each value by its runtime storage class.
pub(crate) fn rows(rows: Vec<SqliteRow>) -> Result<Vec<Row>, Error> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let columns: Arc<[String]> = first
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    rows.iter()
        .map(|row| {
            let values = (0..columns.len())
                .map(|i| value(row, i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Row::new(Arc::clone(&columns), values))
        })
        .collect()
}

fn value(row: &SqliteRow, index: usize) -> Result<Value, Error> {
    let raw = row.try_get_raw(index).map_err(error)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    // For a non-NULL value sqlx reports the value's own storage class, not the declared type.
    let value = match raw.type_info().name() {
        "INTEGER" => Value::Integer(row.try_get_unchecked::<i64, _>(index).map_err(error)?),
        "REAL" => Value::Real(row.try_get_unchecked::<f64, _>(index).map_err(error)?),
        "TEXT" => Value::Text(row.try_get_unchecked::<String, _>(index).map_err(error)?),
        _ => Value::Blob(row.try_get_unchecked::<Vec<u8>, _>(index).map_err(error)?),
    };
    Ok(value)
}
