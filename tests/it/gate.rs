//! The capability gate: changeset APIs on a dialect that is not SQLite give a typed error.

use liteorm_changeset::{Error, apply, capture};
use liteorm_core::Dialect;
use liteorm_tests::{MEM_DIALECT, MemSession};

#[tokio::test]
async fn capture_on_another_dialect_is_unsupported_not_a_panic() {
    let db = MemSession::new();
    let mut ran = false;
    let err = capture(&db, &["t"], |_s| {
        ran = true;
        async { Ok::<_, Error>(()) }
    })
    .await
    .unwrap_err();
    match &err {
        Error::Unsupported {
            capability,
            dialect,
        } => {
            assert_eq!(*dialect, MEM_DIALECT);
            assert!(capability.contains("capturing"), "{capability}");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
    assert!(!ran, "the closure must not run on an unsupported dialect");
    assert_eq!(
        err.to_string(),
        "capturing a changeset is not supported by the mem dialect"
    );
}

#[tokio::test]
async fn apply_on_another_dialect_is_unsupported() {
    let db = MemSession::new();
    let err = apply(&db, &liteorm_changeset::Changeset::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unsupported { dialect, .. } if dialect == MEM_DIALECT && dialect != Dialect::SQLITE),
        "{err}"
    );
}

#[tokio::test]
async fn a_transaction_of_another_dialect_is_unsupported_too() {
    let db = MemSession::new();
    let tx = liteorm_core::Session::begin(&db).await.unwrap();
    let err = apply(tx.as_session(), &liteorm_changeset::Changeset::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}
