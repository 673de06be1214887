//! Schema migrations through the change log (`ChangeLog::migrate`): logged with their SQL in
//! the transaction that runs them, run by replicas in seq order, refused or stopped without a
//! trace when they fail; and retention: pruning behind known replicas, the horizon, and the
//! error of a replica left behind it.

use liteorm_changeset::Capability;
use liteorm_core::{Session, Value};
use liteorm_replication::{
    ChangeLog, ConflictPolicy, EntryKind, Error, LogTableSource, Meta, Payload, Replica,
};
use liteorm_sqlite::SqliteSession;

use crate::support::{dump, file_db};

const SCHEMA: &str = "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER); \
    CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL); \
    INSERT INTO counter VALUES (1, 0)";

async fn db_with_schema() -> (SqliteSession, tempfile::TempDir) {
    let (db, dir) = file_db().await;
    db.execute_batch(SCHEMA).await.unwrap();
    (db, dir)
}

async fn record(log: &ChangeLog, sql: &'static str) -> u64 {
    log.record(Meta::actor("app"), move |s| async move {
        s.execute_batch(sql).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap()
    .expect("the unit of work changed something")
}

async fn migrate(log: &ChangeLog, sql: &str) -> u64 {
    log.migrate(Meta::actor("dba").reason("migration"), sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The user schema (liteorm's own tables left out), sorted.
async fn schema(db: &dyn Session) -> Vec<Vec<Value>> {
    db.query(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema \
         WHERE name NOT LIKE 'liteorm_%' AND tbl_name NOT LIKE 'liteorm_%' ORDER BY type, name",
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|row| row.into_values())
    .collect()
}

/// Schema and rows of every user table.
async fn state(db: &dyn Session) -> (Vec<Vec<Value>>, Vec<Vec<Vec<Value>>>) {
    let schema = schema(db).await;
    let mut rows = Vec::new();
    for table in schema
        .iter()
        .filter(|r| r[0] == Value::Text("table".into()))
    {
        let Value::Text(name) = &table[1] else {
            unreachable!()
        };
        rows.push(dump(db, name).await);
    }
    (schema, rows)
}

#[tokio::test]
async fn replicas_run_every_kind_of_migration_in_seq_order() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record(&log, "INSERT INTO item VALUES (1, 'pen', 1), (2, 'ink', 5)").await;
    // The backfill stores the default in the rows that predate the column, on the primary and
    // (running the same SQL) on every replica: see the next test for why.
    let add = migrate(
        &log,
        "ALTER TABLE item ADD COLUMN note TEXT DEFAULT 'none'; UPDATE item SET note = note",
    )
    .await;
    record(&log, "INSERT INTO item VALUES (3, 'pad', 2, 'new')").await;
    migrate(
        &log,
        "CREATE TABLE tag(id INTEGER PRIMARY KEY, item_id INTEGER REFERENCES item(id), label TEXT); \
         CREATE INDEX item_name ON item(name)",
    )
    .await;
    record(&log, "INSERT INTO tag VALUES (1, 1, 'red'), (2, 3, 'blue')").await;
    migrate(&log, "ALTER TABLE item RENAME COLUMN qty TO quantity").await;
    record(
        &log,
        "UPDATE item SET quantity = quantity + 10 WHERE id = 2",
    )
    .await;
    // The 12-step rebuild of a table that `tag` references. Foreign keys stay on (they cannot
    // be turned off inside the transaction), so the referencing table is rebuilt in the same
    // migration, pointing at the new table, and dropped first.
    let rebuild = migrate(
        &log,
        "CREATE TABLE item_new(id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '', \
             quantity INTEGER CHECK (quantity >= 0), note TEXT DEFAULT 'none'); \
         INSERT INTO item_new SELECT id, coalesce(name, ''), quantity, note FROM item; \
         CREATE TABLE tag_new(id INTEGER PRIMARY KEY, item_id INTEGER REFERENCES item_new(id), \
             label TEXT); \
         INSERT INTO tag_new SELECT id, item_id, label FROM tag; \
         DROP TABLE tag; \
         DROP TABLE item; \
         ALTER TABLE item_new RENAME TO item; \
         ALTER TABLE tag_new RENAME TO tag; \
         CREATE INDEX item_name ON item(name)",
    )
    .await;
    record(
        &log,
        "INSERT INTO item(id, name, quantity) VALUES (4, 'cap', 3)",
    )
    .await;
    migrate(&log, "DROP TABLE counter").await;
    let last = record(&log, "INSERT INTO tag VALUES (3, 4, 'green')").await;
    // The rebuilt reference is enforced.
    assert!(
        primary
            .execute_batch("INSERT INTO tag VALUES (9, 99, 'none')")
            .await
            .is_err()
    );

    let entry = log.entry(add).await.unwrap();
    assert_eq!(entry.kind, EntryKind::Schema);
    assert_eq!(entry.tables, ["item"]);
    assert!(entry.changeset.is_empty());
    assert_eq!(
        entry.payload(),
        Payload::Schema(
            "ALTER TABLE item ADD COLUMN note TEXT DEFAULT 'none'; UPDATE item SET note = note"
        )
    );
    assert_eq!(log.entry(rebuild).await.unwrap().tables, ["item", "tag"]);
    assert_eq!(log.verify().await.unwrap().entries, last);

    // Small batches and one big one: a migration in the middle of a batch or at its edge.
    for batch in [3, 256] {
        let (replica_db, _d2) = db_with_schema().await;
        let replica = Replica::open(&replica_db).await.unwrap().batch_size(batch);
        let done = replica
            .catch_up(&mut LogTableSource::new(&primary))
            .await
            .unwrap();
        assert_eq!(done.last_seq, last, "batch {batch}");
        assert_eq!(
            state(&replica_db).await,
            state(&primary).await,
            "batch {batch}"
        );
    }
}

#[tokio::test]
async fn an_update_of_a_row_older_than_a_defaulted_column_applies_or_stops_never_diverges() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record(&log, "INSERT INTO item VALUES (1, 'pen', 1)").await;
    migrate(&log, "ALTER TABLE item ADD COLUMN note TEXT DEFAULT 'none'").await;
    let update = record(&log, "UPDATE item SET qty = 2 WHERE id = 1").await;
    // The row is stored without the new column. Older SQLite builds (3.40, say) read it as
    // NULL in the session, so the update records the column as changed from NULL to its
    // default; newer ones read the default and record no change to it.
    let change = &log
        .entry(update)
        .await
        .unwrap()
        .changeset
        .changes()
        .unwrap()[0];
    let spurious = change.old.get(3).is_some_and(Option::is_some);

    let (replica_db, _d2) = db_with_schema().await;
    let replica = Replica::open(&replica_db).await.unwrap();
    let caught_up = replica.catch_up(&mut LogTableSource::new(&primary)).await;
    if spurious {
        // The replica's row has the default (as on the primary): a data conflict, which stops
        // the replica before the entry instead of overwriting anything.
        assert!(
            matches!(&caught_up, Err(Error::Stopped { seq, .. }) if *seq == update),
            "{caught_up:?}"
        );
        assert_eq!(replica.last_applied().await.unwrap(), update - 1);
        assert_eq!(
            dump(&replica_db, "item").await,
            [vec![
                Value::Integer(1),
                Value::Text("pen".into()),
                Value::Integer(1),
                Value::Text("none".into())
            ]]
        );
    } else {
        assert_eq!(caught_up.unwrap().last_seq, update);
        assert_eq!(state(&replica_db).await, state(&primary).await);
    }
}

#[tokio::test]
async fn a_migration_that_fails_on_the_primary_changes_and_logs_nothing() {
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record(&log, "INSERT INTO item VALUES (1, 'pen', 1)").await;
    let before = state(&primary).await;
    let err = log
        .migrate(
            Meta::default(),
            "ALTER TABLE item ADD COLUMN a TEXT; ALTER TABLE nope ADD COLUMN b TEXT",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Session(_)) && err.to_string().contains("nope"),
        "{err}"
    );
    for (sql, says) in [
        ("ALTER TABLE item ADD COLUMN a TEXT; COMMIT", "COMMIT"),
        ("PRAGMA foreign_keys = OFF", "reference"),
        ("   ", "no statement"),
        (
            "ALTER TABLE liteorm_changes ADD COLUMN x TEXT",
            "liteorm_changes",
        ),
    ] {
        let err = log.migrate(Meta::default(), sql).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidMigration(m) if m.contains(says)),
            "{sql}: {err}"
        );
    }
    assert_eq!(state(&primary).await, before);
    assert_eq!(log.last_seq().await.unwrap(), 1);
    let columns = primary
        .query("SELECT name FROM pragma_table_info('liteorm_changes')", &[])
        .await
        .unwrap();
    assert_eq!(columns.len(), 9, "the refused migration was rolled back");
    log.verify().await.unwrap();
}

