//! Property tests of changeset round trips on random schemas (composite and WITHOUT ROWID keys,
//! every affinity) and random writes of every value type: capture → apply reproduces the source,
//! invert ∘ invert is the identity (and inverted iteration reads the inverse), applying the inverse restores the original, concat applies
//! like both halves in order, a patchset applies like the changeset, and what SQLite writes
//! rebuilds to the same bytes (through the builder and through the JSON format).

use liteorm_changeset::{ApplyReport, Capture, Change, ChangeOp, Changeset, Patchset, apply};
use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;
use proptest::prelude::*;
use proptest::sample::Index;

/// Cases per property (`PROPTEST_CASES` overrides): the file takes about 20 s in debug on 2
/// shared cores. 3000 cases each passed in both cells when the properties were re-enabled.
const CASES: u32 = 256;

/// Declared column types: every affinity (INTEGER, REAL, TEXT, BLOB/none, NUMERIC).
const DECLARED: &[&str] = &["", "INTEGER", "REAL", "TEXT", "BLOB", "NUMERIC"];

/// The most columns a generated table has; ops carry this many values and use a prefix.
const MAX_COLUMNS: usize = 5;

/// The oldest SQLite verified here to report old values of WITHOUT ROWID tables with the right
/// affinity (see [`Table::preupdate_old_misreads_integers`]): 3.40.1 (the system cell) has the
/// bug, the 3.50.4 amalgamation bundled in libsqlite3-sys (its SQLCipher copy) and 3.51.3 do
/// not. The first fixed release lies in between and was not pinned down.
const PREUPDATE_OLD_FIXED: i64 = 3_050_004;

/// `sqlite_version()` of the linked SQLite, as a number (e.g. `3040001`).
fn linked_sqlite_version() -> i64 {
    static VERSION: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        runtime().block_on(async {
            SqliteSession::open_in_memory()
                .await
                .unwrap()
                .info()
                .version_number
        })
    })
}

#[derive(Debug, Clone)]
struct Table {
    name: String,
    /// Declared type per column; columns are named `c0`, `c1`, ...
    columns: Vec<&'static str>,
    /// Key columns, in key order (not necessarily column order).
    pk: Vec<usize>,
    without_rowid: bool,
}

impl Table {
    /// `PRIMARY KEY(x)` on a column declared `INTEGER` of a rowid table aliases the rowid, which
    /// only takes integers.
    fn rowid_alias(&self) -> bool {
        !self.without_rowid && self.pk.len() == 1 && self.columns[self.pk[0]] == "INTEGER"
    }

    fn create(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, declared)| format!("c{i} {declared}"))
            .collect();
        let pk: Vec<String> = self.pk.iter().map(|i| format!("c{i}")).collect();
        format!(
            "CREATE TABLE {}({}, PRIMARY KEY({})){}",
            self.name,
            columns.join(", "),
            pk.join(", "),
            if self.without_rowid {
                " WITHOUT ROWID"
            } else {
                ""
            }
        )
    }

    /// The column whose value SQLite stores at each record position: for a WITHOUT ROWID table
    /// the key columns in key order, then the others in table order; else table order.
    fn storage_order(&self) -> Vec<usize> {
        if self.without_rowid {
            let mut order = self.pk.clone();
            order.extend(self.non_key_columns());
            order
        } else {
            (0..self.columns.len()).collect()
        }
    }

    /// Whether SQLite before [`PREUPDATE_OLD_FIXED`] reports an integer of some column of this
    /// table as a REAL to the session extension when the row is updated or deleted.
    ///
    /// That `sqlite3_preupdate_old` maps the column number to the record position of a WITHOUT
    /// ROWID table (key columns first) and then looks up REAL affinity with the *position*, so a
    /// column `c` whose position holds a REAL column elsewhere in the table gets its integers
    /// realified (3.40.1: `iIdx = sqlite3TableColumnToIndex(p->pPk, iIdx)` then
    /// `p->pTab->aCol[iIdx].affinity`; later releases keep the position in a separate `iStore`
    /// and use `aCol[iIdx]`). The session then records an insert of a row and a later update
    /// of it as two rows (the keys differ in type), and applying the changeset conflicts with
    /// itself. Affected columns are those that can hold an integer (not TEXT or REAL affinity).
    fn preupdate_old_misreads_integers(&self) -> bool {
        self.storage_order()
            .iter()
            .enumerate()
            .any(|(position, &column)| {
                position != column
                    && self.columns[position] == "REAL"
                    && !matches!(self.columns[column], "REAL" | "TEXT")
            })
    }

    fn non_key_columns(&self) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|c| !self.pk.contains(c))
            .collect()
    }

    /// `c2 = ? AND c0 = ?` for the key, with its parameters.
    fn key_condition(&self, key: &[Value]) -> (String, Vec<Value>) {
        let sql: Vec<String> = self.pk.iter().map(|c| format!("c{c} = ?")).collect();
        (sql.join(" AND "), key.to_vec())
    }
}

