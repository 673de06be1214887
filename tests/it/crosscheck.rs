//! Cross-checks of the wire format against independent implementations: Python's `apsw` and the
//! `sqlite3` command-line shell (`.session`). Both are installed by `scripts/install-deps.sh`;
//! if one is missing these tests fail and say so, they are never skipped.

use std::path::Path;
use std::process::Command;

use liteorm_changeset::{Changeset, apply};

use crate::support::{captured, dump, file_db, seed};

const MIX: &str = "UPDATE t SET score = score + 1 WHERE id % 2 = 0; DELETE FROM t WHERE id = 3; \
    INSERT INTO t VALUES (100, 'hundred', NULL, X'00FF'); UPDATE t SET name = NULL WHERE id = 1";

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {what}: {e}; install it with scripts/install-deps.sh")
    });
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Applies the changeset in `blob` to the database `db` with apsw, aborting on any conflict, and
/// prints apsw's own inverse of it as hex.
const APSW_APPLY: &str = r#"
import sys, apsw
blob = open(sys.argv[1], "rb").read()
db = apsw.Connection(sys.argv[2])
def conflict(kind, change):
    raise SystemExit(f"conflict {kind} on {change}")
apsw.Changeset.apply(blob, db, conflict=lambda k, c: apsw.SQLITE_CHANGESET_ABORT)
ops = sorted((c.name, c.opcode, c.old, c.new) for c in apsw.Changeset.iter(blob))
print(len(ops))
print(apsw.Changeset.invert(blob).hex())
"#;

#[tokio::test]
async fn apsw_applies_and_inverts_a_changeset_liteorm_captured() {
    let (primary, dir) = file_db().await;
    seed(&primary, 6).await;
    let cs = captured(&primary, &["t"], MIX).await;
    let blob = dir.path().join("cs.bin");
    std::fs::write(&blob, cs.as_bytes()).unwrap();
    let (replica, rdir) = file_db().await;
    seed(&replica, 6).await;
    drop(replica);
    let replica_path = rdir.path().join("test.db");
    let out = run(
        Command::new("python3")
            .args(["-c", APSW_APPLY])
            .arg(&blob)
            .arg(&replica_path),
        "python3 with apsw",
    );
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(cs.changes().unwrap().len().to_string().as_str())
    );
    let apsw_inverse = lines.next().unwrap();
    assert_eq!(
        apsw_inverse,
        hex(cs.invert().unwrap().as_bytes()),
        "both inverses are identical bytes"
    );
    let replica = liteorm_sqlite::SqliteSession::open(replica_path.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(dump(&replica, "t").await, dump(&primary, "t").await);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Records `MIX` with the sqlite3 shell's `.session` on the database at `db`, writing the
/// changeset to `out`.
fn sqlite3_shell_changeset(db: &Path, out: &Path) {
    let script = format!(
        ".session open main s1\n.session s1 attach t\n{MIX};\n.session s1 changeset {}\n.session s1 close\n",
        out.display()
    );
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run sqlite3: {e}; install it with scripts/install-deps.sh")
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "sqlite3: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn liteorm_applies_a_changeset_the_sqlite3_shell_recorded() {
    let (primary, dir) = file_db().await;
    seed(&primary, 6).await;
    drop(primary);
    let primary_path = dir.path().join("test.db");
    let blob_path = dir.path().join("shell.bin");
    sqlite3_shell_changeset(&primary_path, &blob_path);
    let cs = Changeset::from_bytes(std::fs::read(&blob_path).unwrap()).unwrap();
    assert_eq!(cs.changes().unwrap().len(), 6);

    let (replica, _rdir) = file_db().await;
    seed(&replica, 6).await;
    let report = apply(&replica, &cs).await.unwrap();
    assert_eq!(report.applied, 6);
    let primary = liteorm_sqlite::SqliteSession::open(primary_path.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(dump(&replica, "t").await, dump(&primary, "t").await);

    // And liteorm records the same changes as the shell did: same table, ops and values.
    let (again, _adir) = file_db().await;
    seed(&again, 6).await;
    let ours = captured(&again, &["t"], MIX).await;
    let key = |c: &liteorm_changeset::Change| {
        (
            c.primary_key()[0].to_string(),
            format!("{:?}{:?}{:?}", c.op, c.old, c.new),
        )
    };
    let mut a: Vec<_> = ours.changes().unwrap().iter().map(key).collect();
    let mut b: Vec<_> = cs.changes().unwrap().iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

/// Decodes the blob in `argv[1]` with apsw and prints each change as a line of liteorm's JSON
/// format (key flags as 0/1: apsw gives the set of key columns, not their order).
const APSW_DECODE: &str = r#"
import sys, json, apsw
def cell(v):
    if v is apsw.no_change: return None
    if v is None: return {"null": None}
    if isinstance(v, int): return {"integer": v}
    if isinstance(v, float): return {"real": v}
    if isinstance(v, str): return {"text": v}
    return {"blob": bytes(v).hex()}
for c in apsw.Changeset.iter(open(sys.argv[1], "rb").read()):
    out = {"table": c.name, "op": c.op, "indirect": bool(c.indirect),
           "pk": [1 if i in c.pk_columns else 0 for i in range(c.column_count)]}
    if c.old is not None: out["old"] = [cell(v) for v in c.old]
    if c.new is not None: out["new"] = [cell(v) for v in c.new]
    print(json.dumps(out))
"#;

#[test]
fn apsw_decodes_what_the_builder_writes_as_liteorm_does() {
    use liteorm_changeset::Change;
    use liteorm_core::Value;

    let mut builder = Changeset::builder();
    builder
        .table("t", [1, 0, 0, 0])
        .unwrap()
        .insert([
            Value::Integer(i64::MIN),
            Value::Text("ünïcode \u{1F600}".into()),
            Value::Real(-0.1),
            Value::Blob(vec![0, 255, 7]),
        ])
        .unwrap()
        .indirect(true)
        .update(
            [
                Some(Value::Integer(2)),
                None,
                Some(Value::Real(1.5)),
                Some(Value::Null),
            ],
            [
                None,
                None,
                Some(Value::Real(f64::MAX)),
                Some(Value::Blob(Vec::new())),
            ],
        )
        .unwrap()
        .indirect(false)
        .table("pair", [2, 0, 1])
        .unwrap()
        .delete([
            Value::Text(String::new()),
            Value::Null,
            Value::Integer(i64::MAX),
        ])
        .unwrap();
    let built = builder.finish().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("built.bin");
    std::fs::write(&blob, built.as_bytes()).unwrap();
    let out = run(
        Command::new("python3").args(["-c", APSW_DECODE]).arg(&blob),
        "python3 with apsw",
    );
    let from_apsw: Vec<Change> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let ours: Vec<Change> = built
        .changes()
        .unwrap()
        .into_iter()
        .map(|mut change| {
            change.pk = change.pk.iter().map(|&p| u8::from(p != 0)).collect();
            change
        })
        .collect();
    assert_eq!(ours.len(), 3);
    assert_eq!(from_apsw, ours);
}
