//! Conflict handling, snapshotted: for each conflict kind and each action, what the handler saw
//! and what the target table holds afterwards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use liteorm_changeset::{ApplyReport, Conflict, ConflictAction, ConflictKind, apply};
use liteorm_core::{Session, Value};
use serde::Serialize;

use crate::support::{captured, dump, file_db};

const SCHEMA: &str = "CREATE TABLE parent(id INTEGER PRIMARY KEY); \
    CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE, parent INTEGER REFERENCES parent(id)); \
    INSERT INTO parent VALUES (1); \
    INSERT INTO t VALUES (1, 'one', NULL), (2, 'two', NULL)";

/// One scenario: the change recorded on the source, and how the target diverges beforehand.
struct Scenario {
    change: &'static str,
    diverge: &'static str,
}

fn scenario(kind: ConflictKind) -> Scenario {
    match kind {
        // The target changed the row the update expects.
        ConflictKind::Data => Scenario {
            change: "UPDATE t SET name = 'uno' WHERE id = 1",
            diverge: "UPDATE t SET name = 'eins' WHERE id = 1",
        },
        // The target deleted the row the update expects.
        ConflictKind::NotFound => Scenario {
            change: "UPDATE t SET name = 'uno' WHERE id = 1",
            diverge: "DELETE FROM t WHERE id = 1",
        },
        // The target already has a row with the inserted key.
        ConflictKind::Conflict => Scenario {
            change: "INSERT INTO t VALUES (3, 'three', NULL)",
            diverge: "INSERT INTO t VALUES (3, 'drei', NULL)",
        },
        // The target has another row with the inserted UNIQUE name.
        ConflictKind::Constraint => Scenario {
            change: "INSERT INTO t VALUES (3, 'three', NULL)",
            diverge: "INSERT INTO t VALUES (9, 'three', NULL)",
        },
        // The inserted row references a parent the target does not have (only `t` is captured).
        ConflictKind::ForeignKey => Scenario {
            change: "INSERT INTO parent VALUES (5); INSERT INTO t VALUES (3, 'three', 5)",
            diverge: "",
        },
        other => panic!("no scenario for a {other} conflict"),
    }
}

#[derive(Serialize)]
struct Seen {
    kind: String,
    table: Option<String>,
    op: Option<String>,
    old: Vec<String>,
    new: Vec<String>,
    conflicting_row: Option<Vec<String>>,
    foreign_key_violations: usize,
}

#[derive(Serialize)]
struct Outcome {
    handler_saw: Vec<Seen>,
    result: Result<Summary, String>,
    target_after: Vec<String>,
}

#[derive(Serialize)]
struct Summary {
    changes: usize,
    attempted: usize,
    applied: usize,
    omitted: usize,
    replaced: usize,
    conflicts: BTreeMap<String, Counts>,
}

#[derive(Serialize)]
struct Counts {
    seen: usize,
    omitted: usize,
    replaced: usize,
}

fn render(values: &[Option<Value>]) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            v.as_ref()
                .map_or("<not recorded>".to_owned(), Value::to_string)
        })
        .collect()
}

fn seen(c: &Conflict) -> Seen {
    Seen {
        kind: c.kind.to_string(),
        table: c.table().map(str::to_owned),
        op: c.change.as_ref().map(|ch| format!("{:?}", ch.op)),
        old: c
            .change
            .as_ref()
            .map(|ch| render(&ch.old))
            .unwrap_or_default(),
        new: c
            .change
            .as_ref()
            .map(|ch| render(&ch.new))
            .unwrap_or_default(),
        conflicting_row: c
            .conflicting_row
            .as_ref()
            .map(|r| r.iter().map(Value::to_string).collect()),
        foreign_key_violations: c.foreign_key_violations,
    }
}

fn summary(report: &ApplyReport) -> Summary {
    Summary {
        changes: report.changes,
        attempted: report.attempted,
        applied: report.applied,
        omitted: report.omitted,
        replaced: report.replaced,
        conflicts: report
            .conflicts
            .iter()
            .map(|(k, c)| {
                (
                    k.to_string(),
                    Counts {
                        seen: c.seen,
                        omitted: c.omitted,
                        replaced: c.replaced,
                    },
                )
            })
            .collect(),
    }
}