/// A table with its pool of primary keys (ops pick keys from it, so they hit the same rows).
#[derive(Debug, Clone)]
struct KeyedTable {
    table: Table,
    keys: Vec<Vec<Value>>,
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        table: Index,
        key: Index,
        values: Vec<Value>,
        replace: bool,
    },
    Update {
        table: Index,
        key: Index,
        values: Vec<Option<Value>>,
    },
    UpdateKey {
        table: Index,
        key: Index,
        to: Index,
    },
    UpdateAll {
        table: Index,
        column: Index,
        value: Value,
    },
    Delete {
        table: Index,
        key: Index,
    },
    DeleteAll {
        table: Index,
    },
}

#[derive(Debug, Clone)]
struct Case {
    tables: Vec<KeyedTable>,
    /// Rows every database starts with (not captured).
    initial: Vec<Op>,
    /// The captured writes, in two halves (captured separately for concat).
    first: Vec<Op>,
    second: Vec<Op>,
}

type Statement = (String, Vec<Value>);

impl Case {
    fn schema(&self) -> String {
        let tables: Vec<String> = self.tables.iter().map(|t| t.table.create()).collect();
        tables.join("; ")
    }

    fn names(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.table.name.clone()).collect()
    }

    /// The SQL of `ops`. Every statement succeeds whatever the rows are (`OR IGNORE`), so the
    /// same ops do the same thing on every copy of the same database.
    fn statements(&self, ops: &[Op]) -> Vec<Statement> {
        ops.iter().filter_map(|op| self.statement(op)).collect()
    }

    fn statement(&self, op: &Op) -> Option<Statement> {
        let pick = |table: &Index| &self.tables[table.index(self.tables.len())];
        match op {
            Op::Insert {
                table,
                key,
                values,
                replace,
            } => {
                let KeyedTable { table, keys } = pick(table);
                let key = &keys[key.index(keys.len())];
                let row: Vec<Value> = (0..table.columns.len())
                    .map(|c| match table.pk.iter().position(|&k| k == c) {
                        Some(position) => key[position].clone(),
                        None => values[c].clone(),
                    })
                    .collect();
                let marks = vec!["?"; row.len()].join(", ");
                let verb = if *replace { "REPLACE" } else { "IGNORE" };
                Some((
                    format!("INSERT OR {verb} INTO {} VALUES ({marks})", table.name),
                    row,
                ))
            }
            Op::Update { table, key, values } => {
                let KeyedTable { table, keys } = pick(table);
                let set: Vec<(usize, Value)> = table
                    .non_key_columns()
                    .into_iter()
                    .filter_map(|c| values[c].clone().map(|v| (c, v)))
                    .collect();
                if set.is_empty() {
                    return None;
                }
                let (condition, key) = table.key_condition(&keys[key.index(keys.len())]);
                let assignments: Vec<String> =
                    set.iter().map(|(c, _)| format!("c{c} = ?")).collect();
                let mut params: Vec<Value> = set.into_iter().map(|(_, v)| v).collect();
                params.extend(key);
                Some((
                    format!(
                        "UPDATE {} SET {} WHERE {condition}",
                        table.name,
                        assignments.join(", ")
                    ),
                    params,
                ))
            }
            Op::UpdateKey { table, key, to } => {
                let KeyedTable { table, keys } = pick(table);
                let (condition, key) = table.key_condition(&keys[key.index(keys.len())]);
                let to = &keys[to.index(keys.len())];
                let assignments: Vec<String> =
                    table.pk.iter().map(|c| format!("c{c} = ?")).collect();
                let mut params = to.clone();
                params.extend(key);
                Some((
                    format!(
                        "UPDATE OR IGNORE {} SET {} WHERE {condition}",
                        table.name,
                        assignments.join(", ")
                    ),
                    params,
                ))
            }
            Op::UpdateAll {
                table,
                column,
                value,
            } => {
                let KeyedTable { table, .. } = pick(table);
                let columns = table.non_key_columns();
                if columns.is_empty() {
                    return None;
                }
                let column = columns[column.index(columns.len())];
                Some((
                    format!("UPDATE {} SET c{column} = ?", table.name),
                    vec![value.clone()],
                ))
            }
            Op::Delete { table, key } => {
                let KeyedTable { table, keys } = pick(table);
                let (condition, key) = table.key_condition(&keys[key.index(keys.len())]);
                Some((format!("DELETE FROM {} WHERE {condition}", table.name), key))
            }
            Op::DeleteAll { table } => {
                let KeyedTable { table, .. } = pick(table);
                Some((format!("DELETE FROM {}", table.name), Vec::new()))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// strategies

fn real() -> impl Strategy<Value = f64> {
    prop_oneof![
        // SQLite stores NaN as NULL, so a NaN never round-trips as a real.
        any::<f64>().prop_filter("NaN is NULL in SQLite", |x| !x.is_nan()),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.5,
            -2.25,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
        ]),
    ]
}

/// Any value but NULL.
fn non_null() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        prop::sample::select(vec![i64::MIN, i64::MAX, 0, -1, 1]).prop_map(Value::Integer),
        real().prop_map(Value::Real),
        Just(Value::Text(String::new())),
        "(?s).{0,8}".prop_map(Value::Text),
        "[a-c]{1,2}".prop_map(Value::Text),
        Just(Value::Blob(Vec::new())),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Blob),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![1 => Just(Value::Null), 6 => non_null()]
}

