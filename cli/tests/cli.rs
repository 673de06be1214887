//! The `liteorm-changeset` binary against real database files: every subcommand, every failure
//! class with its exit code, and a cross-check with the `sqlite3` shell's `.session`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use assert_cmd::cargo::CommandCargoExt;
use tempfile::TempDir;

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, n INTEGER); \
    INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2);";

fn bin() -> Command {
    Command::cargo_bin("liteorm-changeset").expect("the binary is built")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run liteorm-changeset")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `sql` with the sqlite3 shell on a (new or existing) database file.
fn shell(db: &Path, sql: &str) -> String {
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run sqlite3 ({e}); install it with scripts/install-deps.sh")
        });
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), sql.as_bytes())
        .expect("write sql");
    let out = child.wait_with_output().expect("sqlite3");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "sqlite3: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// A temp dir with `a.db` holding [`SCHEMA`].
fn setup() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("a.db");
    shell(&db, SCHEMA);
    (dir, db)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn assert_one_line_error(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err}");
    assert!(
        err.starts_with("liteorm-changeset: ") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn capture_then_inspect_as_table_json_and_sql() {
    let (dir, db) = setup();
    let blob = dir.path().join("cs.bin");
    let out = run(&[
        "capture",
        "--db",
        s(&db),
        "--table",
        "t",
        "-o",
        s(&blob),
        "--sql",
        "UPDATE t SET name = 'uno' WHERE id = 1; INSERT INTO t VALUES (3, NULL, 3.5)",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        shell(&db, "SELECT name FROM t WHERE id = 1;"),
        "uno\n",
        "capture commits"
    );

    let table = stdout(&run(&["inspect", s(&blob), "--db", s(&db)]));
    let mut lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.pop(), Some("2 changes (changeset)"));
    lines.sort();
    assert_eq!(
        lines,
        [
            "INSERT t [id=3] name: NULL, n: 3.5",
            "UPDATE t [id=1] name: 'one' -> 'uno'"
        ]
    );

    let json = stdout(&run(&["inspect", s(&blob), "--json"]));
    assert_eq!(json.lines().count(), 2);
    let insert = json
        .lines()
        .find(|l| l.contains("INSERT"))
        .expect("an insert line");
    assert!(
        insert.contains(r#"{"null":null}"#) && insert.contains(r#"{"real":3.5}"#),
        "{insert}"
    );

    let sql = stdout(&run(&["inspect", s(&blob), "--sql", "--db", s(&db)]));
    assert!(sql.contains("INSERT INTO"), "{sql}");
    assert_eq!(
        stdout(&run(&["validate", s(&blob)])),
        format!("{}: valid changeset, 2 changes\n", blob.display())
    );
}

#[test]
fn capture_writes_to_stdout_and_patchsets_too() {
    let (_dir, db) = setup();
    let out = run(&[
        "capture",
        "--db",
        s(&db),
        "--patchset",
        "--sql",
        "DELETE FROM t WHERE id = 2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.first(), Some(&b'P'));
    let mut child = bin()
        .args(["inspect", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &out.stdout).expect("pipe");
    let shown = stdout(&child.wait_with_output().expect("inspect"));
    assert!(
        shown.contains("DELETE t [column1=2]") && shown.contains("(patchset)"),
        "{shown}"
    );
}

/// Runs the binary with `input` on standard input.
fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input).expect("pipe");
    child.wait_with_output().expect("run liteorm-changeset")
}

#[test]
fn inspect_json_then_build_round_trips_byte_for_byte_and_an_edit_applies() {
    let (dir, db) = setup();
    let sql = "UPDATE t SET name = 'uno', n = 10 WHERE id = 1; DELETE FROM t WHERE id = 2; \
        INSERT INTO t VALUES (3, X'00FF', 0.1), (4, NULL, -9223372036854775808)";
    for kind in ["changeset", "patchset"] {
        let blob = dir.path().join(format!("{kind}.bin"));
        let mut capture = vec!["capture", "--db", s(&db), "-o", s(&blob), "--sql", sql];
        let mut build = vec!["build", "-"];
        if kind == "patchset" {
            capture.push("--patchset");
            build.push("--patchset");
        }
        // On a copy, so that each kind records the same writes.
        let copy = dir.path().join(format!("{kind}.db"));
        std::fs::copy(&db, &copy).expect("copy");
        capture[2] = s(&copy);
        assert!(run(&capture).status.success());
        let json = run(&["inspect", s(&blob), "--json"]);
        assert!(json.status.success(), "{}", stderr(&json));
        let built = run_with_stdin(&build, &json.stdout);
        assert!(built.status.success(), "{}", stderr(&built));
        assert_eq!(
            built.stdout,
            std::fs::read(&blob).expect("read blob"),
            "{kind}"
        );
    }

    // An edited change builds, and applies what the edit says.
    let json = stdout(&run(&[
        "inspect",
        s(&dir.path().join("changeset.bin")),
        "--json",
    ]));
    let edited = json.replace(r#"{"text":"uno"}"#, r#"{"text":"edited"}"#);
    assert_ne!(edited, json);
    let file = dir.path().join("edited.jsonl");
    std::fs::write(&file, edited).expect("write");
    let out_blob = dir.path().join("edited.bin");
    assert!(
        run(&["build", s(&file), "-o", s(&out_blob)])
            .status
            .success()
    );
    let applied = run(&["apply", "--db", s(&db), s(&out_blob)]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert_eq!(
        shell(&db, "SELECT id, quote(name), n FROM t ORDER BY id;"),
        "1|'edited'|10\n3|X'00FF'|0.1\n4|NULL|-9223372036854775808\n"
    );

    // A change that breaks a rule, and JSON that is not a change: one line, exit 4.
    let null_key = r#"{"table":"t","op":"INSERT","indirect":false,"pk":[1,0,0],"new":[{"null":null},{"text":"x"},{"integer":1}]}"#;
    let out = run_with_stdin(&["build", "-"], null_key.as_bytes());
    assert_one_line_error(&out, 4);
    assert!(
        stderr(&out).contains("key column 0 is NULL"),
        "{}",
        stderr(&out)
    );
    let out = run_with_stdin(&["build", "-"], b"{\"table\":\"t\"}\nnot json\n");
    assert_one_line_error(&out, 4);
}

/// A changeset that sets row 1's name to 'uno', and a target where row 1 diverged.
fn conflict_setup() -> (TempDir, PathBuf, PathBuf) {
    let (dir, src) = setup();
    let blob = dir.path().join("cs.bin");
    assert!(
        run(&[
            "capture",
            "--db",
            s(&src),
            "-o",
            s(&blob),
            "--sql",
            "UPDATE t SET name = 'uno' WHERE id = 1; UPDATE t SET n = 20 WHERE id = 2"
        ])
        .status
        .success()
    );
    let target = dir.path().join("b.db");
    shell(
        &target,
        &format!("{SCHEMA} UPDATE t SET name = 'eins' WHERE id = 1;"),
    );
    (dir, blob, target)
}

#[test]
fn apply_aborts_on_a_conflict_by_default_and_leaves_the_database_untouched() {
    let (_dir, blob, target) = conflict_setup();
    let before = shell(&target, "SELECT * FROM t;");
    let out = run(&["apply", "--db", s(&target), s(&blob)]);
    assert_one_line_error(&out, 7);
    assert!(stderr(&out).contains("Data conflict"), "{}", stderr(&out));
    assert_eq!(shell(&target, "SELECT * FROM t;"), before);
}

#[test]
fn per_kind_policies_resolve_conflicts_and_json_lists_them() {
    let (_dir, blob, target) = conflict_setup();
    let out = run(&[
        "apply",
        "--db",
        s(&target),
        s(&blob),
        "--on-data",
        "replace",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains(r#""applied":2"#) && report.contains(r#""replaced":1"#),
        "{report}"
    );
    assert!(
        report.contains(r#""kind":"Data""#)
            && report
                .contains(r#""conflicting_row":[{"integer":1},{"text":"eins"},{"integer":1}]"#),
        "{report}"
    );
    assert_eq!(
        shell(&target, "SELECT name, n FROM t ORDER BY id;"),
        "uno|1\ntwo|20\n"
    );
}

#[test]
fn dry_run_reports_without_changing_anything() {
    let (_dir, blob, target) = conflict_setup();
    let before = shell(&target, "SELECT * FROM t;");
    let out = run(&[
        "apply",
        "--db",
        s(&target),
        s(&blob),
        "--on-conflict",
        "omit",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("dry run (rolled back): 2 changes: 1 applied, 1 omitted"),
        "{}",
        stdout(&out)
    );
    assert_eq!(shell(&target, "SELECT * FROM t;"), before);
}

#[test]
fn table_option_limits_the_apply() {
    let (dir, src) = setup();
    shell(&src, "CREATE TABLE u(k PRIMARY KEY);");
    let blob = dir.path().join("cs.bin");
    assert!(
        run(&[
            "capture",
            "--db",
            s(&src),
            "-o",
            s(&blob),
            "--sql",
            "INSERT INTO u VALUES (1); DELETE FROM t WHERE id = 1"
        ])
        .status
        .success()
    );
    let target = dir.path().join("b.db");
    shell(&target, &format!("{SCHEMA} CREATE TABLE u(k PRIMARY KEY);"));
    let out = run(&["apply", "--db", s(&target), s(&blob), "--table", "u"]);
    assert!(stdout(&out).contains("filtered out: t"), "{}", stdout(&out));
    assert_eq!(
        shell(&target, "SELECT count(*) FROM t; SELECT count(*) FROM u;"),
        "2\n1\n"
    );
}

#[test]
fn invert_and_concat_round_trip() {
    let (dir, db) = setup();
    let original = shell(&db, "SELECT * FROM t;");
    let [a, b, ab, undo] = ["a.bin", "b.bin", "ab.bin", "undo.bin"].map(|f| dir.path().join(f));
    assert!(
        run(&[
            "capture",
            "--db",
            s(&db),
            "-o",
            s(&a),
            "--sql",
            "UPDATE t SET n = n + 10"
        ])
        .status
        .success()
    );
    assert!(
        run(&[
            "capture",
            "--db",
            s(&db),
            "-o",
            s(&b),
            "--sql",
            "DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (5, 'five', 5)"
        ])
        .status
        .success()
    );
    assert!(
        run(&["concat", s(&a), s(&b), "-o", s(&ab)])
            .status
            .success()
    );
    assert!(run(&["invert", s(&ab), "-o", s(&undo)]).status.success());
    let out = run(&["apply", "--db", s(&db), s(&undo)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(shell(&db, "SELECT * FROM t;"), original);
}

#[test]
fn bad_inputs_give_one_line_and_distinct_exit_codes() {
    let (dir, db) = setup();
    let missing = dir.path().join("missing.bin");
    assert_one_line_error(&run(&["inspect", s(&missing)]), 3);

    let corrupt = dir.path().join("corrupt.bin");
    std::fs::write(&corrupt, b"T\x7f\x7f\x7f").expect("write");
    let out = run(&["validate", s(&corrupt)]);
    assert_one_line_error(&out, 4);
    assert!(
        stderr(&out).contains("byte"),
        "names the offset: {}",
        stderr(&out)
    );

    let not_db = dir.path().join("text.db");
    std::fs::write(
        &not_db,
        "this is not a database, just some text that is long enough",
    )
    .expect("write");
    assert_one_line_error(
        &run(&["capture", "--db", s(&not_db), "--sql", "SELECT 1"]),
        5,
    );
    assert_one_line_error(
        &run(&[
            "capture",
            "--db",
            s(&dir.path().join("nope.db")),
            "--sql",
            "SELECT 1",
        ]),
        5,
    );
    assert!(
        !dir.path().join("nope.db").exists(),
        "a missing database is not created"
    );

    assert_one_line_error(
        &run(&[
            "capture",
            "--db",
            s(&db),
            "--table",
            "nosuch",
            "--sql",
            "SELECT 1",
        ]),
        8,
    );
    assert_one_line_error(
        &run(&[
            "capture",
            "--db",
            s(&db),
            "--sql",
            "INSERT INTO nosuch VALUES (1)",
        ]),
        8,
    );

    let ps = dir.path().join("ps.bin");
    assert!(
        run(&[
            "capture",
            "--db",
            s(&db),
            "--patchset",
            "-o",
            s(&ps),
            "--sql",
            "DELETE FROM t"
        ])
        .status
        .success()
    );
    assert_one_line_error(&run(&["invert", s(&ps)]), 4);

    let usage = run(&["apply", "--db"]);
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn a_locked_database_is_reported_as_locked() {
    let (dir, db) = setup();
    let blob = dir.path().join("cs.bin");
    assert!(
        run(&[
            "capture",
            "--db",
            s(&db),
            "-o",
            s(&blob),
            "--sql",
            "UPDATE t SET n = 0"
        ])
        .status
        .success()
    );
    // Another process holds the write lock for longer than the CLI's 2 s busy timeout.
    let mut holder = Command::new("sqlite3")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sqlite3");
    let mut stdin = holder.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"BEGIN IMMEDIATE; SELECT 'locked';\n").expect("lock");
    let mut ready = [0u8; 7];
    std::io::Read::read_exact(holder.stdout.as_mut().expect("stdout"), &mut ready)
        .expect("lock taken");
    let out = run(&["apply", "--db", s(&db), s(&blob)]);
    drop(stdin);
    holder.wait().expect("sqlite3 exits");
    assert_one_line_error(&out, 6);
}

#[test]
fn changesets_match_the_sqlite3_shell_byte_for_byte() {
    // One change per table, so SQLite's undefined row order cannot differ between the two.
    let (dir, db) = setup();
    let ours = dir.path().join("ours.bin");
    assert!(
        run(&[
            "capture",
            "--db",
            s(&db),
            "--table",
            "t",
            "-o",
            s(&ours),
            "--sql",
            "UPDATE t SET name = 'x' WHERE id = 2"
        ])
        .status
        .success()
    );
    let theirs_db = dir.path().join("theirs.db");
    shell(&theirs_db, SCHEMA);
    let theirs = dir.path().join("theirs.bin");
    shell(
        &theirs_db,
        &format!(
            ".session open main s1\n.session s1 attach t\nUPDATE t SET name = 'x' WHERE id = 2;\n.session s1 changeset {}\n",
            theirs.display()
        ),
    );
    assert_eq!(
        std::fs::read(&ours).expect("ours"),
        std::fs::read(&theirs).expect("theirs")
    );
    // And the CLI applies the shell's changeset.
    let target = dir.path().join("target.db");
    shell(&target, SCHEMA);
    assert!(
        run(&["apply", "--db", s(&target), s(&theirs)])
            .status
            .success()
    );
    assert_eq!(shell(&target, "SELECT name FROM t WHERE id = 2;"), "x\n");
}

/// `a.db` (the target state) and `b.db` (the start): b is a's original content, a then got an
/// update, an insert and a delete.
fn diff_setup() -> (TempDir, PathBuf, PathBuf) {
    let (dir, a) = setup();
    let b = dir.path().join("b.db");
    shell(&b, SCHEMA);
    shell(
        &a,
        "UPDATE t SET name = 'uno' WHERE id = 1; DELETE FROM t WHERE id = 2; \
         INSERT INTO t VALUES (3, 'three', 3.5);",
    );
    (dir, a, b)
}

#[test]
fn diff_output_applied_to_from_makes_it_equal_to_db() {
    let (dir, a, b) = diff_setup();
    let out_file = dir.path().join("diff.bin");
    let out = run(&["diff", "--db", s(&a), "--from", s(&b), "-o", s(&out_file)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty());
    let shown = run(&["inspect", s(&out_file)]);
    assert!(
        stdout(&shown).ends_with("3 changes (changeset)\n"),
        "{}",
        stdout(&shown)
    );
    let applied = run(&["apply", "--db", s(&b), s(&out_file)]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let dump = "SELECT * FROM t ORDER BY id;";
    assert_eq!(shell(&b, dump), shell(&a, dump));
    assert_eq!(shell(&b, dump), "1|uno|1\n3|three|3.5\n");
    // Nothing left to diff; a patchset to stdout is empty as well.
    let again = run(&["diff", "--db", s(&a), "--from", s(&b), "--patchset"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(again.stdout.is_empty());
}

#[test]
fn diff_matches_apsw_session_diff_byte_for_byte() {
    // One table, changes on distinct keys: apsw (another SQLite build) must produce the same
    // changeset from the same databases.
    let (_dir, a, b) = diff_setup();
    let ours = run(&["diff", "--db", s(&a), "--from", s(&b), "--table", "t"]);
    assert!(ours.status.success(), "{}", stderr(&ours));
    let script = "import sys, apsw\n\
        db = apsw.Connection(sys.argv[1])\n\
        db.execute('ATTACH ? AS other', (sys.argv[2],))\n\
        s = apsw.Session(db, 'main')\n\
        s.diff('other', 't')\n\
        sys.stdout.write(s.changeset().hex())\n";
    let theirs = Command::new("python3")
        .args(["-c", script, s(&a), s(&b)])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install python3-apsw"));
    assert!(
        theirs.status.success(),
        "python3 with apsw failed (install python3-apsw): {}",
        stderr(&theirs)
    );
    let hex: String = ours.stdout.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, stdout(&theirs));
    assert!(!hex.is_empty());
}

#[test]
fn diff_failures_have_one_line_and_the_usual_exit_codes() {
    let (dir, a, b) = diff_setup();
    // A table that does not exist: an SQL/schema failure (8).
    let out = run(&["diff", "--db", s(&a), "--from", s(&b), "--table", "nope"]);
    assert_one_line_error(&out, 8);
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
    // Same table, other columns: a schema mismatch (8) that names the table.
    let c = dir.path().join("c.db");
    shell(&c, "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT);");
    let out = run(&["diff", "--db", s(&a), "--from", s(&c)]);
    assert_one_line_error(&out, 8);
    assert!(
        stderr(&out).contains("\"t\"") || stderr(&out).contains(" t"),
        "{}",
        stderr(&out)
    );
    // --from is not a database, or missing: 5, like --db.
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a database, just some text long enough to matter....",
    )
    .expect("write junk");
    assert_one_line_error(&run(&["diff", "--db", s(&a), "--from", s(&junk)]), 5);
    let missing = dir.path().join("missing.db");
    assert_one_line_error(&run(&["diff", "--db", s(&a), "--from", s(&missing)]), 5);
    assert_one_line_error(&run(&["diff", "--db", s(&missing), "--from", s(&a)]), 5);
    assert!(!missing.exists(), "a missing database is never created");
}

/// A changeset of `rows` inserts into an empty `t(id, v)`, and a database to apply it to.
fn big_apply_setup(rows: u32) -> (TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("source.db");
    let target = dir.path().join("target.db");
    for db in [&source, &target] {
        shell(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);");
    }
    let blob = dir.path().join("big.bin");
    let sql = format!(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows}) \
         INSERT INTO t SELECT i, hex(randomblob(16)) FROM c"
    );
    let out = run(&["capture", "--db", s(&source), "-o", s(&blob), "--sql", &sql]);
    assert!(out.status.success(), "{}", stderr(&out));
    (dir, target, blob)
}

#[test]
fn apply_shows_no_progress_when_stderr_is_not_a_terminal() {
    let (_dir, target, blob) = big_apply_setup(50_000);
    let out = run(&["apply", "--db", s(&target), s(&blob)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "50000 changes: 50000 applied, 0 omitted, 0 replaced\n"
    );
    assert_eq!(shell(&target, "SELECT count(*) FROM t;"), "50000\n");
}

#[test]
fn apply_draws_a_progress_bar_on_a_terminal() {
    // `script` (util-linux) runs the binary with a pseudo-terminal as stdout and stderr.
    let (_dir, target, blob) = big_apply_setup(50_000);
    let bin = assert_cmd::cargo::cargo_bin("liteorm-changeset");
    let command = format!("{} apply --db {} {}", bin.display(), s(&target), s(&blob));
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run script ({e}); install util-linux"));
    assert!(out.status.success(), "{}", stdout(&out));
    let terminal = stdout(&out);
    assert!(
        terminal.contains("applying ["),
        "no progress bar: {terminal:?}"
    );
    assert!(
        terminal.contains("50000 changes: 50000 applied"),
        "{terminal:?}"
    );
    assert_eq!(shell(&target, "SELECT count(*) FROM t;"), "50000\n");
}

#[test]
fn capture_options_mark_changes_indirect_and_record_tables_without_a_key() {
    let (dir, db) = setup();
    shell(&db, "CREATE TABLE nokey(a, b);");
    let blob = dir.path().join("cs.bin");
    let mut args = vec![
        "capture",
        "--db",
        s(&db),
        "--indirect",
        "--implicit-pk",
        "-o",
        s(&blob),
        "--sql",
        "UPDATE t SET n = 5 WHERE id = 1; INSERT INTO nokey VALUES ('x', 1)",
    ];
    let out = run(&args);
    if !changeset::Capability::ImplicitPrimaryKey.is_available() {
        assert_one_line_error(&out, 1);
        args.retain(|a| *a != "--implicit-pk");
        assert!(run(&args).status.success());
        return;
    }
    assert!(out.status.success(), "{}", stderr(&out));
    let json = stdout(&run(&["inspect", s(&blob), "--json"]));
    assert_eq!(json.lines().count(), 2, "{json}");
    assert!(
        json.lines().all(|l| l.contains(r#""indirect":true"#)),
        "{json}"
    );
    assert!(json.contains(r#""table":"nokey""#), "{json}");
}

#[test]
fn apply_flags_invert_and_ignore_noop() {
    let (dir, db) = setup();
    let blob = dir.path().join("cs.bin");
    let target = dir.path().join("b.db");
    std::fs::copy(&db, &target).expect("copy");
    let sql = "UPDATE t SET name = 'uno' WHERE id = 1; DELETE FROM t WHERE id = 2";
    assert!(
        run(&["capture", "--db", s(&db), "-o", s(&blob), "--sql", sql])
            .status
            .success()
    );
    let rows = "SELECT id, name, n FROM t ORDER BY id;";

    // Applying the inverse to the source restores what the target still has.
    let out = run(&["apply", "--db", s(&db), "--invert", s(&blob)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(shell(&db, rows), shell(&target, rows));

    // A target that already made the same changes: each one conflicts, unless no-ops are ignored.
    shell(&target, &format!("{sql};"));
    assert_one_line_error(&run(&["apply", "--db", s(&target), s(&blob)]), 7);
    let out = run(&["apply", "--db", s(&target), "--ignore-noop", s(&blob)]);
    if changeset::Capability::IgnoreNoop.is_available() {
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("0 omitted, 0 replaced"),
            "no conflict: {}",
            stdout(&out)
        );
        assert_eq!(
            shell(&target, rows),
            "1|uno|1\n",
            "already in the final state"
        );
    } else {
        assert_one_line_error(&out, 1);
    }

    // A patchset cannot be inverted.
    let patch = dir.path().join("ps.bin");
    let sql = "UPDATE t SET n = 7 WHERE id = 1";
    let args = [
        "capture",
        "--db",
        s(&db),
        "--patchset",
        "-o",
        s(&patch),
        "--sql",
        sql,
    ];
    assert!(run(&args).status.success());
    assert_one_line_error(&run(&["apply", "--db", s(&db), "--invert", s(&patch)]), 4);
}

#[test]
fn a_rebase_buffer_from_apply_rebases_the_local_changeset() {
    let (dir, here) = setup();
    let there = dir.path().join("there.db");
    std::fs::copy(&here, &there).expect("copy");
    let local = dir.path().join("local.bin");
    let remote = dir.path().join("remote.bin");
    let capture = |db: &Path, out: &Path, name: &str| {
        let sql = format!("UPDATE t SET name = '{name}' WHERE id = 1");
        let args = ["capture", "--db", s(db), "-o", s(out), "--sql", &sql];
        assert!(run(&args).status.success());
    };
    capture(&here, &local, "ours");
    capture(&there, &remote, "theirs");

    // Here, the remote change loses to ours; the buffer records that decision.
    let buffer = dir.path().join("rebase.bin");
    let args = ["apply", "--db", s(&here), s(&remote), "--on-data", "omit"];
    let out = run(&[&args[..], &["--rebase-out", s(&buffer)]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::metadata(&buffer).expect("buffer").len() > 0);

    // There, our change as it was conflicts; rebased on the buffer it applies cleanly.
    assert_one_line_error(&run(&["apply", "--db", s(&there), s(&local)]), 7);
    let rebased = dir.path().join("rebased.bin");
    let out = run(&[
        "rebase",
        s(&local),
        "--buffer",
        s(&buffer),
        "-o",
        s(&rebased),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["apply", "--db", s(&there), s(&rebased)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = "SELECT name FROM t WHERE id = 1;";
    assert_eq!(shell(&there, name), "ours\n");
    assert_eq!(shell(&here, name), "ours\n");

    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"T\xff\xff not a rebase buffer").expect("write");
    let out = run(&["rebase", s(&local), "--buffer", s(&garbage)]);
    assert_one_line_error(&out, 4);
}

#[test]
fn group_conforms_changes_from_before_a_new_column_to_the_schema() {
    let (dir, db) = setup();
    let before = dir.path().join("before.bin");
    let after = dir.path().join("after.bin");
    let sql = "UPDATE t SET n = 10 WHERE id = 1";
    assert!(
        run(&["capture", "--db", s(&db), "-o", s(&before), "--sql", sql])
            .status
            .success()
    );
    shell(&db, "ALTER TABLE t ADD COLUMN note TEXT DEFAULT 'none';");
    let sql = "INSERT INTO t VALUES (3, 'three', 3, 'new')";
    assert!(
        run(&["capture", "--db", s(&db), "-o", s(&after), "--sql", sql])
            .status
            .success()
    );
    let merged = dir.path().join("merged.bin");

    // Without the schema the two layouts of `t` cannot merge.
    let plain = run(&["group", s(&before), s(&after), "-o", s(&merged)]);
    assert_one_line_error(&plain, 8);
    let out = run(&[
        "group",
        s(&before),
        s(&after),
        "--schema",
        s(&db),
        "-o",
        s(&merged),
    ]);
    if !changeset::Capability::ChangegroupSchema.is_available() {
        assert_one_line_error(&out, 1);
        return;
    }
    assert!(out.status.success(), "{}", stderr(&out));
    let json = stdout(&run(&["inspect", s(&merged), "--json"]));
    assert_eq!(json.lines().count(), 2, "{json}");
    assert!(
        json.lines().all(|l| l.contains(r#""pk":[1,0,0,0]"#)),
        "every change has the four columns: {json}"
    );
}

/// A changeset of `rows` INSERTs into `t(id INTEGER PRIMARY KEY, v BLOB)`, each with a 100-byte
/// blob, written by hand in SQLite's format (about 115 bytes a row).
fn big_changeset(rows: i64) -> Vec<u8> {
    let mut blob = vec![b'T', 2, 1, 0, b't', 0];
    for id in 0..rows {
        blob.extend_from_slice(&[0x12, 0, 0x01]);
        blob.extend_from_slice(&id.to_be_bytes());
        blob.extend_from_slice(&[0x04, 100]);
        blob.extend_from_slice(&[u8::try_from(id % 251).expect("small"); 100]);
    }
    blob
}

/// Runs the binary with `args`, its heap limited to `mib` MiB (`RLIMIT_DATA`: `brk` and private
/// mappings, so an allocation beyond it fails), and returns its exit code. (A peak resident size
/// read by the parent would include the test process's own: the child starts as a copy of it.)
fn run_limited(args: &[&str], mib: u64) -> Option<i32> {
    use std::os::unix::process::CommandExt as _;
    let limit = libc::rlimit {
        rlim_cur: mib * 1024 * 1024,
        rlim_max: mib * 1024 * 1024,
    };
    let mut command = bin();
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: `setrlimit` is async-signal-safe, and the closure touches nothing else.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command.status().expect("run liteorm-changeset").code()
}

/// `invert`, `concat` and `rebase` stream their files instead of reading them whole and then
/// writing the result (more than twice the blob's size, three times for `invert`). `rebase`
/// runs in a few MB whatever the size of the changeset; `invert` holds about its input
/// (SQLite's `invert_strm` keeps what it has read); `concat` holds the distinct rows it merges
/// (SQLite's changegroup).
#[test]
fn invert_concat_and_rebase_stream_large_blobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [big, inverted, back, merged, rebased, buffer] = [
        "big.bin",
        "inv.bin",
        "back.bin",
        "merged.bin",
        "rebased.bin",
        "buffer.bin",
    ]
    .map(|f| dir.path().join(f));
    // 46 MB.
    let original = big_changeset(400_000);
    std::fs::write(&big, &original).expect("write");

    assert_eq!(
        run_limited(&["invert", s(&big), "-o", s(&inverted)], 112),
        Some(0)
    );
    assert_eq!(
        run_limited(&["invert", s(&inverted), "-o", s(&back)], 112),
        Some(0)
    );
    assert!(
        std::fs::read(&back).expect("read") == original,
        "inverted twice is the original"
    );

    // The inverse cancels every row.
    let out = run(&["concat", s(&big), s(&inverted), "-o", s(&merged)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&merged).expect("read"), b"", "nothing left");

    // An empty rebase buffer: the changeset comes out as it went in.
    std::fs::write(&buffer, b"").expect("write");
    let rebase = ["rebase", s(&big), "--buffer", s(&buffer), "-o", s(&rebased)];
    assert_eq!(run_limited(&rebase, 32), Some(0));
    assert!(std::fs::read(&rebased).expect("read") == original);
    // The limit bites: half the changeset's size is too little for a copy of it.
    let copy = ["validate", s(&big)];
    assert_ne!(
        run_limited(&copy, 32),
        Some(0),
        "validate reads the file whole"
    );
}

/// A transform that fails part way (here on input that turns bad after valid changes) names
/// the input at fault and leaves the output path as it was, with no temporary file behind.
#[test]
fn a_failed_transform_leaves_the_output_file_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [good, bad, out] = ["good.bin", "bad.bin", "out.bin"].map(|f| dir.path().join(f));
    let valid = big_changeset(1000);
    std::fs::write(&good, &valid).expect("write");
    let mut corrupt = valid.clone();
    corrupt.extend_from_slice(&[0x12, 0, 0x07, 1, 2, 3]);
    std::fs::write(&bad, &corrupt).expect("write");
    std::fs::write(&out, b"kept").expect("write");
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = files();

    let failed = run(&["invert", s(&bad), "-o", s(&out)]);
    assert_one_line_error(&failed, 4);
    assert!(stderr(&failed).contains("bad.bin: "), "{}", stderr(&failed));
    let failed = run(&["concat", s(&good), s(&bad), "-o", s(&out)]);
    assert_one_line_error(&failed, 4);
    assert!(stderr(&failed).contains("bad.bin: "), "{}", stderr(&failed));
    let failed = run(&["invert", s(&dir.path().join("missing.bin")), "-o", s(&out)]);
    assert_one_line_error(&failed, 3);
    assert!(
        stderr(&failed).contains("missing.bin: "),
        "{}",
        stderr(&failed)
    );
    assert_eq!(std::fs::read(&out).expect("read"), b"kept");
    assert_eq!(files(), before, "no temporary file left");

    // Standard input and output stream too.
    let piped = bin()
        .args(["invert", "-"])
        .stdin(std::fs::File::open(&good).expect("open"))
        .output()
        .expect("run");
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert_eq!(piped.stdout.len(), valid.len());
}
