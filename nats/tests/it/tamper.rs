//! Tamper evidence end to end: each edit of the primary's log table is named at the right seq
//! by `ChangeLog::verify`, a local replica and a NATS follower; forged messages on the subject
//! are refused before SQLite sees them.

use std::time::Duration;

use liteorm_core::Session;
use liteorm_nats::{ChangeStream, Error, Publisher};
use liteorm_replication::{ChainBreak, LogTableSource, Replica};

use crate::support::{
    NatsServer, TAMPERED_LOG_LEN, TAMPERINGS, content, db_with_schema, follower, names_first_bad,
    record_many, tampered_primary,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_first_tampered_seq() {
    for tampering in TAMPERINGS {
        let (_primary, _dir, log) = tampered_primary(tampering).await;
        let err = log.verify().await.unwrap_err();
        assert!(
            names_first_bad(&err, tampering.first_bad),
            "{}: {err}",
            tampering.name
        );
        if tampering.name == "a deleted entry" {
            assert!(
                matches!(
                    err,
                    liteorm_replication::Error::ChainBroken {
                        reason: ChainBreak::Missing { next: 4 },
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_log_verifies_and_a_revert_of_a_tampered_one_is_refused() {
    let (primary, _dir) = db_with_schema().await;
    let log = liteorm_replication::ChangeLog::open(&primary)
        .await
        .unwrap();
    record_many(&log, TAMPERED_LOG_LEN).await;
    let verified = log.verify().await.unwrap();
    assert_eq!(verified.entries, TAMPERED_LOG_LEN);
    assert_eq!(
        verified.head,
        log.entry(TAMPERED_LOG_LEN).await.unwrap().hash
    );
    assert_eq!(verified.upgraded_through, None);

    let (primary, _dir, log) = tampered_primary(&TAMPERINGS[1]).await;
    let before = content(&primary).await;
    let err = log
        .revert(5, Default::default(), liteorm_replication::Meta::default())
        .await
        .unwrap_err();
    assert!(names_first_bad(&err, 2), "{err}");
    assert_eq!(content(&primary).await, before, "nothing applied");
    assert_eq!(log.last_seq().await.unwrap(), TAMPERED_LOG_LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_replica_stops_before_the_first_tampered_entry() {
    for tampering in TAMPERINGS {
        let (primary, _dir, _log) = tampered_primary(tampering).await;
        let (replica_db, _dir2) = db_with_schema().await;
        let replica = Replica::open(&replica_db).await.unwrap().batch_size(2);
        let err = replica
            .catch_up(&mut LogTableSource::new(&primary))
            .await
            .unwrap_err();
        assert!(
            names_first_bad(&err, tampering.first_bad),
            "{}: {err}",
            tampering.name
        );
        assert_eq!(
            replica.last_applied().await.unwrap(),
            tampering.first_bad - 1,
            "{}: everything before it is applied, nothing after",
            tampering.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_notices_a_history_rewritten_after_it_followed() {
    let (primary, _dir) = db_with_schema().await;
    let log = liteorm_replication::ChangeLog::open(&primary)
        .await
        .unwrap();
    record_many(&log, 3).await;
    let (replica_db, _dir2) = db_with_schema().await;
    let replica = Replica::open(&replica_db).await.unwrap();
    replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap();
    // Entry 3 is replaced by a differently chained one (here: entry 3 of another log with the
    // same work), and the log goes on from there: entry 4 links to the new 3, not the old.
    let (other, _dir3) = db_with_schema().await;
    let other_log = liteorm_replication::ChangeLog::open(&other).await.unwrap();
    other
        .execute("UPDATE counter SET n = 7 WHERE id = 2", &[])
        .await
        .unwrap();
    record_many(&other_log, 4).await;
    primary
        .execute_batch("DELETE FROM liteorm_changes WHERE seq = 3")
        .await
        .unwrap();
    for seq in [3_i64, 4] {
        let row = other
            .query(
                "SELECT committed_at, actor, reason, tables, kind, ref_seq, blob, hash \
                 FROM liteorm_changes WHERE seq = ?",
                &[seq.into()],
            )
            .await
            .unwrap()
            .remove(0)
            .into_values();
        let mut values = vec![seq.into()];
        values.extend(row);
        primary
            .execute(
                "INSERT INTO liteorm_changes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                &values,
            )
            .await
            .unwrap();
    }
    let err = replica
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap_err();
    assert!(names_first_bad(&err, 4), "{err}");
    assert_eq!(replica.last_applied().await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_follower_stops_before_the_first_tampered_entry() {
    let server = NatsServer::start();
    let js = server.js().await;
    for (i, tampering) in TAMPERINGS.iter().enumerate() {
        let (primary, _dir, log) = tampered_primary(tampering).await;
        let stream = ChangeStream::new(&format!("tampered{i}")).unwrap();
        let mut publisher = Publisher::new(&primary, js.clone(), stream.clone())
            .await
            .unwrap();
        // The publisher is a transport: it sends what the table holds, up to a deleted entry,
        // which it names.
        let published = tokio::time::timeout(Duration::from_secs(30), publisher.publish_pending())
            .await
            .expect("publish in time");
        match published {
            Ok(report) => assert_eq!(
                report.published,
                log.last_seq().await.unwrap(),
                "{}",
                tampering.name
            ),
            Err(Error::Replication(err)) => {
                assert_eq!(tampering.name, "a deleted entry", "{err}");
                assert!(names_first_bad(&err, tampering.first_bad), "{err}");
                assert_eq!(
                    publisher.published_seq().await.unwrap(),
                    tampering.first_bad - 1
                );
            }
            Err(other) => panic!("{}: {other}", tampering.name),
        }
        let (db, _dir2) = db_with_schema().await;
        let mut follower = follower(&js, &stream, &db, "replica").await;
        let result = tokio::time::timeout(Duration::from_secs(30), follower.catch_up())
            .await
            .expect("catch-up in time");
        match result {
            Err(Error::Replication(err)) => assert!(
                names_first_bad(&err, tampering.first_bad),
                "{}: {err}",
                tampering.name
            ),
            Err(other) => panic!("{}: {other}", tampering.name),
            Ok(done) => {
                // Only a stream that ends right before the missing entry can be caught up.
                assert_eq!(tampering.name, "a deleted entry");
                assert_eq!(done.last_seq, tampering.first_bad - 1);
            }
        }
        assert_eq!(
            follower.replica().last_applied().await.unwrap(),
            tampering.first_bad - 1,
            "{}",
            tampering.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_from_before_the_chain_is_upgraded_once_and_then_verifies() {
    let (primary, _dir) = db_with_schema().await;
    let log = liteorm_replication::ChangeLog::open(&primary)
        .await
        .unwrap();
    record_many(&log, 3).await;
    let expected = log.verify().await.unwrap().head;
    // The table as older versions made it: no hash column.
    primary
        .execute_batch("ALTER TABLE liteorm_changes DROP COLUMN hash")
        .await
        .unwrap();
    let log = liteorm_replication::ChangeLog::open(&primary)
        .await
        .unwrap();
    let verified = log.verify().await.unwrap();
    assert_eq!(verified.entries, 3);
    assert_eq!(verified.upgraded_through, Some(3));
    assert_eq!(
        verified.head, expected,
        "the same chain as if hashed at commit"
    );
    record_many(&log, 1).await;
    let verified = log.verify().await.unwrap();
    assert_eq!((verified.entries, verified.upgraded_through), (4, Some(3)));
    // Opening again changes nothing.
    liteorm_replication::ChangeLog::open(&primary)
        .await
        .unwrap();
    let upgrades = primary
        .query("SELECT count(*) FROM liteorm_chain_upgrade", &[])
        .await
        .unwrap();
    assert_eq!(upgrades[0].try_get::<i64>(0).unwrap(), 1);
}