/// What a key column may hold: never NULL (rowid tables allow a NULL key, and the session
/// extension does not record such rows).
///
/// SQLite's session extension identifies a row by the storage class and bits of its key values,
/// SQLite itself by SQL equality. A key that changes representation but not value within one
/// capture (integer 0 and real 0.0, or 0.0 and -0.0, in a column without affinity, via INSERT OR
/// REPLACE or an UPDATE of the key) is recorded as two rows, and the changeset then inserts the
/// row twice (SQLite 3.51.3; found by these properties, see issue 9). So keys here are never
/// integral reals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// The rowid alias: integers only.
    RowidAlias,
    /// A REAL-affinity key column: no value that SQLite stores as an integer (integers, integral
    /// reals, numeric text). SQLite 3.51.3's `sqlite3_preupdate_new` reports such a value of an
    /// INSERT as an INTEGER while `sqlite3_preupdate_old` (UPDATE, DELETE) reports the same
    /// row's key as a REAL, so an insert and a later update or delete of that row in one capture
    /// are recorded as changes to two different rows, and the changeset does not apply.
    Real,
    /// Any other column: anything but NULL and integral reals.
    Any,
}

/// Reals with a fractional part, and the infinities.
fn non_integral_real() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-3_i32..3).prop_map(|i| f64::from(i) + 0.5),
        any::<f64>().prop_filter("integral or NaN", |x| x.fract() != 0.0 && !x.is_nan()),
        prop::sample::select(vec![
            1e-300,
            -2.75,
            5e-324,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]),
    ]
}

