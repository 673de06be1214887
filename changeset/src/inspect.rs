//! Rendering changes for tools and people: a stable JSON format (serde) and SQL statements.
//!
//! # JSON format
//!
//! [`Change`] implements [`serde::Serialize`]; [`Changeset::to_json`](crate::Changeset::to_json)
//! renders a whole blob as a JSON array of such objects, one change per line. The format is
//! stable: fields are only ever added. [`Changeset::from_json`](crate::Changeset::from_json)
//! reads it back (an array, or one change per line) and builds the same bytes again.
//!
//! ```json
//! {"table":"users","op":"UPDATE","indirect":false,"pk":[1,0,0],
//!  "old":[{"integer":1},{"text":"ada"},null],"new":[null,{"text":"Ada"},null]}
//! ```
//!
//! - `table`: the table name.
//! - `op`: `"INSERT"`, `"UPDATE"` or `"DELETE"`.
//! - `indirect`: whether the change was recorded as indirect (made by a trigger or foreign key
//!   action, or while the session's indirect flag was set).
//! - `pk`: per column, its position in the primary key (1-based), or 0 for other columns.
//! - `old`: the values before the change, one per column; absent for an `INSERT`.
//! - `new`: the values after the change, one per column; absent for a `DELETE`.
//!
//! Each entry of `old` and `new` is `null` when the change does not record that column (an
//! unchanged column of an update, a non-key column of a patchset delete), and otherwise an
//! object with one key naming the SQLite storage class, so that a recorded SQL NULL, an integer
//! and a real with an integral value stay distinct:
//!
//! | SQLite value   | JSON                                                               |
//! |----------------|--------------------------------------------------------------------|
//! | NULL           | `{"null":null}`                                                    |
//! | INTEGER        | `{"integer":42}` (exact, also beyond 2^53)                         |
//! | REAL           | `{"real":1.0}`; infinities and NaN as `{"real":"inf"}`, `"-inf"`, `"nan"` |
//! | TEXT           | `{"text":"..."}`                                                   |
//! | BLOB           | `{"blob":"00ff"}` (lowercase hex)                                  |
//!
//! # SQL
//!
//! [`Change::to_sql`] renders one statement per change, with literal values: an insert lists the
//! recorded columns, an update sets the new values `WHERE` the key and the recorded old values
//! match, a delete matches the key and every recorded old value. A changeset records column
//! positions, not names: [`ColumnNames`] supplies them (read from a database with
//! [`ColumnNames::of`]); tables it does not know get `column1`, `column2`, ... Indirect changes end
//! with `-- indirect`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use liteorm_core::{Session, Value};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde::{Deserialize, Deserializer, de};

use crate::change::{Change, ChangeOp};
use crate::{Error, gate};

impl ChangeOp {
    /// `"INSERT"`, `"UPDATE"` or `"DELETE"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "INSERT",
            ChangeOp::Update => "UPDATE",
            ChangeOp::Delete => "DELETE",
        }
    }
}

impl Serialize for ChangeOp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A value in the JSON format's typed encoding (`{"integer":42}`, `{"text":"ada"}`, ... see the
/// [module docs](crate::inspect)), for JSON that carries values outside a change, such as a
/// conflicting row: a script can tell the integer 9 from the text `'9'`.
///
/// ```
/// use liteorm_changeset::inspect::TypedValue;
/// use liteorm_core::Value;
///
/// let row = [Value::Integer(9), Value::from("9"), Value::Null];
/// let json = serde_json::to_string(&row.iter().map(TypedValue).collect::<Vec<_>>()).unwrap();
/// assert_eq!(json, r#"[{"integer":9},{"text":"9"},{"null":null}]"#);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TypedValue<'a>(pub &'a Value);

impl Serialize for TypedValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self.0 {
            Value::Null => map.serialize_entry("null", &())?,
            Value::Integer(i) => map.serialize_entry("integer", i)?,
            Value::Real(x) if x.is_finite() => map.serialize_entry("real", x)?,
            Value::Real(x) if x.is_nan() => map.serialize_entry("real", "nan")?,
            Value::Real(x) => map.serialize_entry("real", if *x > 0.0 { "inf" } else { "-inf" })?,
            Value::Text(text) => map.serialize_entry("text", text)?,
            Value::Blob(bytes) => map.serialize_entry("blob", &hex(bytes))?,
        }
        map.end()
    }
}

/// One entry of `old` or `new` in the JSON format: `null` when not recorded.
struct Cell<'a>(&'a Option<Value>);

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => serializer.serialize_none(),
            Some(value) => TypedValue(value).serialize(serializer),
        }
    }
}