#[tokio::test]
async fn a_migration_that_fails_on_a_replica_stops_it_naming_the_seq() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    record(&log, "INSERT INTO item VALUES (1, 'pen', 1)").await;
    let create = migrate(&log, "CREATE TABLE tag(id INTEGER PRIMARY KEY, label TEXT)").await;
    record(&log, "INSERT INTO tag VALUES (1, 'red')").await;

    let (replica_db, _d2) = db_with_schema().await;
    // The replica's schema drifted: it has a table of that name already.
    replica_db
        .execute_batch("CREATE TABLE tag(id INTEGER PRIMARY KEY, label TEXT, extra INT)")
        .await
        .unwrap();
    let replica = Replica::open(&replica_db).await.unwrap();
    let mut source = LogTableSource::new(&primary);
    for _ in 0..2 {
        let err = replica.catch_up(&mut source).await.unwrap_err();
        assert!(
            matches!(&err, Error::MigrationFailed { seq, .. } if *seq == create),
            "{err}"
        );
        assert!(err.to_string().contains("already exists"), "{err}");
        // Everything before it committed; nothing of it or after it.
        assert_eq!(replica.last_applied().await.unwrap(), create - 1);
        assert_eq!(
            dump(&replica_db, "item").await,
            dump(&primary, "item").await
        );
        assert!(dump(&replica_db, "tag").await.is_empty());
    }
    // The operator fixes the drift; the replica resumes at the migration.
    replica_db.execute_batch("DROP TABLE tag").await.unwrap();
    assert_eq!(replica.catch_up(&mut source).await.unwrap().last_seq, 3);
    assert_eq!(state(&replica_db).await, state(&primary).await);
}