fn key_value(kind: KeyKind) -> BoxedStrategy<Value> {
    match kind {
        KeyKind::RowidAlias => prop_oneof![
            (-3_i64..3).prop_map(Value::Integer),
            prop::sample::select(vec![i64::MIN, i64::MAX]).prop_map(Value::Integer),
        ]
        .boxed(),
        KeyKind::Real => prop_oneof![
            non_integral_real().prop_map(Value::Real),
            "[a-d]{0,3}".prop_map(Value::Text),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(Value::Blob),
        ]
        .boxed(),
        KeyKind::Any => prop_oneof![
            // Small values collide often, so ops hit rows that exist.
            (-2_i64..2).prop_map(Value::Integer),
            any::<i64>().prop_map(Value::Integer),
            prop::sample::select(vec![i64::MIN, i64::MAX]).prop_map(Value::Integer),
            non_integral_real().prop_map(Value::Real),
            Just(Value::Text(String::new())),
            "(?s).{0,8}".prop_map(Value::Text),
            "[a-c]{1,2}".prop_map(Value::Text),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Blob),
        ]
        .boxed(),
    }
}

fn table(index: usize) -> impl Strategy<Value = KeyedTable> {
    (
        prop::collection::vec(prop::sample::select(DECLARED), 1..=MAX_COLUMNS),
        any::<bool>(),
    )
        .prop_flat_map(move |(columns, without_rowid)| {
            let n = columns.len();
            (
                Just(columns),
                Just(without_rowid),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                1..=n.min(3),
            )
        })
        .prop_map(move |(columns, without_rowid, order, key_len)| Table {
            name: format!("t{index}"),
            columns,
            pk: order[..key_len].to_vec(),
            without_rowid,
        })
        // An upstream bug, not liteorm's: see `Table::preupdate_old_misreads_integers` and the
        // test `without_rowid_integers_read_back_per_the_linked_sqlite` below, which pins it.
        .prop_filter(
            "SQLite < 3.50.4 misreads old values of this table",
            |table| {
                linked_sqlite_version() >= PREUPDATE_OLD_FIXED
                    || !table.preupdate_old_misreads_integers()
            },
        )
        .prop_flat_map(|table| {
            let key: Vec<BoxedStrategy<Value>> = table
                .pk
                .iter()
                .map(|&c| {
                    key_value(if table.rowid_alias() {
                        KeyKind::RowidAlias
                    } else if table.columns[c] == "REAL" {
                        KeyKind::Real
                    } else {
                        KeyKind::Any
                    })
                })
                .collect();
            (Just(table), prop::collection::vec(key, 1..6))
        })
        .prop_map(|(table, keys)| KeyedTable { table, keys })
}

fn op() -> impl Strategy<Value = Op> {
    let values = prop::collection::vec(value(), MAX_COLUMNS);
    let changes = prop::collection::vec(prop::option::of(value()), MAX_COLUMNS);
    prop_oneof![
        6 => (any::<Index>(), any::<Index>(), values, any::<bool>()).prop_map(
            |(table, key, values, replace)| Op::Insert { table, key, values, replace }
        ),
        6 => (any::<Index>(), any::<Index>(), changes)
            .prop_map(|(table, key, values)| Op::Update { table, key, values }),
        2 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(table, key, to)| Op::UpdateKey { table, key, to }),
        1 => (any::<Index>(), any::<Index>(), value())
            .prop_map(|(table, column, value)| Op::UpdateAll { table, column, value }),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(table, key)| Op::Delete { table, key }),
        1 => any::<Index>().prop_map(|table| Op::DeleteAll { table }),
    ]
}

