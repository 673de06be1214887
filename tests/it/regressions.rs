//! Regression tests for inputs the fuzz targets (`cargo xtask fuzz`) found: each once crashed the
//! process, made SQLite read out of bounds, or broke an invariant of the apply report, and must
//! now be refused by `from_bytes`, end in an error, or be handled and reported correctly.

use liteorm_changeset::{ChangeOp, Changeset, ConflictAction, Error, Patchset, SkipReason, apply};
use liteorm_core::Session;
use liteorm_sqlite::SqliteSession;

/// `t(k INTEGER PRIMARY KEY, v TEXT)`: one UPDATE whose old record leaves the key undefined
/// (field type 0x00 at byte 8) and sets `v` to `'x'`.
///
/// Found by the `apply` target on SQLite 3.51.3: `from_bytes` accepted it (SQLite's iterator does
/// not check that an update's old key is defined) and `apply` then crashed the process with a
/// NULL dereference: `sessionApplyOneOp` binds every key column's old value without checking it
/// (`sessionBindValue` → `sqlite3_value_type(NULL)`, SIGSEGV).
const UPDATE_WITH_UNDEFINED_OLD_KEY: &[u8] = b"T\x02\x01\x00t\x00\x17\x00\x00\x00\x00\x03\x01x";

/// The input the `apply` target found (264 bytes; minimised by hand to the above): sections for
/// `pair`, `wide` and `many`; the crash is in `pair`'s second UPDATE, whose old record leaves
/// the composite key's column `b` undefined.
const FOUND_BY_APPLY_TARGET: &[u8] =
    b"T\x03\x02\x01\x00pair\x00\x17\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x03\x01y\x01\x00&\x00\
\x00\xfc\x00\x00\x03\x00\x00\x03\x03all\x17\x00\x01?19\x00\x00\x00\x00\x00\x00\x00\x01\x03\
\x01x\x03\x02n1\x00\x00\x03\x03all\x17\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x03\x01x\x05\
\x00\x00\x03\x03allT\x04\x02\x01\x00\x00wide\x00\x09\x00\x04\x01\x00\x02?\xe0\x00\x00\x00\
\x00\x00\x00\x03\x01z\x01\x7f\xff\xff\xff\xff\xff\xffz\x09\x00\x04\x00\x02\xbf\xf0\x00\x00\
\x00\x00\x00\x00\x05\x01\x80\x00\x00\x00\x00\x00\x00\x00T\x14\x01\x00\x00\x00\x00\x00\x00\
\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00many\x00\x09\x00\x01\x00\x00\x00\x00\x00\
\x00\x07\x01\x03\x05firts\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\
\x05\x03\x04last\x09\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00\
\x02\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x02@\x00\x00\x00\
\x00\x00\x00\x00";

/// `t(a, b, c)` with key `(a, c)`: one INSERT whose key column `a` is NULL, then a text value
/// crafted so that SQLite, reading the NULL as a length-prefixed value, lands on bytes that say
/// "skip 256 MiB".
///
/// Found by the `concat` target on SQLite 3.51.3 (AddressSanitizer: heap-buffer-overflow READ in
/// `sessionHashAppendBlob` ← `sessionChangeHash` ← `sessionOneChangeToHash` ←
/// `sqlite3changegroup_add` ← `sqlite3changeset_concat`): `from_bytes` accepted a key column
/// holding NULL (or undefined), which SQLite never writes and its change-group code does not
/// expect: it hashes every key column as a number or as a length-prefixed string, so it read
/// past the end of the blob. With this input, a plain build (no sanitizer) dies with SIGSEGV in
/// `Changeset::concat`.
const INSERT_WITH_NULL_KEY: &[u8] =
    b"T\x03\x01\x00\x01t\x00\x12\x00\x05\x03\x08ab\x04\x81\x80\x80\x80\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01";

/// The first half of the input the `concat` target found (207 bytes: changesets, split at 102
/// into two near-identical halves): in its `kv` section the second column is flagged as a key
/// column (flag 0x29) and its INSERT holds NULL there.
const FOUND_BY_CONCAT_TARGET: &[u8] =
    b"T\x04\x01\x00\x00\x00t\x00\x12\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03\x03\x00\x02\x00\x00\
\x00\x00\x00\x00\x00\x00\x05T\x02\x01)kv\x00\x12\x00\x03\x00\x05T\x03\x02\x01\x00pair\x00\
\x12\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x03\x01x\x05T\x04\x02\x01\x00\x00wide\x00\x12\
\x00\x04\x00\x02\xbf\xf0\x00\x00\x00\x00\x00\x00\x05\x01\x80\x00\x00\x00\x00\x00\x00\x00";

