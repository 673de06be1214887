//! A result row and typed access to its columns.

use std::sync::Arc;

use crate::{Error, Result, Value};

/// One row returned by [`Session::query`](crate::Session::query).
///
/// Column names are shared between the rows of one result, so a row is cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// Builds a row; `values` must have one entry per column name.
    pub fn new(columns: Arc<[String]>, values: Vec<Value>) -> Self {
        debug_assert_eq!(columns.len(), values.len());
        Row { columns, values }
    }

    /// The column names, in result order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Takes the values out of the row.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// The value of a column by index or name, or `None` if there is no such column.
    pub fn get(&self, index: impl ColumnIndex) -> Option<&Value> {
        index.position(self).map(|i| &self.values[i])
    }

    /// The value of a column converted to `T`.
    pub fn try_get<T: FromValue>(&self, index: impl ColumnIndex) -> Result<T> {
        let position = index
            .position(self)
            .ok_or_else(|| Error::ColumnNotFound(index.describe()))?;
        T::from_value(&self.values[position]).ok_or_else(|| Error::Decode {
            column: index.describe(),
            found: self.values[position].type_name(),
            expected: std::any::type_name::<T>(),
        })
    }
}

/// Something that names a column of a [`Row`]: a `usize` index or a `&str` name.
pub trait ColumnIndex {
    /// The column's position in `row`, if it exists.
    fn position(&self, row: &Row) -> Option<usize>;
    /// How to name the column in an error.
    fn describe(&self) -> String;
}

impl ColumnIndex for usize {
    fn position(&self, row: &Row) -> Option<usize> {
        (*self < row.values.len()).then_some(*self)
    }
    fn describe(&self) -> String {
        format!("#{self}")
    }
}

impl ColumnIndex for &str {
    fn position(&self, row: &Row) -> Option<usize> {
        row.columns.iter().position(|c| c == self)
    }
    fn describe(&self) -> String {
        (*self).to_owned()
    }
}

/// Conversion from a [`Value`] to a Rust type. Conversions are strict: an integer column does
/// not read as a string, and NULL only reads as `Option::None` or [`Value::Null`].
pub trait FromValue: Sized {
    /// Converts, or `None` if the value's type does not fit.
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Option<Self> {
        Some(value.clone())
    }
}
impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for bool {
    fn from_value(value: &Value) -> Option<Self> {
        i64::from_value(value).map(|i| i != 0)
    }
}
impl FromValue for f64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Real(f) => Some(*f),
            _ => None,
        }
    }
}
impl FromValue for String {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row::new(
            Arc::from(vec!["id".to_owned(), "name".to_owned()]),
            vec![Value::Integer(7), Value::Null],
        )
    }

    #[test]
    fn typed_access_by_name_and_index() {
        let row = row();
        assert_eq!(row.try_get::<i64>("id").unwrap(), 7);
        assert_eq!(row.try_get::<Option<String>>(1).unwrap(), None);
        assert!(matches!(
            row.try_get::<String>("name"),
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            row.try_get::<i64>("nope"),
            Err(Error::ColumnNotFound(_))
        ));
        assert!(row.get(2).is_none());
    }
}