fn insert() -> impl Strategy<Value = Op> {
    (
        any::<Index>(),
        any::<Index>(),
        prop::collection::vec(value(), MAX_COLUMNS),
    )
        .prop_map(|(table, key, values)| Op::Insert {
            table,
            key,
            values,
            replace: false,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (1..=3_usize)
        .prop_flat_map(|n| (0..n).map(table).collect::<Vec<_>>())
        .prop_flat_map(|tables| {
            (
                Just(tables),
                prop::collection::vec(insert(), 0..8),
                prop::collection::vec(op(), 0..12),
                prop::collection::vec(op(), 0..12),
            )
        })
        .prop_map(|(tables, initial, first, second)| Case {
            tables,
            initial,
            first,
            second,
        })
}

// ---------------------------------------------------------------------------------------------
// databases

/// A change SQLite could write to a changeset: a table of 1 to 4 columns with at least one key
/// column, and values that follow the format's rules for the op (an update changes at least one
/// column outside the key, which it needs one of).
fn random_change() -> impl Strategy<Value = Change> {
    (1usize..=4)
        .prop_flat_map(|n| {
            (
                prop::sample::select(vec!["t", "u", "a b", "\u{e9}t\u{e9}"]),
                prop::collection::vec(any::<bool>(), n)
                    .prop_filter("a key column", |keys| keys.contains(&true)),
                prop::sample::select(vec![ChangeOp::Insert, ChangeOp::Update, ChangeOp::Delete]),
                any::<bool>(),
                prop::collection::vec(non_null(), n),
                prop::collection::vec((value(), value(), any::<bool>()), n),
            )
        })
        .prop_map(|(table, keys, op, indirect, key_values, cells)| {
            let mut position = 0;
            let pk: Vec<u8> = keys
                .iter()
                .map(|&key| {
                    position += u8::from(key);
                    if key { position } else { 0 }
                })
                .collect();
            let mut changed: Vec<bool> = cells.iter().map(|c| c.2).collect();
            let op = match keys.iter().position(|&key| !key) {
                None if op == ChangeOp::Update => ChangeOp::Insert,
                Some(first) if !changed.iter().zip(&keys).any(|(&c, &k)| c && !k) => {
                    changed[first] = true;
                    op
                }
                _ => op,
            };
            let row = |pick: fn(&(Value, Value, bool)) -> &Value| -> Vec<Option<Value>> {
                keys.iter()
                    .zip(&key_values)
                    .zip(&cells)
                    .map(|((&key, k), cell)| Some(if key { k.clone() } else { pick(cell).clone() }))
                    .collect()
            };
            let (old, new) = match op {
                ChangeOp::Insert => (Vec::new(), row(|c| &c.1)),
                ChangeOp::Delete => (row(|c| &c.0), Vec::new()),
                ChangeOp::Update => {
                    let old = row(|c| &c.0)
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| v.filter(|_| keys[i] || changed[i]))
                        .collect();
                    let new = row(|c| &c.1)
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| v.filter(|_| !keys[i] && changed[i]))
                        .collect();
                    (old, new)
                }
            };
            Change {
                table: table.into(),
                op,
                indirect,
                pk,
                old,
                new,
            }
        })
}

/// `change` as a patchset records it: a delete keeps only its key, an update only the key of its
/// old values.
fn as_in_a_patchset(mut change: Change) -> Change {
    if change.op != ChangeOp::Insert {
        for (old, &key) in change.old.iter_mut().zip(&change.pk) {
            if key == 0 {
                *old = None;
            }
        }
    }
    change
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A new in-memory database with the case's tables and initial rows.
async fn fresh(case: &Case) -> SqliteSession {
    let db = SqliteSession::open_in_memory().await.unwrap();
    db.execute_batch(&case.schema()).await.unwrap();
    run(&db, &case.statements(&case.initial)).await;
    db
}

async fn run(db: &dyn Session, statements: &[Statement]) {
    for (sql, params) in statements {
        db.execute(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql} {params:?}: {e}"));
    }
}

fn writes(
    statements: Vec<Statement>,
) -> impl FnOnce(
    SqliteSession,
) -> futures::future::BoxFuture<'static, Result<(), liteorm_changeset::Error>> {
    move |s| {
        Box::pin(async move {
            for (sql, params) in &statements {
                s.execute(sql, params).await?;
            }
            Ok(())
        })
    }
}

async fn capture_changeset(db: &SqliteSession, case: &Case, ops: &[Op]) -> Changeset {
    Capture::new(db)
        .tables(case.names())
        .changeset(writes(case.statements(ops)))
        .await
        .unwrap()
}

async fn capture_patchset(db: &SqliteSession, case: &Case, ops: &[Op]) -> Patchset {
    Capture::new(db)
        .tables(case.names())
        .patchset(writes(case.statements(ops)))
        .await
        .unwrap()
}