struct Cells<'a>(&'a [Option<Value>]);

impl Serialize for Cells<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Cell))
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

impl Serialize for Change {
    /// The stable JSON format described in the [module docs](crate::inspect).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields =
            4 + usize::from(self.op != ChangeOp::Insert) + usize::from(self.op != ChangeOp::Delete);
        let mut map = serializer.serialize_map(Some(fields))?;
        map.serialize_entry("table", &*self.table)?;
        map.serialize_entry("op", &self.op)?;
        map.serialize_entry("indirect", &self.indirect)?;
        map.serialize_entry("pk", &self.pk)?;
        if self.op != ChangeOp::Insert {
            map.serialize_entry("old", &Cells(&self.old))?;
        }
        if self.op != ChangeOp::Delete {
            map.serialize_entry("new", &Cells(&self.new))?;
        }
        map.end()
    }
}

/// A change in the JSON format, as read back.
#[derive(Deserialize)]
#[serde(rename = "Change")]
struct ChangeJson {
    table: String,
    op: OpJson,
    #[serde(default)]
    indirect: bool,
    pk: Vec<u8>,
    #[serde(default)]
    old: Option<Vec<Option<ValueJson>>>,
    #[serde(default)]
    new: Option<Vec<Option<ValueJson>>>,
}

#[derive(Deserialize)]
enum OpJson {
    #[serde(rename = "INSERT")]
    Insert,
    #[serde(rename = "UPDATE")]
    Update,
    #[serde(rename = "DELETE")]
    Delete,
}

/// A typed value: an object with one key naming the storage class.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum ValueJson {
    Null(()),
    Integer(i64),
    Real(RealJson),
    Text(String),
    Blob(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RealJson {
    Number(f64),
    Special(String),
}

impl ValueJson {
    fn into_value(self) -> Result<Value, String> {
        Ok(match self {
            ValueJson::Null(()) => Value::Null,
            ValueJson::Integer(i) => Value::Integer(i),
            ValueJson::Real(RealJson::Number(x)) => Value::Real(x),
            ValueJson::Real(RealJson::Special(s)) => Value::Real(match s.as_str() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                "nan" => f64::NAN,
                other => return Err(format!("invalid real {other:?}")),
            }),
            ValueJson::Text(text) => Value::Text(text),
            ValueJson::Blob(hex) => Value::Blob(unhex(&hex)?),
        })
    }
}

fn unhex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("blob hex {hex:?} has an odd length"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("blob hex {hex:?} is not hexadecimal"))
        })
        .collect()
}

fn cells(cells: Option<Vec<Option<ValueJson>>>) -> Result<Vec<Option<Value>>, String> {
    cells
        .unwrap_or_default()
        .into_iter()
        .map(|cell| cell.map(ValueJson::into_value).transpose())
        .collect()
}

impl<'de> Deserialize<'de> for Change {
    /// Reads the JSON format described in the [module docs](crate::inspect); unknown fields are
    /// ignored (the format only ever adds fields).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = ChangeJson::deserialize(deserializer)?;
        Ok(Change {
            table: json.table.into(),
            op: match json.op {
                OpJson::Insert => ChangeOp::Insert,
                OpJson::Update => ChangeOp::Update,
                OpJson::Delete => ChangeOp::Delete,
            },
            indirect: json.indirect,
            pk: json.pk,
            old: cells(json.old).map_err(de::Error::custom)?,
            new: cells(json.new).map_err(de::Error::custom)?,
        })
    }
}

/// Reads changes in the JSON format: a JSON array of change objects (what `to_json` writes), or
/// one change object per line (JSON lines; blank lines are skipped).
pub(crate) fn from_json(json: &str, kind: &'static str) -> Result<Vec<Change>, Error> {
    let invalid = |entry: usize, reason: String| Error::Invalid {
        kind,
        entry,
        offset: None,
        reason,
    };
    if json.trim_start().starts_with('[') {
        return serde_json::from_str(json).map_err(|err| invalid(0, format!("JSON: {err}")));
    }
    let mut changes = Vec::new();
    for (n, line) in json.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let change = serde_json::from_str(line)
            .map_err(|err| invalid(changes.len(), format!("JSON line {}: {err}", n + 1)))?;
        changes.push(change);
    }
    Ok(changes)
}