async fn db_with_t() -> SqliteSession {
    let db = SqliteSession::open_in_memory().await.unwrap();
    db.execute_batch(
        "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'one');
         CREATE TABLE pair(a INTEGER, b TEXT, note, PRIMARY KEY(b, a));
         INSERT INTO pair VALUES (1, 'x', 'n1'), (2, 'x', NULL), (1, 'y', 3);",
    )
    .await
    .unwrap();
    db
}

/// `bytes` must be refused as malformed, or, if a later SQLite makes them safe to accept, applying
/// them must fail with an error and leave the database as it was.
async fn refused_or_error(bytes: &[u8]) {
    let cs = match Changeset::from_bytes(bytes) {
        Err(Error::Invalid { .. }) => return,
        Err(other) => panic!("expected Error::Invalid, got {other}"),
        Ok(cs) => cs,
    };
    let db = db_with_t().await;
    let before = db.query("SELECT * FROM t", &[]).await.unwrap();
    let result = apply(&db, &cs).on_conflict(|_| ConflictAction::Omit).await;
    assert!(result.is_err(), "applied a corrupt changeset: {result:?}");
    assert_eq!(db.query("SELECT * FROM t", &[]).await.unwrap(), before);
}

#[tokio::test]
async fn update_with_undefined_old_key_is_refused_not_a_segfault() {
    let err = Changeset::from_bytes(UPDATE_WITH_UNDEFINED_OLD_KEY).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    refused_or_error(UPDATE_WITH_UNDEFINED_OLD_KEY).await;
}