/// Every row of every table, ordered by all columns, so that equal databases compare equal.
async fn snapshot(db: &dyn Session, case: &Case) -> Vec<Vec<Vec<Value>>> {
    let mut tables = Vec::new();
    for KeyedTable { table, .. } in &case.tables {
        let order: Vec<String> = (1..=table.columns.len()).map(|i| i.to_string()).collect();
        let sql = format!("SELECT * FROM {} ORDER BY {}", table.name, order.join(", "));
        let rows = db.query(&sql, &[]).await.unwrap();
        tables.push(rows.into_iter().map(|r| r.into_values()).collect());
    }
    tables
}

/// The blob a [`Builder`](liteorm_changeset::Builder) of `$kind` makes of `$changes`, pushed in
/// order.
macro_rules! rebuilt {
    ($kind:ty, $changes:expr) => {{
        let mut builder = <$kind>::builder();
        for change in $changes {
            builder.push(change).unwrap();
        }
        builder.finish().unwrap()
    }};
}

/// A clean apply: every change went in, no conflict.
fn assert_clean(report: &ApplyReport) {
    assert!(report.conflicts.is_empty(), "{report:?}");
    assert!(report.skipped_tables.is_empty(), "{report:?}");
    assert_eq!(report.applied, report.changes, "{report:?}");
}

/// [`CASES`], or `PROPTEST_CASES` from the environment for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// properties