/// Renders changes as a JSON array with one change per line.
pub(crate) fn to_json(
    changes: impl Iterator<Item = Result<Change, Error>>,
) -> Result<String, Error> {
    let mut out = String::from("[");
    for (i, change) in changes.enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let json = serde_json::to_string(&change?).map_err(|err| Error::Invalid {
            kind: "change",
            entry: i,
            offset: None,
            reason: err.to_string(),
        })?;
        out.push_str(&json);
    }
    out.push_str(if out.len() == 1 { "]" } else { "\n]" });
    Ok(out)
}

/// Renders changes as SQL, one statement per line.
pub(crate) fn to_sql(
    changes: impl Iterator<Item = Result<Change, Error>>,
    names: &ColumnNames,
) -> Result<String, Error> {
    let mut out = String::new();
    for change in changes {
        out.push_str(&change?.to_sql(names));
        out.push('\n');
    }
    Ok(out)
}

/// Column names per table, to render changes as SQL with real names.
///
/// ```
/// use liteorm_changeset::{ColumnNames, capture};
/// use liteorm_core::Session;
/// use liteorm_sqlite::SqliteSession;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), liteorm_changeset::Error> {
/// let db = SqliteSession::open_in_memory().await?;
/// db.execute_batch("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)").await?;
/// let changes = capture(&db, &["users"], |s| async move {
///     s.execute("INSERT INTO users VALUES (1, 'ada')", &[]).await?;
///     s.execute("UPDATE users SET name = 'Ada' WHERE id = 1", &[]).await?;
///     Ok::<_, liteorm_changeset::Error>(())
/// })
/// .await?;
///
/// // Positional names without a schema, real ones with.
/// assert_eq!(
///     changes.to_sql(&ColumnNames::new())?,
///     "INSERT INTO \"users\" (\"column1\", \"column2\") VALUES (1, 'Ada');\n"
/// );
/// let names = ColumnNames::of(&db).await?;
/// assert_eq!(
///     changes.to_sql(&names)?,
///     "INSERT INTO \"users\" (\"id\", \"name\") VALUES (1, 'Ada');\n"
/// );
/// // And as JSON, one change per line.
/// assert_eq!(
///     changes.to_json()?,
///     "[\n{\"table\":\"users\",\"op\":\"INSERT\",\"indirect\":false,\"pk\":[1,0],\
///      \"new\":[{\"integer\":1},{\"text\":\"Ada\"}]}\n]"
/// );
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnNames {
    tables: HashMap<String, Vec<String>>,
}

impl ColumnNames {
    /// No names: every column renders by position.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the columns of `table`, in order.
    pub fn table<I, C>(mut self, table: impl Into<String>, columns: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: Into<String>,
    {
        self.tables
            .insert(table.into(), columns.into_iter().map(Into::into).collect());
        self
    }

    /// The names of every table of the `main` database of `session`.
    pub async fn of(session: &dyn Session) -> Result<Self, Error> {
        gate::gate(session, "reading column names")?;
        let rows = session
            .query(
                "SELECT m.name, p.name FROM main.sqlite_schema AS m, \
                 pragma_table_info(m.name, 'main') AS p \
                 WHERE m.type = 'table' ORDER BY m.name, p.cid",
                &[],
            )
            .await?;
        let mut names = ColumnNames::new();
        for row in rows {
            let table: String = row.try_get(0)?;
            let column: String = row.try_get(1)?;
            names.tables.entry(table).or_default().push(column);
        }
        Ok(names)
    }

    /// The column names of `table`, if known.
    pub fn get(&self, table: &str) -> Option<&[String]> {
        self.tables
            .get(table)
            .or_else(|| {
                self.tables
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(table))
                    .map(|(_, columns)| columns)
            })
            .map(Vec::as_slice)
    }

    /// Names for the columns of `change`: the known ones when they fit (with `_rowid_` first for
    /// a change recorded with an implicit rowid key), else positional ones.
    fn for_change<'a>(&'a self, change: &Change) -> Cow<'a, [String]> {
        let n = change.column_count();
        match self.get(&change.table) {
            Some(columns) if columns.len() == n => Cow::Borrowed(columns),
            Some(columns)
                if columns.len() + 1 == n
                    && change.pk.first() == Some(&1)
                    && change.pk[1..].iter().all(|&p| p == 0) =>
            {
                let mut named = Vec::with_capacity(n);
                named.push("_rowid_".to_owned());
                named.extend(columns.iter().cloned());
                Cow::Owned(named)
            }
            _ => Cow::Owned((1..=n).map(|i| format!("column{i}")).collect()),
        }
    }
}