#[tokio::test]
async fn apply_target_crash_input_is_refused() {
    let err = Changeset::from_bytes(FOUND_BY_APPLY_TARGET).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

#[test]
fn insert_with_a_null_key_is_refused_not_an_out_of_bounds_read() {
    for bytes in [INSERT_WITH_NULL_KEY, FOUND_BY_CONCAT_TARGET] {
        let err = Changeset::from_bytes(bytes).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
    }
}

#[test]
fn null_or_undefined_keys_are_refused_in_every_record_that_names_a_row() {
    // t(k, v) with key k. Each names its row by a NULL (0x05) or undefined (0x00) key.
    let changesets: [&[u8]; 5] = [
        b"T\x02\x01\x00t\x00\x12\x00\x05\x03\x01x",
        b"T\x02\x01\x00t\x00\x12\x00\x00\x03\x01x",
        b"T\x02\x01\x00t\x00\x09\x00\x05\x03\x01x",
        b"T\x02\x01\x00t\x00\x09\x00\x00\x03\x01x",
        b"T\x02\x01\x00t\x00\x17\x00\x05\x03\x01x\x00\x03\x01y",
    ];
    for bytes in changesets {
        let err = Changeset::from_bytes(bytes).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{bytes:?}: {err}");
    }
    // Patchsets: an INSERT, an UPDATE (one record, key included), a DELETE (key only).
    let patchsets: [&[u8]; 4] = [
        b"P\x02\x01\x00t\x00\x12\x00\x05\x03\x01x",
        b"P\x02\x01\x00t\x00\x17\x00\x05\x03\x01x",
        b"P\x02\x01\x00t\x00\x09\x00\x05",
        b"P\x02\x01\x00t\x00\x09\x00\x00",
    ];
    for bytes in patchsets {
        let err = Patchset::from_bytes(bytes).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{bytes:?}: {err}");
    }
}

/// Found by the `concat` target under AddressSanitizer (heap-buffer-overflow READ of 1 byte in
/// `sessionChangeHash` ← `sessionOneChangeToHash` ← `sqlite3changegroup_add` ←
/// `sqlite3changeset_concat`, SQLite 3.51.3): for a patchset DELETE, which holds only the key,
/// SQLite reads the type byte of every column before it skips the non-key ones, so a DELETE at
/// the very end of the blob, on a table with a non-key column after its key, makes it read one
/// byte past the blob. The input is well-formed: SQLite itself writes this patchset for
/// `DELETE FROM t WHERE k = 1`. The stray read only shows under ASan (`cargo xtask fuzz
/// concat`); this test pins the case down: the delete survives the concatenation and applies.
#[tokio::test]
async fn patchset_concat_keeps_a_delete_that_ends_the_blob() {
    let delete_1 = b"P\x02\x01\x00t\x00\x09\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01";
    let ps = Patchset::from_bytes(&delete_1[..]).unwrap();
    for both in [
        ps.concat(&Patchset::default()).unwrap(),
        Patchset::default().concat(&ps).unwrap(),
    ] {
        assert_eq!(both.as_bytes(), &delete_1[..]);
        let db = db_with_t().await;
        assert_eq!(apply(&db, &both).await.unwrap().applied, 1);
        assert!(db.query("SELECT * FROM t", &[]).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn undefined_second_column_of_a_composite_old_key_is_refused() {
    // pair(a, b, note) with key (b, a): flags 2, 1, 0. Old record: a = 1, b undefined.
    let bytes = b"T\x03\x02\x01\x00pair\x00\x17\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\
\x00\x00\x03\x01z";
    let err = Changeset::from_bytes(&bytes[..]).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

#[tokio::test]
async fn undefined_key_in_an_updates_new_record_is_the_normal_form_and_applies() {
    // The fix must not refuse what SQLite itself writes: an UPDATE's new record leaves the key
    // (and every unchanged column) undefined. Old: k = 1, v = 'one'; new: k undefined, v = 'x'.
    let bytes = b"T\x02\x01\x00t\x00\x17\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x03\x03one\
\x00\x03\x01x";
    let cs = Changeset::from_bytes(&bytes[..]).unwrap();
    let changes = cs.changes().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].op, ChangeOp::Update);
    assert_eq!(changes[0].new[0], None);
    let db = db_with_t().await;
    let report = apply(&db, &cs).await.unwrap();
    assert_eq!(report.applied, 1);
    let rows = db.query("SELECT v FROM t WHERE k = 1", &[]).await.unwrap();
    assert_eq!(rows[0].try_get::<String>(0).unwrap(), "x");
}

#[tokio::test]
async fn undefined_values_where_sqlite_requires_them_are_refused_or_an_error() {
    // INSERT with an undefined key; INSERT with an undefined non-key column; DELETE with an
    // undefined key; DELETE with an undefined non-key column. SQLite reports these as corrupt
    // when it applies them; none may crash.
    for bytes in [
        &b"T\x02\x01\x00t\x00\x12\x00\x00\x03\x01x"[..],
        b"T\x02\x01\x00t\x00\x12\x00\x01\x00\x00\x00\x00\x00\x00\x00\x07\x00",
        b"T\x02\x01\x00t\x00\x09\x00\x00\x03\x03one",
        b"T\x02\x01\x00t\x00\x09\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00",
    ] {
        refused_or_error(bytes).await;
    }
}

#[tokio::test]
async fn patchset_update_with_undefined_key_is_refused_or_an_error() {
    // A patchset UPDATE has one record; SQLite's iterator already reports an undefined key in it
    // as corrupt, so validation refuses it.
    let bytes = b"P\x02\x01\x00t\x00\x17\x00\x00\x03\x01x";
    let err = Patchset::from_bytes(&bytes[..]).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

/// A changeset section for `table(k INTEGER PRIMARY KEY, v TEXT)` with one insert of `(k, v)`.
fn insert_section(table: &str, k: i64, v: &str) -> Vec<u8> {
    let mut out = vec![b'T', 2, 1, 0];
    out.extend_from_slice(table.as_bytes());
    out.extend_from_slice(&[0, 0x12, 0, 0x01]);
    out.extend_from_slice(&k.to_be_bytes());
    out.extend_from_slice(&[0x03, u8::try_from(v.len()).unwrap()]);
    out.extend_from_slice(v.as_bytes());
    out
}

async fn db_with_t_and_u() -> SqliteSession {
    let db = SqliteSession::open_in_memory().await.unwrap();
    db.execute_batch(
        "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT); CREATE TABLE u(k INTEGER PRIMARY KEY, v TEXT)",
    )
    .await
    .unwrap();
    db
}

// Found by the `apply` target: a changeset may hold several runs (sections) of one table, e.g.
// two changesets concatenated byte for byte, which SQLite applies like one. SQLite calls the table
// filter once per run, and the report added the table's total change count at every call, so
// `attempted` and `applied` exceeded `changes` (the fuzzer's input: 18 changes, 28 attempted)
// and a skipped table was listed once per run.

#[tokio::test]
async fn several_runs_of_one_table_are_counted_once() {
    let bytes = [
        insert_section("t", 10, "a"),
        insert_section("u", 1, "b"),
        insert_section("t", 11, "c"),
    ]
    .concat();
    let cs = Changeset::from_bytes(bytes).unwrap();
    let db = db_with_t_and_u().await;
    let report = apply(&db, &cs).await.unwrap();
    assert_eq!(
        (report.changes, report.attempted, report.applied),
        (3, 3, 3),
        "{report:?}"
    );
    assert_eq!(db.query("SELECT * FROM t", &[]).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_missing_table_in_two_runs_is_reported_once() {
    let bytes = [
        insert_section("gone", 1, "a"),
        insert_section("t", 10, "b"),
        insert_section("gone", 2, "c"),
    ]
    .concat();
    let cs = Changeset::from_bytes(bytes).unwrap();
    let db = db_with_t_and_u().await;
    let report = apply(&db, &cs).await.unwrap();
    assert_eq!(
        (report.changes, report.attempted, report.applied),
        (3, 1, 1),
        "{report:?}"
    );
    let skipped: Vec<(&str, &SkipReason, usize)> = report
        .skipped_tables
        .iter()
        .map(|t| (t.table.as_str(), &t.reason, t.changes))
        .collect();
    assert_eq!(skipped, [("gone", &SkipReason::Missing, 2)]);
}

#[tokio::test]
async fn consecutive_runs_whose_names_differ_in_case_are_one_run() {
    // SQLite compares a section's table name with the previous one case-insensitively, so `T`
    // right after `t` continues the same run (one filter call) and both changes are applied.
    let bytes = [insert_section("t", 10, "a"), insert_section("T", 11, "b")].concat();
    let cs = Changeset::from_bytes(bytes).unwrap();
    let db = db_with_t_and_u().await;
    let report = apply(&db, &cs).await.unwrap();
    assert_eq!(
        (report.changes, report.attempted, report.applied),
        (2, 2, 2),
        "{report:?}"
    );
    assert_eq!(db.query("SELECT * FROM t", &[]).await.unwrap().len(), 2);
}

/// A key of 257 columns: SQLite's session extension keeps each column's key position in a byte
/// (`abPK[i] = sqlite3_column_int(..)` into a `u8`), so in its headers the 256th key column has
/// position 0 and the 257th position 1. liteorm's own schema reading used to saturate them to
/// 255 instead, so the apply's compatibility check found the table different from the header
/// SQLite wrote for it, and skipped it.
#[tokio::test]
async fn a_key_of_more_than_255_columns_applies_like_sqlite_records_it() {
    let columns: Vec<String> = (0..257).map(|i| format!("c{i}")).collect();
    let schema = format!(
        "CREATE TABLE big({}, PRIMARY KEY({}))",
        columns.join(", "),
        columns.join(", ")
    );
    let values: Vec<String> = (0..257).map(|i| i.to_string()).collect();
    let insert = format!("INSERT INTO big VALUES ({})", values.join(", "));
    let source = SqliteSession::open_in_memory().await.unwrap();
    source.execute_batch(&schema).await.unwrap();
    let cs = liteorm_changeset::capture(&source, &["big"], move |s| async move {
        s.execute_batch(&insert).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let change = &cs.changes().unwrap()[0];
    assert_eq!(
        (change.pk[254], change.pk[255], change.pk[256]),
        (255, 0, 1)
    );

    let target = SqliteSession::open_in_memory().await.unwrap();
    target.execute_batch(&schema).await.unwrap();
    let report = apply(&target, &cs).await.unwrap();
    assert!(report.skipped_tables.is_empty(), "{report:?}");
    assert_eq!(report.applied, 1);
    let rows = target.query("SELECT count(*) FROM big", &[]).await.unwrap();
    assert_eq!(rows[0].try_get::<i64>(0).unwrap(), 1);
}

/// Resolutions for `pair(a, b, note)` whose header flags all three columns as key columns, and a
/// local changeset whose `pair` has only `(b, a)` as key and ends with a DELETE whose `note` is
/// NULL.
///
/// Found by the `rebase` target on SQLite 3.51.3 (AddressSanitizer: heap-buffer-overflow READ in
/// `sessionChangeHash` ← `sessionRebase` ← `sqlite3rebaser_rebase`): SQLite finds the local
/// table among the resolutions by name only and hashes the local records with the resolutions'
/// key flags, so it read the NULL `note` as a key value and its length past the end of the blob.
const REBASE_BUFFER_WITH_OTHER_KEY: &[u8] = b"T\x03\x02\x01\xf8pair\x00\x12\x00\x01\x00\x00\
\x00\x00\x00\x00\x00\x01\x03\x01x\x03\x03all\x12\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x03\
\x01x\x03\x03all";
const LOCAL_CHANGES_FOR_THAT_REBASE: &[u8] = b"T\x04\x01\x00\x00\x00t\x00\x09\x00\x01\x00\x00\
\x00\x00\x00\x00\x00\x01\x03\x03one\x02?\xf8\x00\x00\x00\x00\x00\x00\x04\x01\x01T\x03\x02\x01\
\x00pair\x00\x09\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x03\x01x\x03\x02n2\x09\x00\x01\x00\
\x00\x00\x00\x00\x00\x00\x02\x03\x01x\x05";

#[test]
fn rebase_over_resolutions_for_a_differently_keyed_table_is_refused() {
    let buffer = liteorm_changeset::RebaseBuffer::from_bytes(REBASE_BUFFER_WITH_OTHER_KEY).unwrap();
    let local = Changeset::from_bytes(LOCAL_CHANGES_FOR_THAT_REBASE).unwrap();
    let mut rebaser = liteorm_changeset::Rebaser::new().unwrap();
    rebaser.configure(&buffer).unwrap();
    match rebaser.rebase(&local) {
        Err(Error::SchemaMismatch { table, .. }) => assert_eq!(table, "pair"),
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
}

/// Resolutions for `wide` and `many`, and local changes whose UPDATE of `wide` sets its key column
/// `x` to NULL in the new record.
///
/// Found by the `rebase` target on SQLite 3.51.3 (after the fix above, 449 k executions in):
/// `sqlite3rebaser_rebase` accepted both and wrote a change whose key column is NULL, which
/// liteorm used to hand out as a trusted changeset; applying such a change made SQLite bind a
/// missing key value unchecked (see `UPDATE_WITH_UNDEFINED_OLD_KEY`). The output is now checked
/// like untrusted bytes.
const REBASE_BUFFER_FOR_NULL_KEY: &[u8] =
    b"T\x04\x02\x01\x00\x00wide\x00\x09\x00\x04\x01\x00\x02?\xe0\x00\x00\x00\x00\x00\x00\x03\x01\
z\x01\x7f\xff\xff\xff\xff\xff\xff\xffT\x14\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
\x00\x00\x00\x00\x00\x00\x00\x00many\x00\x09\x01\x01\x00\x00\x00\x00\x00\x00\x00\x01\x03\
\x05fi\x02?\xe1\x00\x00\x00\x00\x00\x00\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x03\
\x04last";
const LOCAL_CHANGES_REBASED_TO_A_NULL_KEY: &[u8] =
    b"T\x04\x01\x00\x00\x00t\x00\x17\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x03\x03one\x00\x00\
\x00\x03\x03uno\x00\x00\x17\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x04\x00\x00\
\x00\x00\x04\x01\xffT\x02\x01\x00kv\x00\x17\x00\x03\x01b\x03\x04text\x00\x03\x05text!T\x04\
\x02\x01\x00\x00wide\x00\x17\x00\x04\x01\x00\x02?\xe0\x00\x00\x00\x00\x00\x00\x03\x01z\x01\
\x7f\xff\xff\xff\xff\xff\xff\xff\x05\x00\x01\x00\x00\x00\x00\x00\x00\x00*\x01\x7f\xff\xff\
\xff\xff\xff\xff\xfeT\x14\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
\x00\x00\x00\x00many\x00\x17\x00\x01(\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\
\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x04last\x00\x00\x00\x00\x00\x00\x00\
\x03\x05seven\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05";

#[test]
fn a_rebase_that_would_write_a_null_key_is_an_error() {
    let buffer = liteorm_changeset::RebaseBuffer::from_bytes(REBASE_BUFFER_FOR_NULL_KEY).unwrap();
    let mut rebaser = liteorm_changeset::Rebaser::new().unwrap();
    rebaser.configure(&buffer).unwrap();
    // The local changes set `wide`'s key column to NULL in an UPDATE's new record: validation
    // now refuses them (see `an_update_that_sets_a_key_column_to_null_is_refused`), so they
    // never reach the rebaser, which still checks SQLite's output as untrusted bytes.
    match Changeset::from_bytes(LOCAL_CHANGES_REBASED_TO_A_NULL_KEY) {
        Err(Error::Invalid { reason, .. }) => assert!(reason.contains("NULL"), "{reason}"),
        other => panic!("expected the local changes to be refused, got {other:?}"),
    }
}

/// The input the `rebase` target found under LeakSanitizer on SQLite 3.51.3, split as the target
/// splits it (`split_pair`, at byte 115): resolutions whose `t` sections name the row `k = 1`
/// twice, first as an indirect DELETE (flag `0x20`), then as a direct one; and local changes.
///
/// `sqlite3rebaser_configure` leaked the first entry (72 bytes, allocated in
/// `sessionChangeMerge` ← `sessionOneChangeToHash` ← `sessionChangesetToHash`): see
/// `Rebaser::guard_leak` and `tests/repro/rebaser_configure_leak.c`.
const LEAKING_REBASE_BUFFER: &[u8] = b"T\x04\x01\x06\x00\x00\x8c\x00\x12\x00\x01\x00\x00\x00\
\x00\x00\x00\x00\x01\x03\x03uno\x00\x00T\x04\x01\x00\x00\x00t\x00\x09 \x01\x00\x00\x00\x00\x00\
\x00\x00\x01\x03\x03one\x02?\xf8\x00\x00\x00\x00\x00\x00\x04\x00\x12\x00\x01\x00\x00\x00\x04\
\x00\x00\x00\x01\x03\x03uno\x00\x00T\x04\x01\x00\x00\x00t\x00\x09\x00\x01\x00\x00\x00\x00\x00\
\x00\x00\x01\x03\x03one\x02?\xf8\x00\x00\x00\x00\x00\x00\x04\x01\x01";
const LOCAL_CHANGES_FOR_THE_LEAK: &[u8] =
    b"T\x03\x02\x01\x00pair\x00\x09\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x03\x01x\x05";

/// `t(k INTEGER PRIMARY KEY, v TEXT)`: a DELETE of `k = 1`, indirect or not.
fn delete_k1(indirect: bool) -> Vec<u8> {
    let mut out = vec![0x09, u8::from(indirect), 0x01];
    out.extend_from_slice(&1_i64.to_be_bytes());
    out.extend_from_slice(b"\x03\x01x");
    out
}

fn resolutions(changes: &[Vec<u8>]) -> liteorm_changeset::RebaseBuffer {
    let mut bytes = b"T\x02\x01\x00t\x00".to_vec();
    changes.iter().for_each(|c| bytes.extend_from_slice(c));
    liteorm_changeset::RebaseBuffer::from_bytes(bytes).unwrap()
}

/// Run under LeakSanitizer, this test failed before the guard (SQLite leaked an entry in
/// every configure below); without a sanitizer it failed too: SQLite dropped the indirect
/// DELETE it leaked, so the local UPDATE was rebased as if that resolution had never been
/// configured.
#[test]
fn rebaser_keeps_an_indirect_delete_named_again_and_leaks_nothing() {
    let mut rebaser = liteorm_changeset::Rebaser::new().unwrap();
    let buffer = liteorm_changeset::RebaseBuffer::from_bytes(LEAKING_REBASE_BUFFER).unwrap();
    rebaser.configure(&buffer).unwrap();
    let local = Changeset::from_bytes(LOCAL_CHANGES_FOR_THE_LEAK).unwrap();
    // Whatever the outcome of this rebase, it must end in a result or an error.
    let _ = rebaser.rebase(&local);

    // Local: UPDATE t SET v = 'y' WHERE k = 1.
    let mut update = b"T\x02\x01\x00t\x00\x17\x00\x01".to_vec();
    update.extend_from_slice(&1_i64.to_be_bytes());
    update.extend_from_slice(b"\x03\x01x\x00\x03\x01y");
    let local = Changeset::from_bytes(update).unwrap();
    let rebased_over = |buffers: &[liteorm_changeset::RebaseBuffer]| {
        let mut rebaser = liteorm_changeset::Rebaser::new().unwrap();
        for buffer in buffers {
            rebaser.configure(buffer).unwrap();
        }
        rebaser.rebase(&local).unwrap()
    };
    let once = rebased_over(&[resolutions(&[delete_k1(true)])]);
    assert_ne!(once.as_bytes(), local.as_bytes(), "the resolution matters");
    // The row named again in the same buffer, and in a later one (two applies).
    let in_one = rebased_over(&[resolutions(&[delete_k1(true), delete_k1(false)])]);
    let in_two = rebased_over(&[
        resolutions(&[delete_k1(true)]),
        resolutions(&[delete_k1(false)]),
    ]);
    assert_eq!(in_one.as_bytes(), once.as_bytes());
    assert_eq!(in_two.as_bytes(), once.as_bytes());
}

/// Found by the `invert` target: a REAL key column holding a NaN. SQLite cannot store a NaN (it
/// reads one as NULL), so its invert of an UPDATE keyed by a NaN wrote a NULL key, which liteorm
/// handed out as a trusted changeset (a NULL key is what made concat read out of bounds, see
/// `INSERT_WITH_NULL_KEY`). SQLite never writes a NaN into a changeset: refused on validation,
/// in every record that names a row, in both kinds and in both walks (streamed and whole).
#[tokio::test]
async fn a_nan_in_a_key_column_is_refused() {
    // t(k REAL PRIMARY KEY, v): an UPDATE keyed by NaN, an INSERT and a DELETE of key NaN.
    let nan = f64::NAN.to_be_bytes();
    let with_nan = |head: &[u8], tail: &[u8]| [head, &nan, tail].concat();
    let changesets = [
        with_nan(b"T\x02\x01\x00t\x00\x17\x00\x02", b"\x03\x01x\x00\x03\x01y"),
        with_nan(b"T\x02\x01\x00t\x00\x12\x00\x02", b"\x03\x01x"),
        with_nan(b"T\x02\x01\x00t\x00\x09\x00\x02", b"\x03\x01x"),
    ];
    for bytes in &changesets {
        let err = Changeset::from_bytes(bytes.clone()).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        let streamed =
            liteorm_changeset::stream::invert(std::io::Cursor::new(bytes.clone()), Vec::new())
                .await;
        assert!(streamed.is_err(), "{streamed:?}");
    }
    let err = Patchset::from_bytes(with_nan(b"P\x02\x01\x00t\x00\x09\x00\x02", b"")).unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
    // A NaN outside the key is SQLite's business (it stores NULL) and stays accepted.
    let value = with_nan(b"T\x02\x01\x00t\x00\x12\x00\x03\x01k\x02", b"");
    let cs = Changeset::from_bytes(value).unwrap();
    assert_eq!(cs.invert().unwrap().changes().unwrap().len(), 1);
}

/// Found by the `changegroup` target: an INSERT of `k = 10`, then an UPDATE whose new record sets
/// the key column to NULL. SQLite never writes that (it records a key change as a DELETE and an
/// INSERT), and a change group merging the two wrote an INSERT whose key is NULL (like the
/// rebaser did, see `a_rebase_that_would_write_a_null_key_is_an_error`). Refused on validation;
/// an undefined key in the new record stays the normal form.
#[test]
fn an_update_that_sets_a_key_column_to_null_is_refused() {
    // t(k INTEGER PRIMARY KEY, v): UPDATE old (k = 10, v = 'x'), new (k = NULL, v = 'y').
    let mut bytes = b"T\x02\x01\x00t\x00\x17\x00\x01".to_vec();
    bytes.extend_from_slice(&10_i64.to_be_bytes());
    bytes.extend_from_slice(b"\x03\x01x\x05\x03\x01y");
    let err = Changeset::from_bytes(bytes).unwrap_err();
    assert!(err.to_string().contains("NULL"), "{err}");
}