proptest! {
    #![proptest_config(config())]

    #[test]
    fn capture_then_apply_on_a_copy_equals_the_source(case in case()) {
        runtime().block_on(async {
            let source = fresh(&case).await;
            let ops = [case.first.clone(), case.second.clone()].concat();
            let cs = capture_changeset(&source, &case, &ops).await;
            assert_eq!(Changeset::from_bytes(cs.as_bytes()).unwrap(), cs, "SQLite's bytes validate");
            let copy = fresh(&case).await;
            let report = apply(&copy, &cs).await.unwrap();
            assert_clean(&report);
            assert_eq!(report.changes, cs.changes().unwrap().len());
            assert_eq!(snapshot(&copy, &case).await, snapshot(&source, &case).await);
        });
    }

    #[test]
    fn invert_twice_is_the_identity(case in case()) {
        runtime().block_on(async {
            let source = fresh(&case).await;
            let ops = [case.first.clone(), case.second.clone()].concat();
            let cs = capture_changeset(&source, &case, &ops).await;
            let inverse = cs.invert().unwrap();
            assert_eq!(inverse.changes().unwrap().len(), cs.changes().unwrap().len());
            let inverted: Vec<_> = cs.iter_inverted().collect::<Result<_, _>>().unwrap();
            assert_eq!(inverted, inverse.changes().unwrap(), "inverted iteration reads the inverse");
            assert_eq!(inverse.invert().unwrap().as_bytes(), cs.as_bytes());
        });
    }

    #[test]
    fn applying_the_inverse_restores_the_original(case in case()) {
        runtime().block_on(async {
            let source = fresh(&case).await;
            let before = snapshot(&source, &case).await;
            let ops = [case.first.clone(), case.second.clone()].concat();
            let cs = capture_changeset(&source, &case, &ops).await;
            let after = snapshot(&source, &case).await;
            let inverse = cs.invert().unwrap();

            // On the database it was captured on...
            assert_clean(&apply(&source, &inverse).await.unwrap());
            assert_eq!(snapshot(&source, &case).await, before);

            // ...and on a copy that the changeset was applied to.
            let copy = fresh(&case).await;
            assert_clean(&apply(&copy, &cs).await.unwrap());
            assert_eq!(snapshot(&copy, &case).await, after);
            assert_clean(&apply(&copy, &inverse).await.unwrap());
            assert_eq!(snapshot(&copy, &case).await, before);
        });
    }

    #[test]
    fn concat_applied_equals_both_applied_in_order(case in case()) {
        runtime().block_on(async {
            let source = fresh(&case).await;
            let a = capture_changeset(&source, &case, &case.first).await;
            let b = capture_changeset(&source, &case, &case.second).await;
            let expected = snapshot(&source, &case).await;

            let in_order = fresh(&case).await;
            assert_clean(&apply(&in_order, &a).await.unwrap());
            assert_clean(&apply(&in_order, &b).await.unwrap());
            assert_eq!(snapshot(&in_order, &case).await, expected);

            let both = a.concat(&b).unwrap();
            assert!(both.changes().unwrap().len() <= a.changes().unwrap().len() + b.changes().unwrap().len());
            let at_once = fresh(&case).await;
            assert_clean(&apply(&at_once, &both).await.unwrap());
            assert_eq!(snapshot(&at_once, &case).await, expected);

            // The same for patchsets, except with a table whose every column is in the key:
            // there SQLite (3.51.3) concatenates a delete and a re-insert of one row into an
            // UPDATE that sets nothing, which its own apply rejects as corrupt (found by this
            // property, see issue 9).
            if case.tables.iter().any(|t| t.table.non_key_columns().is_empty()) {
                return;
            }
            let patched = fresh(&case).await;
            let pa = capture_patchset(&patched, &case, &case.first).await;
            let pb = capture_patchset(&patched, &case, &case.second).await;
            let target = fresh(&case).await;
            assert_clean(&apply(&target, &pa.concat(&pb).unwrap()).await.unwrap());
            assert_eq!(snapshot(&target, &case).await, expected);
        });
    }

    #[test]
    fn what_sqlite_writes_rebuilds_to_the_same_bytes(case in case()) {
        runtime().block_on(async {
            let ops = [case.first.clone(), case.second.clone()].concat();
            let source = fresh(&case).await;
            let cs = capture_changeset(&source, &case, &ops).await;
            let inverse = cs.invert().unwrap();
            let patched = fresh(&case).await;
            let ps = capture_patchset(&patched, &case, &ops).await;
            for cs in [&cs, &inverse] {
                assert_eq!(rebuilt!(Changeset, &cs.changes().unwrap()).as_bytes(), cs.as_bytes());
                assert_eq!(Changeset::from_json(&cs.to_json().unwrap()).unwrap(), *cs);
            }
            assert_eq!(rebuilt!(Patchset, &ps.changes().unwrap()).as_bytes(), ps.as_bytes());
            assert_eq!(Patchset::from_json(&ps.to_json().unwrap()).unwrap(), ps);
        });
    }

    #[test]
    fn built_changes_read_back_as_they_were_given(changes in prop::collection::vec(random_change(), 1..8)) {
        let built: Changeset = rebuilt!(Changeset, &changes);
        prop_assert_eq!(built.changes().unwrap(), changes.clone());
        prop_assert_eq!(Changeset::from_json(&built.to_json().unwrap()).unwrap(), built);
        let patched: Patchset = rebuilt!(Patchset, &changes);
        let expected: Vec<Change> = changes.into_iter().map(as_in_a_patchset).collect();
        prop_assert_eq!(patched.changes().unwrap(), expected);
    }

    #[test]
    fn a_change_filter_applies_exactly_the_changes_it_keeps(case in case(), salt in any::<u64>()) {
        runtime().block_on(async {
            let source = fresh(&case).await;
            let ops = [case.first.clone(), case.second.clone()].concat();
            let cs = capture_changeset(&source, &case, &ops).await;
            // Keeps about half of the changes, by their table, op and key.
            let keep = move |c: &Change| {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                (salt, &*c.table, c.op, format!("{:?}", c.primary_key())).hash(&mut hasher);
                hasher.finish().is_multiple_of(2)
            };
            let kept: Vec<Change> = cs.changes().unwrap().into_iter().filter(|c| keep(c)).collect();
            let by_builder = fresh(&case).await;
            assert_clean(&apply(&by_builder, &rebuilt!(Changeset, &kept)).await.unwrap());
            let filtered = fresh(&case).await;
            let report = apply(&filtered, &cs).filter_change(keep).await.unwrap();
            assert!(report.conflicts.is_empty() && report.skipped_tables.is_empty(), "{report:?}");
            assert_eq!(report.applied, kept.len(), "{report:?}");
            assert_eq!(report.filtered_changes, report.changes - kept.len());
            assert_eq!(snapshot(&filtered, &case).await, snapshot(&by_builder, &case).await);
        });
    }

    #[test]
    fn patchset_applies_like_the_changeset_on_a_clean_target(case in case()) {
        runtime().block_on(async {
            let ops = [case.first.clone(), case.second.clone()].concat();
            let source = fresh(&case).await;
            let cs = capture_changeset(&source, &case, &ops).await;
            let patched = fresh(&case).await;
            let ps = capture_patchset(&patched, &case, &ops).await;
            assert_eq!(Patchset::from_bytes(ps.as_bytes()).unwrap(), ps, "SQLite's bytes validate");
            assert_eq!(ps.changes().unwrap().len(), cs.changes().unwrap().len());
            assert!(ps.len() <= cs.len(), "a patchset is never larger");

            let with_changeset = fresh(&case).await;
            assert_clean(&apply(&with_changeset, &cs).await.unwrap());
            let with_patchset = fresh(&case).await;
            assert_clean(&apply(&with_patchset, &ps).await.unwrap());
            let expected = snapshot(&source, &case).await;
            assert_eq!(snapshot(&with_patchset, &case).await, expected);
            assert_eq!(snapshot(&with_changeset, &case).await, expected);
        });
    }
}