/// `name` as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `column = value`, or `column IS NULL`.
fn condition(column: &str, value: &Value) -> String {
    match value {
        Value::Null => format!("{} IS NULL", ident(column)),
        value => format!("{} = {value}", ident(column)),
    }
}

impl Change {
    /// This change as one SQL statement (see the [module docs](crate::inspect#sql)), e.g.
    /// `UPDATE "users" SET "name" = 'Ada' WHERE "id" = 1 AND "name" = 'ada';`.
    pub fn to_sql(&self, names: &ColumnNames) -> String {
        let columns = names.for_change(self);
        let table = ident(&self.table);
        let recorded = |side: &[Option<Value>]| -> Vec<(usize, Value)> {
            side.iter()
                .enumerate()
                .filter_map(|(i, v)| v.clone().map(|v| (i, v)))
                .collect()
        };
        // Key columns first, then the other recorded old values.
        let conditions = || {
            let mut old = recorded(&self.old);
            old.sort_by_key(|(i, _)| self.pk.get(*i).copied().unwrap_or(0) == 0);
            old.iter()
                .map(|(i, v)| condition(&columns[*i], v))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let mut sql = match self.op {
            ChangeOp::Insert => {
                let new = recorded(&self.new);
                let cols: Vec<String> = new.iter().map(|(i, _)| ident(&columns[*i])).collect();
                let vals: Vec<String> = new.iter().map(|(_, v)| v.to_string()).collect();
                format!(
                    "INSERT INTO {table} ({}) VALUES ({});",
                    cols.join(", "),
                    vals.join(", ")
                )
            }
            ChangeOp::Update => {
                // An update never changes the key (that is a delete and an insert), but a rebased
                // one can carry the key among its new values: it sets nothing.
                let set: Vec<String> = recorded(&self.new)
                    .iter()
                    .filter(|(i, v)| {
                        self.pk.get(*i).copied().unwrap_or(0) == 0
                            || self.old.get(*i).and_then(Option::as_ref) != Some(v)
                    })
                    .map(|(i, v)| format!("{} = {v}", ident(&columns[*i])))
                    .collect();
                if set.is_empty() {
                    format!("-- no-op UPDATE {table} WHERE {};", conditions())
                } else {
                    format!(
                        "UPDATE {table} SET {} WHERE {};",
                        set.join(", "),
                        conditions()
                    )
                }
            }
            ChangeOp::Delete => format!("DELETE FROM {table} WHERE {};", conditions()),
        };
        if self.indirect {
            sql.push_str(" -- indirect");
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn change(op: ChangeOp, old: Vec<Option<Value>>, new: Vec<Option<Value>>) -> Change {
        Change {
            table: Arc::from("t"),
            op,
            indirect: false,
            pk: vec![1, 0, 0],
            old,
            new,
        }
    }

    #[test]
    fn json_keeps_not_recorded_null_integer_and_real_apart() {
        let update = change(
            ChangeOp::Update,
            vec![Some(Value::Integer(1)), Some(Value::Null), None],
            vec![None, Some(Value::Real(1.0)), None],
        );
        assert_eq!(
            serde_json::to_string(&update).unwrap(),
            r#"{"table":"t","op":"UPDATE","indirect":false,"pk":[1,0,0],"old":[{"integer":1},{"null":null},null],"new":[null,{"real":1.0},null]}"#
        );
    }

    #[test]
    fn json_writes_blobs_as_hex_and_non_finite_reals_as_strings() {
        let insert = change(
            ChangeOp::Insert,
            Vec::new(),
            vec![
                Some(Value::Blob(vec![0, 0xab])),
                Some(Value::Real(f64::NEG_INFINITY)),
                Some(Value::Text("a\"b".into())),
            ],
        );
        assert_eq!(
            serde_json::to_string(&insert).unwrap(),
            r#"{"table":"t","op":"INSERT","indirect":false,"pk":[1,0,0],"new":[{"blob":"00ab"},{"real":"-inf"},{"text":"a\"b"}]}"#
        );
    }

    #[test]
    fn sql_uses_is_null_for_null_old_values_and_quotes_identifiers() {
        let mut delete = change(
            ChangeOp::Delete,
            vec![
                Some(Value::Integer(2)),
                Some(Value::Null),
                Some(Value::Text("it's".into())),
            ],
            Vec::new(),
        );
        delete.indirect = true;
        let names = ColumnNames::new().table("t", ["id", "we\"ird", "name"]);
        assert_eq!(
            delete.to_sql(&names),
            r#"DELETE FROM "t" WHERE "id" = 2 AND "we""ird" IS NULL AND "name" = 'it''s'; -- indirect"#
        );
    }
}
