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