/// Pins the upstream bug the generator steers around on old SQLite (see
/// [`Table::preupdate_old_misreads_integers`]): in `t(c0 NUMERIC, c1 REAL, c2, c3 BLOB,
/// PRIMARY KEY(c3, c0)) WITHOUT ROWID` the key column `c0` is stored at record position 1, where
/// the table has the REAL column `c1`. An insert and an update of one row in one capture then
/// come out as two inserts on SQLite < 3.50.4 (the update's old key read as a REAL names another
/// row), and as one insert of the final row on fixed releases.
#[tokio::test]
async fn without_rowid_integers_read_back_per_the_linked_sqlite() {
    const KEY: i64 = 9_169_731_113_267_692_934;
    let schema = "CREATE TABLE t(c0 NUMERIC, c1 REAL, c2, c3 BLOB, PRIMARY KEY(c3, c0)) \
        WITHOUT ROWID";
    let source = SqliteSession::open_in_memory().await.unwrap();
    source.execute_batch(schema).await.unwrap();
    let cs = liteorm_changeset::capture(&source, &["t"], |s| async move {
        s.execute("INSERT INTO t VALUES (?, NULL, NULL, '')", &[KEY.into()])
            .await?;
        s.execute(
            "UPDATE t SET c2 = ? WHERE c3 = '' AND c0 = ?",
            &[f64::NEG_INFINITY.into(), KEY.into()],
        )
        .await?;
        Ok::<_, liteorm_changeset::Error>(())
    })
    .await
    .unwrap();

    let mut changes: Vec<(ChangeOp, Vec<Option<Value>>)> = cs
        .changes()
        .unwrap()
        .into_iter()
        .map(|change| match change.op {
            ChangeOp::Delete => (change.op, change.old),
            _ => (change.op, change.new),
        })
        .collect();
    changes.sort_by_key(|(op, _)| *op != ChangeOp::Insert);
    let row = |c0: Value, c2: Value| {
        vec![
            Some(c0),
            Some(Value::Null),
            Some(c2),
            Some(Value::Text(String::new())),
        ]
    };
    let inserted = (
        ChangeOp::Insert,
        row(Value::Integer(KEY), Value::Real(f64::NEG_INFINITY)),
    );
    let fixed = source.info().version_number >= PREUPDATE_OLD_FIXED;
    if fixed {
        assert_eq!(changes, [inserted]);
        let copy = SqliteSession::open_in_memory().await.unwrap();
        copy.execute_batch(schema).await.unwrap();
        assert_clean(&apply(&copy, &cs).await.unwrap());
        let dump = "SELECT c0, c1, c2, c3 FROM t";
        let rows = |db: SqliteSession| async move {
            let rows = db.query(dump, &[]).await.unwrap();
            rows.into_iter()
                .map(|r| r.into_values())
                .collect::<Vec<_>>()
        };
        assert_eq!(rows(copy).await, rows(source).await);
    } else {
        // The insert, as updated; and the update, whose old key was read as a REAL (the
        // nearest double to the key), recorded against a row that does not exist when the
        // changeset is written, so as a delete of that row.
        let deleted = (ChangeOp::Delete, row(Value::Real(KEY as f64), Value::Null));
        assert_eq!(changes, [inserted, deleted]);
    }
}