#[tokio::test]
async fn revert_of_an_entry_recorded_before_a_migration_is_conformed_or_refused() {
    let (primary, _d) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    let insert = record(&log, "INSERT INTO item VALUES (1, 'pen', 1)").await;
    // The backfill stores the default in the rows that predate the column, on the primary and
    // (running the same SQL) on every replica: see the next test for why.
    let add = migrate(
        &log,
        "ALTER TABLE item ADD COLUMN note TEXT DEFAULT 'none'; UPDATE item SET note = note",
    )
    .await;

    let err = log
        .revert(add, ConflictPolicy::abort(), Meta::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotRevertible { seq, .. } if *seq == add),
        "{err}"
    );
    let err = log
        .rollback_to(0, ConflictPolicy::abort(), Meta::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotRevertible { seq, .. } if *seq == add),
        "{err}"
    );

    let reverted = log
        .revert(insert, ConflictPolicy::abort(), Meta::actor("auditor"))
        .await;
    if Capability::ChangegroupSchema.is_available() {
        // The insert, upgraded to three columns (the new one at its default), is undone.
        assert!(reverted.unwrap().logged_as.is_some());
        assert!(dump(&primary, "item").await.is_empty());
    } else {
        assert!(
            matches!(&reverted, Err(Error::NotRevertible { seq, reason }) if *seq == insert && reason.contains("3.44")),
            "{reverted:?}"
        );
        assert_eq!(dump(&primary, "item").await.len(), 1);
    }

    // Changes to a table dropped since cannot be undone, whatever the SQLite.
    let tagged = {
        migrate(&log, "CREATE TABLE tag(id INTEGER PRIMARY KEY, label TEXT)").await;
        record(&log, "INSERT INTO tag VALUES (1, 'red')").await
    };
    migrate(&log, "DROP TABLE tag").await;
    let last = log.last_seq().await.unwrap();
    let err = log
        .revert(tagged, ConflictPolicy::abort(), Meta::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotRevertible { seq, .. } if *seq == tagged),
        "{err}"
    );
    assert_eq!(log.last_seq().await.unwrap(), last, "nothing was logged");
}

