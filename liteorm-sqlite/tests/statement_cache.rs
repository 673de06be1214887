//! The cache of prepared statements that a pinned connection runs inline holds 64 of them and
//! then starts over: every SQL text must keep running its own statement across that.

use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;

#[tokio::test]
async fn each_sql_text_runs_its_own_statement_when_the_cache_starts_over() {
    let db = SqliteSession::open_in_memory().await.unwrap();
    // A transaction pins one connection, whose statements run from the cache.
    let tx = db.begin().await.unwrap();
    // 150 texts start the cache over twice per round; later rounds find texts that were
    // prepared before a restart.
    for round in 0..3_i64 {
        for i in 0..150_i64 {
            let rows = tx
                .as_session()
                .query(&format!("SELECT {i} + ?"), &[Value::Integer(round * 1000)])
                .await
                .unwrap();
            assert_eq!(
                rows[0].values(),
                [Value::Integer(i + round * 1000)],
                "text {i}"
            );
        }
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn texts_of_the_same_length_run_their_own_statements_when_interleaved() {
    let db = SqliteSession::open_in_memory().await.unwrap();
    let tx = db.begin().await.unwrap();
    // Ten texts of one length, cycled through more often than the recently used ones are kept,
    // then two of them in turn: each must find its own statement, not a recent one of the same
    // length.
    let texts: Vec<String> = (0..10).map(|i| format!("SELECT {i} + ?")).collect();
    let order = (0..30).map(|k| k % 10).chain((0..20).map(|k| k % 2 * 7));
    for (step, i) in order.enumerate() {
        let step = i64::try_from(step).unwrap();
        let rows = tx
            .as_session()
            .query(&texts[i], &[Value::Integer(step * 100)])
            .await
            .unwrap();
        let i = i64::try_from(i).unwrap();
        assert_eq!(
            rows[0].values(),
            [Value::Integer(i + step * 100)],
            "step {step}"
        );
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_cached_query_names_the_columns_a_schema_change_gave_it() {
    let db = SqliteSession::open_in_memory().await.unwrap();
    db.execute_batch("CREATE TABLE t(a INTEGER); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let tx = db.begin().await.unwrap();
    let s = tx.as_session();
    let rows = s.query("SELECT * FROM t", &[]).await.unwrap();
    assert_eq!(rows[0].columns(), ["a"]);
    // Run inline on the same connection, so the cached SELECT is prepared again, not dropped.
    s.execute("ALTER TABLE t ADD COLUMN b INTEGER DEFAULT 2", &[])
        .await
        .unwrap();
    let rows = s.query("SELECT * FROM t", &[]).await.unwrap();
    assert_eq!(rows[0].columns(), ["a", "b"]);
    assert_eq!(rows[0].try_get::<i64>("b").unwrap(), 2);
    tx.commit().await.unwrap();
}
