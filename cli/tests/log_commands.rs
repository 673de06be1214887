//! `log list`, `log show`, `log revert` and `log rollback-to` run as a user would: the binary on
//! a database file whose change log the replication crate wrote, checked against the file's
//! tables afterwards.

// Test helpers panic on unexpected errors on purpose.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;
use liteorm_core::{Session, Value};
use liteorm_replication::{ChangeLog, Error, Meta};
use liteorm_sqlite::SqliteSession;

const SCHEMA: &str = "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER); \
    CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL); \
    INSERT INTO counter VALUES (1, 0)";

/// The units of work of [`primary`]: actor, reason, SQL.
const WORK: [(&str, &str, &str); 4] = [
    ("ada", "stock pens", "INSERT INTO item VALUES (1, 'pen', 3)"),
    (
        "bob",
        "stock ink",
        "INSERT INTO item VALUES (2, 'ink', 5); UPDATE counter SET n = n + 1 WHERE id = 1",
    ),
    ("ada", "sold a pen", "UPDATE item SET qty = 2 WHERE id = 1"),
    ("carol", "tidy up", "UPDATE counter SET n = 10 WHERE id = 1"),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A database file with [`SCHEMA`] and a change log of the first `entries` units of [`WORK`];
/// returns the data after each entry (index 0: before the first).
fn primary(dir: &Path, entries: usize) -> (PathBuf, Vec<Vec<Vec<Value>>>) {
    let path = dir.join("app.db");
    let states = runtime().block_on(async {
        let db = SqliteSession::open(path.to_str().unwrap()).await.unwrap();
        db.execute_batch(SCHEMA).await.unwrap();
        let log = ChangeLog::open(&db).await.unwrap();
        let mut states = vec![content_of(&db).await];
        for (actor, reason, sql) in &WORK[..entries] {
            log.record(Meta::actor(*actor).reason(*reason), move |s| async move {
                s.execute_batch(sql).await?;
                Ok::<_, Error>(())
            })
            .await
            .unwrap()
            .unwrap();
            states.push(content_of(&db).await);
        }
        db.close().await;
        states
    });
    (path, states)
}

async fn content_of(db: &SqliteSession) -> Vec<Vec<Value>> {
    let mut rows = Vec::new();
    for table in ["item", "counter"] {
        rows.extend(
            db.query(
                &format!("SELECT '{table}', * FROM {table} ORDER BY id"),
                &[],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.values().to_vec()),
        );
    }
    rows
}

/// Every data row of the file, table by table, sorted by key.
fn content(path: &Path) -> Vec<Vec<Value>> {
    runtime().block_on(async {
        let db = SqliteSession::open(path.to_str().unwrap()).await.unwrap();
        let rows = content_of(&db).await;
        db.close().await;
        rows
    })
}

/// Runs SQL on the file with the `sqlite3` shell (for tampering and for what the shell reads).
fn shell(path: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(path).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3: {}", text(&out.stderr));
    text(&out.stdout)
}

fn run(args: &[&str]) -> Output {
    Command::cargo_bin("liteorm-changeset")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "stderr: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Asserts exit `code` with one line on stderr containing `needle`.
fn fails(out: &Output, code: i32, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert!(
        err.starts_with("liteorm-changeset: ") && err.contains(needle) && !err.contains("panicked"),
        "expected {needle:?} in: {err}"
    );
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn seqs(entries: &[serde_json::Value]) -> Vec<u64> {
    entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

fn list(db: &Path, filter: &[&str]) -> Vec<u64> {
    let mut args = vec!["log", "list", "--db", s(db), "--json"];
    args.extend_from_slice(filter);
    seqs(&json_lines(&ok(&run(&args))))
}

/// Replaces every `YYYY-MM-DDTHH:MM:SS.mmmZ` with a placeholder of the same width, so that
/// columns stay aligned.
fn redact_times(text: &str) -> String {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let fits = bytes.get(i..i + SHAPE.len()).is_some_and(|window| {
            window.iter().zip(SHAPE).all(|(b, s)| {
                if *s == b'd' {
                    b.is_ascii_digit()
                } else {
                    b == s
                }
            })
        });
        if fits {
            out.push_str("<time>                  ");
            i += SHAPE.len();
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `log list` reads the log a page (256 entries) at a time: every filter and limit holds across
/// pages.
#[test]
fn log_list_pages_through_a_long_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.db");
    runtime().block_on(async {
        let db = SqliteSession::open(path.to_str().unwrap()).await.unwrap();
        db.execute_batch(SCHEMA).await.unwrap();
        let log = ChangeLog::open(&db).await.unwrap();
        for i in 0..600_i64 {
            let actor = if i % 2 == 0 { "ada" } else { "bob" };
            log.record(Meta::actor(actor), move |s| async move {
                s.execute("INSERT INTO item VALUES (?, 'pen', 1)", &[(i + 10).into()])
                    .await?;
                Ok::<_, Error>(())
            })
            .await
            .unwrap()
            .unwrap();
        }
        db.close().await;
    });
    let all: Vec<u64> = (1..=600).collect();
    assert_eq!(list(&path, &[]), all);
    let odd: Vec<u64> = (1..=600).step_by(2).collect();
    assert_eq!(list(&path, &["--actor", "ada"]), odd);
    assert_eq!(
        list(&path, &["--actor", "ada", "--limit", "200"]),
        odd[..200]
    );
    assert_eq!(list(&path, &["--limit", "300"]), all[..300]);
    assert_eq!(list(&path, &["--limit", "256"]), all[..256]);
    assert_eq!(
        list(&path, &["--from-seq", "250", "--to-seq", "520"]),
        all[249..520]
    );
    assert_eq!(
        list(&path, &["--from-seq", "590", "--limit", "50"]),
        all[589..]
    );
    let table = ok(&run(&["log", "list", "--db", s(&path)]));
    assert!(
        table.ends_with("600 entries\n"),
        "{}",
        &table[table.len() - 40..]
    );
    assert_eq!(
        table.lines().count(),
        602,
        "a header, 600 rows and the count"
    );
}

#[test]
fn log_list_prints_a_table_and_json_lines_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = primary(dir.path(), 4);

    let table = ok(&run(&["log", "list", "--db", s(&db)]));
    insta::assert_snapshot!("log_list_table", redact_times(&table));

    let entries = json_lines(&ok(&run(&["log", "list", "--db", s(&db), "--json"])));
    assert_eq!(seqs(&entries), [1, 2, 3, 4]);
    let second = &entries[1];
    assert_eq!(second["actor"], "bob");
    assert_eq!(second["reason"], "stock ink");
    assert_eq!(second["kind"], "change");
    assert_eq!(second["ref_seq"], serde_json::Value::Null);
    assert_eq!(second["tables"], serde_json::json!(["item", "counter"]));
    assert_eq!(
        second["counts"],
        serde_json::json!({"insert": 1, "update": 1, "delete": 0})
    );
    assert_eq!(second["hash"].as_str().unwrap().len(), 64);
    let times: Vec<i64> = entries
        .iter()
        .map(|e| e["committed_at_ms"].as_i64().unwrap())
        .collect();
    assert!(second["committed_at"].as_str().unwrap().ends_with('Z'));

    assert_eq!(list(&db, &["--table", "item"]), [1, 2, 3]);
    assert_eq!(list(&db, &["--table", "counter"]), [2, 4]);
    assert_eq!(list(&db, &["--actor", "ada"]), [1, 3]);
    assert_eq!(
        list(&db, &["--actor", "ada", "--table", "counter"]),
        [] as [u64; 0]
    );
    assert_eq!(list(&db, &["--from-seq", "2"]), [2, 3, 4]);
    assert_eq!(list(&db, &["--to-seq", "2"]), [1, 2]);
    assert_eq!(list(&db, &["--from-seq", "2", "--to-seq", "3"]), [2, 3]);
    assert_eq!(list(&db, &["--from-seq", "2", "--limit", "2"]), [2, 3]);
    assert_eq!(list(&db, &["--limit", "0"]), [] as [u64; 0]);

    // Time bounds, inclusive, as Unix milliseconds and as RFC 3339 with any offset.
    let third = times[2].to_string();
    let expect = |keep: &dyn Fn(i64) -> bool| -> Vec<u64> {
        entries
            .iter()
            .filter(|e| keep(e["committed_at_ms"].as_i64().unwrap()))
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(list(&db, &["--since", &third]), expect(&|t| t >= times[2]));
    assert_eq!(list(&db, &["--until", &third]), expect(&|t| t <= times[2]));
    assert_eq!(
        list(&db, &["--since", "2000-01-01T00:00:00Z"]),
        [1, 2, 3, 4]
    );
    assert_eq!(
        list(&db, &["--until", "2000-01-01T02:00:00.5+02:00"]),
        [] as [u64; 0]
    );
    let rfc3339 = second["committed_at"].as_str().unwrap();
    assert_eq!(
        list(&db, &["--since", rfc3339, "--until", rfc3339]),
        expect(&|t| t == times[1])
    );

    let out = run(&["log", "list", "--db", s(&db), "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("RFC 3339"));
}

#[test]
fn log_show_prints_metadata_and_changes_as_text_sql_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = primary(dir.path(), 3);

    let shown = ok(&run(&["log", "show", "2", "--db", s(&db)]));
    // The time and the hash (which covers the time) differ from run to run.
    let stable: String = shown
        .lines()
        .map(|line| match line.split_once(' ') {
            Some((name @ ("time" | "hash"), _)) => format!("{name:<8}<redacted>\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    insta::assert_snapshot!("log_show_text", stable);

    let sql = ok(&run(&["log", "show", "3", "--db", s(&db), "--sql"]));
    assert_eq!(
        sql,
        "UPDATE \"item\" SET \"qty\" = 2 WHERE \"id\" = 1 AND \"qty\" = 3;\n"
    );

    let json = json_lines(&ok(&run(&["log", "show", "2", "--db", s(&db), "--json"])));
    assert_eq!(json.len(), 1);
    let entry = &json[0];
    assert_eq!(entry["seq"], 2);
    assert_eq!(entry["actor"], "bob");
    assert_eq!(entry["kind"], "change");
    let changes = entry["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    let insert = changes.iter().find(|c| c["op"] == "INSERT").unwrap();
    assert_eq!(insert["table"], "item");
    assert_eq!(
        insert["new"],
        serde_json::json!([{"integer": 2}, {"text": "ink"}, {"integer": 5}])
    );

    // The changes are in the `inspect --json` format: `build` turns them back into the very
    // bytes the log stores.
    let changes_file = dir.path().join("changes.json");
    std::fs::write(&changes_file, entry["changes"].to_string()).unwrap();
    let rebuilt = dir.path().join("rebuilt.bin");
    ok(&run(&["build", s(&changes_file), "-o", s(&rebuilt)]));
    let stored = shell(&db, "SELECT hex(blob) FROM liteorm_changes WHERE seq = 2");
    let rebuilt_hex: String = std::fs::read(&rebuilt)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(stored.trim(), rebuilt_hex);
}

#[test]
fn revert_and_rollback_to_round_trip_the_table_contents() {
    let dir = tempfile::tempdir().unwrap();
    let (db, states) = primary(dir.path(), 4);

    // Entry 2 touched rows no later entry touched except the counter, which entry 4 set:
    // reverting 4 first, then 2, gives the state after 1 and 3 only.
    let out = ok(&run(&[
        "log",
        "revert",
        "4",
        "--db",
        s(&db),
        "--actor",
        "ops",
        "--reason",
        "undo tidy",
    ]));
    insta::assert_snapshot!("log_revert_text", out);
    assert_eq!(content(&db), states[3]);
    let out = ok(&run(&["log", "revert", "2", "--db", s(&db), "--json"]));
    let report = &json_lines(&out)[0];
    assert_eq!(report["reverted"], 2);
    assert_eq!(report["logged_as"], 6);
    assert_eq!(report["reports"][0]["seq"], 2);
    assert_eq!(report["reports"][0]["applied"], 2);
    let mut expected = states[3].clone();
    expected.retain(|row| row[1] != Value::Integer(2) || row[0] != Value::from("item"));
    for row in &mut expected {
        if row[0] == Value::from("counter") {
            row[2] = Value::Integer(0);
        }
    }
    assert_eq!(content(&db), expected);

    // Rolling back to 1 undoes 6, 5, 4, 3 and 2: the state right after entry 1.
    let out = ok(&run(&[
        "log",
        "rollback-to",
        "1",
        "--db",
        s(&db),
        "--actor",
        "ops",
    ]));
    assert!(
        out.starts_with("rolled back to seq 1: logged as seq 7\n"),
        "{out}"
    );
    assert_eq!(content(&db), states[1]);
    let out = ok(&run(&["log", "rollback-to", "0", "--db", s(&db), "--json"]));
    assert_eq!(json_lines(&out)[0]["rolled_back_to"], 0);
    assert_eq!(json_lines(&out)[0]["logged_as"], 8);
    assert_eq!(content(&db), states[0]);

    // Each undo is a new entry with its kind, target, actor and reason; the chain holds.
    let entries = json_lines(&ok(&run(&[
        "log",
        "list",
        "--db",
        s(&db),
        "--from-seq",
        "5",
        "--json",
    ])));
    let summary: Vec<(
        String,
        serde_json::Value,
        serde_json::Value,
        serde_json::Value,
    )> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["ref_seq"].clone(),
                e["actor"].clone(),
                e["reason"].clone(),
            )
        })
        .collect();
    let null = serde_json::Value::Null;
    assert_eq!(
        summary,
        [
            (
                "revert".to_owned(),
                4.into(),
                "ops".into(),
                "undo tidy".into()
            ),
            ("revert".to_owned(), 2.into(), null.clone(), null.clone()),
            ("rollback".to_owned(), 1.into(), "ops".into(), null.clone()),
            ("rollback".to_owned(), 0.into(), null.clone(), null),
        ]
    );
    ok(&run(&["log", "verify", "--db", s(&db)]));

    // Nothing after the newest entry: a rollback to it changes and logs nothing.
    let out = ok(&run(&["log", "rollback-to", "8", "--db", s(&db)]));
    assert_eq!(
        out,
        "rolled back to seq 8: nothing changed, no entry logged\n"
    );
}

#[test]
fn a_conflict_under_the_abort_policy_changes_nothing_and_exits_7() {
    let dir = tempfile::tempdir().unwrap();
    let (db, states) = primary(dir.path(), 3);
    let log_rows = || shell(&db, "SELECT count(*) FROM liteorm_changes");

    // Entry 3 changed the row entry 1 inserted: undoing 1 finds qty 2, not 3.
    fails(
        &run(&["log", "revert", "1", "--db", s(&db)]),
        7,
        "Data conflict on table \"item\"",
    );
    assert_eq!(content(&db), states[3]);
    assert_eq!(log_rows(), "3\n");
    // A rollback is one unit: entry 3 undoes cleanly, then undoing entry 2 finds the row it
    // inserted changed since; the undo of 3 is rolled back too.
    shell(&db, "UPDATE item SET name = 'ink!' WHERE id = 2");
    let changed = content(&db);
    fails(
        &run(&["log", "rollback-to", "1", "--db", s(&db)]),
        7,
        "Data conflict on table \"item\"",
    );
    assert_eq!(content(&db), changed);
    assert_eq!(log_rows(), "3\n");

    // The per-kind options of `apply`: replace the conflicting row, and it is undone.
    let out = ok(&run(&[
        "log",
        "rollback-to",
        "1",
        "--db",
        s(&db),
        "--on-data",
        "replace",
    ]));
    assert!(out.contains("logged as seq 4"), "{out}");
    assert!(out.contains("conflict Data on item: Replace"), "{out}");
    assert_eq!(content(&db), states[1]);
    // --on-conflict omit: the conflicting delete is skipped, the row stays, nothing is logged.
    shell(&db, "UPDATE item SET qty = 7 WHERE id = 1");
    let changed = content(&db);
    let out = ok(&run(&[
        "log",
        "revert",
        "1",
        "--db",
        s(&db),
        "--on-conflict",
        "omit",
        "--json",
    ]));
    let report = &json_lines(&out)[0];
    assert_eq!(report["reports"][0]["conflicts"][0]["kind"], "Data");
    assert_eq!(report["reports"][0]["conflicts"][0]["action"], "Omit");
    assert_eq!(
        report["reports"][0]["conflicts"][0]["conflicting_row"],
        serde_json::json!([{"integer": 1}, {"text": "pen"}, {"integer": 7}])
    );
    assert_eq!(report["logged_as"], serde_json::Value::Null);
    assert_eq!(content(&db), changed);
    assert_eq!(log_rows(), "4\n");
}

#[test]
fn undo_on_a_tampered_log_exits_10_naming_the_seq_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (db, states) = primary(dir.path(), 3);
    shell(
        &db,
        "UPDATE liteorm_changes SET reason = 'nothing to see' WHERE seq = 2",
    );
    for args in [
        ["log", "revert", "3", "--db", s(&db)],
        ["log", "rollback-to", "0", "--db", s(&db)],
    ] {
        fails(&run(&args), 10, "chain broken at seq 2");
        assert_eq!(content(&db), states[3]);
    }
    // Reading does not verify: the edited entry shows as stored.
    assert_eq!(list(&db, &["--actor", "bob"]), [2]);
}

#[test]
fn bad_inputs_give_one_line_and_the_usual_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = primary(dir.path(), 2);
    for args in [
        vec!["log", "show", "9", "--db", s(&db)],
        vec!["log", "revert", "9", "--db", s(&db)],
        vec!["log", "rollback-to", "9", "--db", s(&db)],
    ] {
        fails(
            &run(&args),
            1,
            "no change log entry with seq 9 (the newest is seq 2)",
        );
    }
    fails(
        &run(&["log", "show", "0", "--db", s(&db)]),
        1,
        "no change log entry with seq 0",
    );

    // A database without a change log: refused, and not given one.
    let plain = dir.path().join("plain.db");
    shell(&plain, SCHEMA);
    for command in ["list", "show", "revert", "rollback-to", "verify", "prune"] {
        let mut args = vec!["log", command, "--db", s(&plain)];
        if command == "prune" {
            args.extend(["--up-to", "1"]);
        } else if !matches!(command, "list" | "verify") {
            args.push("1");
        }
        fails(&run(&args), 8, "no change log");
    }
    assert_eq!(
        shell(
            &plain,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'liteorm_changes'"
        ),
        "0\n"
    );

    let not_db = dir.path().join("notes.txt");
    std::fs::write(
        &not_db,
        "these are not the rows you are looking for\n".repeat(20),
    )
    .unwrap();
    fails(&run(&["log", "list", "--db", s(&not_db)]), 5, "notes.txt");
    let missing = dir.path().join("missing.db");
    fails(
        &run(&["log", "show", "1", "--db", s(&missing)]),
        5,
        "no such database file",
    );
    assert!(!missing.exists());
}

#[test]
fn stored_text_cannot_break_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = primary(dir.path(), 1);
    // The reason is not covered by any check here: `list` only reads.
    shell(
        &db,
        "UPDATE liteorm_changes SET reason = 'line one' || char(10) || '2  fake  row' WHERE seq = 1",
    );
    let table = ok(&run(&["log", "list", "--db", s(&db)]));
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains("line one\\n2  fake  row"), "{table}");
}

/// A migration (`log migrate`) is listed as a `schema` entry without changes, and `show` prints
/// the SQL replicas run: as text, with `--sql`, and in the JSON's `ddl`.
#[test]
fn a_schema_entry_is_listed_and_shown_with_its_sql() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = primary(dir.path(), 2);
    let ddl = "ALTER TABLE item ADD COLUMN note TEXT";
    ok(&run(&[
        "log",
        "migrate",
        "--db",
        s(&db),
        "--sql",
        ddl,
        "--actor",
        "ops",
    ]));

    let entries = json_lines(&ok(&run(&["log", "list", "--db", s(&db), "--json"])));
    assert_eq!(seqs(&entries), [1, 2, 3]);
    let schema = &entries[2];
    assert_eq!(schema["kind"], "schema");
    assert_eq!(schema["ddl"], ddl);
    assert_eq!(schema["tables"], serde_json::json!(["item"]));
    assert_eq!(
        schema["counts"],
        serde_json::json!({"insert": 0, "update": 0, "delete": 0})
    );
    assert!(entries[0]["ddl"].is_null(), "a change entry has no SQL");
    let table = ok(&run(&["log", "list", "--db", s(&db)]));
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with('3'))
        .unwrap();
    assert!(row.contains("schema") && row.contains("ops"), "{row}");

    let sql = ok(&run(&["log", "show", "3", "--db", s(&db), "--sql"]));
    assert_eq!(sql, format!("{ddl}\n"));
    let shown = ok(&run(&["log", "show", "3", "--db", s(&db)]));
    assert!(shown.contains("kind    schema\n"), "{shown}");
    assert!(shown.trim_end().ends_with(ddl), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&run(&["log", "show", "3", "--db", s(&db), "--json"]))).unwrap();
    assert_eq!(
        (&json["ddl"], &json["changes"]),
        (&serde_json::json!(ddl), &serde_json::json!([]))
    );
}