async fn run(kind: ConflictKind, action: ConflictAction) -> Outcome {
    run_with(kind, action, false).await
}

/// `run`, with the handler given to `on_conflict_ref` (`lazy`) or to `on_conflict`.
async fn run_with(kind: ConflictKind, action: ConflictAction, lazy: bool) -> Outcome {
    let Scenario { change, diverge } = scenario(kind);
    let (source, _d1) = file_db().await;
    source.execute_batch(SCHEMA).await.unwrap();
    let cs = captured(&source, &["t"], change).await;
    let (target, _d2) = file_db().await;
    target.execute_batch(SCHEMA).await.unwrap();
    if !diverge.is_empty() {
        target.execute_batch(diverge).await.unwrap();
    }
    let saw = Arc::new(Mutex::new(Vec::new()));
    let applying = apply(&target, &cs);
    let applying = if lazy {
        applying.on_conflict_ref({
            let saw = Arc::clone(&saw);
            move |c| {
                let owned = c.to_conflict().unwrap();
                // Every accessor of the lazy view agrees with the owned conflict.
                assert_eq!(c.kind, owned.kind);
                assert_eq!(c.table(), owned.table());
                assert_eq!(c.change().unwrap(), owned.change);
                assert_eq!(c.conflicting_row().unwrap(), owned.conflicting_row);
                assert_eq!(c.foreign_key_violations(), owned.foreign_key_violations);
                saw.lock().unwrap().push(seen(&owned));
                action
            }
        })
    } else {
        applying.on_conflict({
            let saw = Arc::clone(&saw);
            move |c| {
                saw.lock().unwrap().push(seen(c));
                action
            }
        })
    };
    let result = applying.await;
    let mut handler_saw = std::mem::take(&mut *saw.lock().unwrap());
    handler_saw.sort_by(|a, b| (&a.kind, &a.old, &a.new).cmp(&(&b.kind, &b.old, &b.new)));
    let target_after = dump(&target, "t")
        .await
        .into_iter()
        .map(|row| {
            row.iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    Outcome {
        handler_saw,
        result: result.as_ref().map(summary).map_err(ToString::to_string),
        target_after,
    }
}

macro_rules! conflict_snapshots {
    ($($name:ident: $kind:ident, $action:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let outcome = run(ConflictKind::$kind, ConflictAction::$action).await;
            insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false }, {
                insta::assert_yaml_snapshot!(stringify!($name), outcome);
            });
        }
    )*};
}

conflict_snapshots! {
    apply_data_conflict_omit: Data, Omit;
    apply_data_conflict_replace: Data, Replace;
    apply_data_conflict_abort: Data, Abort;
    apply_notfound_conflict_omit: NotFound, Omit;
    apply_notfound_conflict_replace_is_illegal: NotFound, Replace;
    apply_notfound_conflict_abort: NotFound, Abort;
    apply_conflict_conflict_omit: Conflict, Omit;
    apply_conflict_conflict_replace: Conflict, Replace;
    apply_conflict_conflict_abort: Conflict, Abort;
    apply_constraint_conflict_omit: Constraint, Omit;
    apply_constraint_conflict_replace_is_illegal: Constraint, Replace;
    apply_constraint_conflict_abort: Constraint, Abort;
    apply_foreign_key_conflict_omit: ForeignKey, Omit;
    apply_foreign_key_conflict_replace_is_illegal: ForeignKey, Replace;
    apply_foreign_key_conflict_abort: ForeignKey, Abort;
}

#[tokio::test]
async fn a_lazy_conflict_view_sees_and_yields_what_the_owned_conflict_does() {
    use ConflictAction::{Abort, Omit, Replace};
    use ConflictKind::{Conflict, Constraint, Data, ForeignKey, NotFound};
    for kind in [Data, NotFound, Conflict, Constraint, ForeignKey] {
        for action in [Omit, Replace, Abort] {
            let owned = serde_json::to_value(run_with(kind, action, false).await).unwrap();
            let lazy = serde_json::to_value(run_with(kind, action, true).await).unwrap();
            assert_eq!(lazy, owned, "{kind:?} {action:?}");
        }
    }
}
