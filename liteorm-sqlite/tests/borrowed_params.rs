//! Borrowed parameters (`execute_refs`, `query_refs`, `Handle::query_refs`) bind every storage
//! class as owned ones do: on the inline path (run again from the statement cache), through
//! sqlx, and on a raw handle.

use liteorm_core::{Session as _, Value, ValueRef};
use liteorm_sqlite::SqliteSession;

/// One parameter of each kind, empty text and an empty blob included.
fn borrowed<'a>(text: &'a str, blob: &'a [u8]) -> [ValueRef<'a>; 7] {
    [
        ValueRef::Null,
        ValueRef::Integer(-7),
        ValueRef::Real(2.5),
        ValueRef::Text(text),
        ValueRef::Text(""),
        ValueRef::Blob(blob),
        ValueRef::Blob(&[]),
    ]
}

fn owned(params: &[ValueRef<'_>]) -> Vec<Value> {
    params.iter().map(ValueRef::to_owned).collect()
}

const ECHO: &str = "SELECT ?, ?, ?, ?, ?, ?, ?";
/// The same, with numbered parameters: never run inline, so it goes through sqlx.
const ECHO_NUMBERED: &str = "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7";

async fn temp_file_session(dir: &tempfile::TempDir) -> SqliteSession {
    let path = dir.path().join("borrowed.db");
    let db = SqliteSession::open(path.to_str().expect("a UTF-8 path"))
        .await
        .expect("open");
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .await
        .expect("create t");
    db
}

#[tokio::test]
async fn borrowed_parameters_read_back_as_owned_ones_inline_and_through_sqlx() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = temp_file_session(&dir).await;
    let text = String::from("héllo, wörld");
    let blob = vec![0_u8, 1, 2, 255];
    let params = borrowed(&text, &blob);
    let expected = owned(&params);

    // Outside a transaction on a file (inline with a zero busy timeout), inside one (inline
    // on the held handle lock), and numbered parameters (sqlx, which copies them).
    let outside = db.query_refs(ECHO, &params).await.expect("outside");
    let tx = db.begin_immediate().await.expect("begin");
    let inside = tx.query_refs(ECHO, &params).await.expect("inside");
    let again = tx.query_refs(ECHO, &params).await.expect("inside, again");
    let through_sqlx = tx.query_refs(ECHO_NUMBERED, &params).await.expect("sqlx");
    for (how, rows) in [
        ("outside", outside),
        ("inside", inside),
        ("again", again),
        ("through sqlx", through_sqlx),
    ] {
        assert_eq!(rows.len(), 1, "{how}");
        assert_eq!(rows[0].values(), expected.as_slice(), "{how}");
    }

    for (id, value) in params.iter().enumerate() {
        let id = i64::try_from(id).expect("a small index");
        let changed = tx
            .execute_refs(
                "INSERT INTO t(id, v) VALUES (?, ?)",
                &[ValueRef::Integer(id), *value],
            )
            .await
            .expect("insert");
        assert_eq!(changed, 1);
    }
    tx.commit().await.expect("commit");
    let stored: Vec<Value> = db
        .query("SELECT v FROM t ORDER BY id", &[])
        .await
        .expect("read back")
        .iter()
        .map(|row| row.values()[0].clone())
        .collect();
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn a_raw_handle_binds_borrowed_parameters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = temp_file_session(&dir).await;
    let text = String::from("raw");
    let blob = [9_u8; 3];
    let params = borrowed(&text, &blob);
    let expected = owned(&params);
    let pinned = db.pin().await.expect("pin");
    let mut guard = pinned.lock().await.expect("lock");
    let rows = guard
        .with_raw(|h| h.query_refs(ECHO, &params))
        .await
        .expect("connection")
        .expect("query");
    assert_eq!(rows[0].values(), expected.as_slice());
}