#[tokio::test]
async fn prune_keeps_what_a_known_replica_has_not_applied_and_the_chain_verifiable() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    for _ in 0..3 {
        record(&log, "UPDATE counter SET n = n + 1").await;
    }
    let (replica_db, _d2) = db_with_schema().await;
    let replica = Replica::open(&replica_db).await.unwrap();
    let mut source = LogTableSource::new(&primary).report_as("eu-1");
    assert_eq!(replica.catch_up(&mut source).await.unwrap().last_seq, 3);
    migrate(&log, "ALTER TABLE counter ADD COLUMN at INTEGER").await;
    for _ in 0..2 {
        record(&log, "UPDATE counter SET n = n + 1").await;
    }
    let cursors = log.replica_cursors().await.unwrap();
    assert_eq!(cursors.len(), 1);
    assert_eq!(
        (cursors[0].name.as_str(), cursors[0].applied_seq),
        ("eu-1", 3)
    );

    let err = log.prune(5).await.unwrap_err();
    assert!(
        matches!(&err, Error::PruneBlocked { up_to: 5, replica, applied: 3 } if replica == "eu-1"),
        "{err}"
    );
    assert_eq!(log.horizon().await.unwrap(), 0, "nothing was pruned");
    let pruned = log.prune(3).await.unwrap();
    assert_eq!((pruned.entries, pruned.horizon), (3, 3));
    let verified = log.verify().await.unwrap();
    assert_eq!((verified.pruned_through, verified.entries), (3, 3));
    assert!(matches!(log.entry(2).await, Err(Error::NoSuchEntry(2))));

    // The replica at the horizon goes on, the migration included.
    assert_eq!(replica.catch_up(&mut source).await.unwrap().last_seq, 6);
    assert_eq!(state(&replica_db).await, state(&primary).await);
    // Everything pruned: the next entry still links to the chain.
    assert_eq!(log.prune(6).await.unwrap().entries, 3);
    assert_eq!(log.last_seq().await.unwrap(), 6);
    assert_eq!(record(&log, "UPDATE counter SET n = n + 1").await, 7);
    let verified = log.verify().await.unwrap();
    assert_eq!((verified.pruned_through, verified.entries), (6, 1));
    assert_eq!(replica.catch_up(&mut source).await.unwrap().last_seq, 7);
    assert_eq!(state(&replica_db).await, state(&primary).await);
    // Editing the entry after the horizon, or the horizon itself, still breaks the chain.
    primary
        .execute_batch("UPDATE liteorm_log_horizon SET hash = zeroblob(32)")
        .await
        .unwrap();
    assert!(matches!(
        log.verify().await,
        Err(Error::ChainBroken { seq: 7, .. })
    ));

    // A replica that starts from scratch is behind the horizon: it must be bootstrapped.
    let (late_db, _d3) = db_with_schema().await;
    let late = Replica::open(&late_db).await.unwrap();
    let err = late
        .catch_up(&mut LogTableSource::new(&primary))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BehindHorizon {
                applied: 0,
                horizon: 6
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("snapshot"), "{err}");
}

#[tokio::test]
async fn a_forgotten_or_forced_past_replica_no_longer_holds_back_pruning() {
    let (primary, _d1) = db_with_schema().await;
    let log = ChangeLog::open(&primary).await.unwrap();
    for _ in 0..4 {
        record(&log, "UPDATE counter SET n = n + 1").await;
    }
    log.report_cursor("old", 1).await.unwrap();
    log.report_cursor("new", 4).await.unwrap();
    assert!(matches!(
        log.prune(2).await,
        Err(Error::PruneBlocked { replica, .. }) if replica == "old"
    ));
    assert_eq!(log.force_prune(2).await.unwrap().horizon, 2);
    assert!(log.forget_replica("old").await.unwrap());
    assert!(!log.forget_replica("old").await.unwrap());
    assert_eq!(log.prune(4).await.unwrap().entries, 2);
    // Pruning up to the horizon again, or past the end, changes nothing.
    assert_eq!(log.prune(3).await.unwrap().entries, 0);
    assert!(matches!(log.prune(9).await, Err(Error::NoSuchEntry(9))));
    log.verify().await.unwrap();
}
