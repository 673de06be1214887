//! The non-SQLite test dialect speaks the same `Session` trait.

use liteorm_core::{Dialect, Error, Session, Value, transaction};
use liteorm_tests::{MEM_DIALECT, MemSession};

#[tokio::test]
async fn test_dialect_is_not_sqlite_and_downcasts_to_itself() {
    let db = MemSession::new();
    let session: &dyn Session = &db;
    assert_eq!(session.dialect(), MEM_DIALECT);
    assert_ne!(session.dialect(), Dialect::SQLITE);
    assert!(session.as_any().downcast_ref::<MemSession>().is_some());
    assert!(
        session
            .as_any()
            .downcast_ref::<liteorm_sqlite::SqliteSession>()
            .is_none()
    );
}

#[tokio::test]
async fn test_dialect_transactions_commit_and_roll_back() {
    let db = MemSession::new();
    transaction(&db, |tx| {
        Box::pin(async move {
            tx.execute("INSERT INTO t VALUES (?, ?)", &[1.into(), "a".into()])
                .await?;
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap();
    let failed = transaction(&db, |tx| {
        Box::pin(async move {
            tx.execute("INSERT INTO t VALUES (?, ?)", &[2.into(), "b".into()])
                .await?;
            tx.execute("UPDATE t SET x = 1", &[]).await?;
            Ok::<_, Error>(())
        })
    })
    .await;
    assert!(failed.is_err());
    let rows = db.query("SELECT * FROM t", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].values(),
        [Value::Integer(1), Value::Text("a".into())]
    );
}
