//! Streams: apply, invert, concat, merge and iterate changesets read from a `Read` and written
//! to a `Write`; the same results as the blob APIs, untrusted input checked on its way to
//! SQLite, and a 200 MB changeset applied in bounded memory (measured in a child process).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::process::Command;
use std::time::Instant;

use liteorm_changeset::{Capture, ConflictAction, Error, Patchset, apply, stream};
use liteorm_core::Session;
use liteorm_sqlite::SqliteSession;

use crate::support::{FailsAfter, Full, captured, cursor, dump, file_db, seed, trickle};

const MIX: &str = "UPDATE t SET name = 'one' WHERE id = 1; DELETE FROM t WHERE id = 2; \
                   INSERT INTO t VALUES (99, 'ninety-nine', 9.0, X'09')";

#[tokio::test]
async fn stream_invert_concat_and_merge_match_the_blob_apis_byte_for_byte() {
    let (db, _dir) = file_db().await;
    seed(&db, 20).await;
    let a = captured(&db, &["t"], MIX).await;
    let b = captured(
        &db,
        &["t"],
        "UPDATE t SET name = 'uno' WHERE id = 1; DELETE FROM t WHERE id > 15",
    )
    .await;
    let c = captured(&db, &["t"], "INSERT INTO t VALUES (2, 'two', 2.0, NULL)").await;

    let inverted = stream::invert(trickle(a.as_bytes()), Vec::new())
        .await
        .unwrap();
    assert_eq!(inverted, a.invert().unwrap().as_bytes());

    let concatenated = stream::concat(trickle(a.as_bytes()), cursor(b.as_bytes()), Vec::new())
        .await
        .unwrap();
    assert_eq!(concatenated, a.concat(&b).unwrap().as_bytes());

    let inputs: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|cs| trickle(cs.as_bytes()))
        .collect();
    let merged = stream::merge(inputs, Vec::new()).await.unwrap();
    let group = liteorm_changeset::Changegroup::merge([&a, &b, &c]).unwrap();
    assert_eq!(merged, group.as_bytes());
}

#[tokio::test]
async fn stream_apply_reports_what_blob_apply_reports() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    db.execute_batch(
        "CREATE TABLE gone(id INTEGER PRIMARY KEY); CREATE TABLE other(id INTEGER PRIMARY KEY)",
    )
    .await
    .unwrap();
    let cs = captured(
        &db,
        &[],
        "UPDATE t SET name = 'x' WHERE id < 3; INSERT INTO gone VALUES (1), (2); \
         INSERT INTO other VALUES (1); INSERT INTO t VALUES (5, 'conflict', 0.0, NULL)",
    )
    .await;
    let target = || async {
        let (target, dir) = file_db().await;
        seed(&target, 3).await;
        target
            .execute_batch(
                "CREATE TABLE other(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (5, 'mine', 0.0, NULL)",
            )
            .await
            .unwrap();
        (target, dir)
    };
    let (blob_target, _d1) = target().await;
    let (stream_target, _d2) = target().await;
    let from_blob = apply(&blob_target, &cs)
        .filter(|table| table != "other")
        .on_conflict(|_| ConflictAction::Replace)
        .await
        .unwrap();
    let from_stream = stream::apply(&stream_target, trickle(cs.as_bytes()))
        .filter(|table| table != "other")
        .on_conflict(|_| ConflictAction::Replace)
        .await
        .unwrap();
    assert_eq!(from_stream, from_blob);
    assert_eq!(from_stream.skipped_tables.len(), 1, "{from_stream:?}");
    assert_eq!(from_stream.filtered_tables, ["other"]);
    assert_eq!(from_stream.replaced, 1);
    assert_eq!(
        dump(&stream_target, "t").await,
        dump(&blob_target, "t").await
    );
}

#[tokio::test]
async fn a_truncated_stream_is_invalid_and_applies_nothing() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let cs = captured(&db, &["t"], MIX).await;
    apply(&db, &cs.invert().unwrap()).await.unwrap();
    let before = dump(&db, "t").await;
    let cut = cs.len() - 3;
    let err = stream::apply(&db, trickle(&cs.as_bytes()[..cut]))
        .await
        .unwrap_err();
    match &err {
        Error::Invalid {
            offset: Some(offset),
            reason,
            ..
        } => {
            assert_eq!(*offset, cut);
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(dump(&db, "t").await, before);
}

#[tokio::test]
async fn an_unterminated_table_name_is_an_error_not_a_hang() {
    // SQLite's stream reader spins forever once such input ends; the checker stops it first.
    let (db, _dir) = file_db().await;
    seed(&db, 1).await;
    for bytes in [&b"T\x01\x01abc"[..], b"T\x7f\x7f\x7f", b"T\x02\x01\x00"] {
        let err = stream::apply(&db, trickle(bytes)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Invalid {
                    offset: Some(_),
                    ..
                }
            ),
            "{err}"
        );
        let err = stream::invert(trickle(bytes), Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        let err = stream::merge([trickle(bytes)], Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        let last = stream::changes(trickle(bytes)).unwrap().last();
        assert!(matches!(last, Some(Err(Error::Invalid { .. }))), "{last:?}");
    }
}

#[tokio::test]
async fn reader_and_writer_errors_are_io_errors() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let cs = captured(&db, &["t"], MIX).await;
    apply(&db, &cs.invert().unwrap()).await.unwrap();
    let before = dump(&db, "t").await;
    let err = stream::apply(&db, FailsAfter(cs.as_bytes().to_vec(), 20))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.to_string() == "disk on fire"),
        "{err}"
    );
    assert_eq!(dump(&db, "t").await, before);

    let err = stream::invert(cursor(cs.as_bytes()), Full)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::StorageFull),
        "{err}"
    );
}

#[tokio::test]
async fn mixing_changesets_and_patchsets_in_a_stream_operation_is_a_misuse() {
    let (db, _dir) = file_db().await;
    seed(&db, 3).await;
    let cs = captured(&db, &["t"], "DELETE FROM t WHERE id = 1").await;
    let ps: Patchset = Capture::new(&db)
        .tables(["t"])
        .patchset(|s| async move {
            s.execute("DELETE FROM t WHERE id = 2", &[]).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let err = stream::concat(cursor(cs.as_bytes()), cursor(ps.as_bytes()), Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");
    let err = stream::merge([cursor(cs.as_bytes()), cursor(ps.as_bytes())], Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");
    let err = stream::invert(cursor(ps.as_bytes()), Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");
    let err = stream::apply(&db, cursor(ps.as_bytes()))
        .invert()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Misuse(_)), "{err}");
}

#[tokio::test]
async fn stream_changes_iterates_a_file() {
    let (db, dir) = file_db().await;
    seed(&db, 10).await;
    let cs = captured(&db, &["t"], MIX).await;
    let path = dir.path().join("cs.bin");
    std::fs::write(&path, cs.as_bytes()).unwrap();
    let from_file: Vec<_> = stream::changes(File::open(&path).unwrap())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(from_file, cs.changes().unwrap());
}

/// Rows and payload size of the big changeset: 210 000 inserts of about 1 KB, 203 MiB in all.
const BIG_ROWS: i64 = 210_000;
const BIG_PAYLOAD: usize = 1000;

/// Writes a changeset of `rows` inserts into `big(id INTEGER PRIMARY KEY, payload BLOB)`,
/// straight in SQLite's wire format, and returns its size.
fn write_big_changeset(path: &std::path::Path, rows: i64) -> u64 {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    // Table header: 'T', 2 columns, primary key flags (1, 0), name.
    out.write_all(b"T\x02\x01\x00big\x00").unwrap();
    let mut payload = vec![0u8; BIG_PAYLOAD];
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte = u8::try_from(i % 251).unwrap();
    }
    // The payload length as an SQLite varint (1000 = 0x87 0x68).
    let len = [
        0x80 | u8::try_from(BIG_PAYLOAD >> 7).unwrap(),
        u8::try_from(BIG_PAYLOAD & 0x7f).unwrap(),
    ];
    for id in 0..rows {
        // INSERT, direct; integer key (8 bytes big-endian); blob payload.
        out.write_all(&[0x12, 0x00, 0x01]).unwrap();
        out.write_all(&id.to_be_bytes()).unwrap();
        out.write_all(&[0x04]).unwrap();
        out.write_all(&len).unwrap();
        payload[..8].copy_from_slice(&id.to_le_bytes());
        out.write_all(&payload).unwrap();
    }
    out.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test]
async fn the_big_changeset_writer_writes_what_sqlite_records() {
    let (db, dir) = file_db().await;
    db.execute_batch("CREATE TABLE big(id INTEGER PRIMARY KEY, payload BLOB)")
        .await
        .unwrap();
    let path = dir.path().join("small.bin");
    write_big_changeset(&path, 3);
    let written = liteorm_changeset::Changeset::from_bytes(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(apply(&db, &written).await.unwrap().applied, 3);
    // SQLite's own record of inserting those rows: the inverse of deleting them.
    let deleted = captured(&db, &["big"], "DELETE FROM big").await;
    let mut recorded = deleted.invert().unwrap().changes().unwrap();
    let mut ours = written.changes().unwrap();
    recorded.sort_by_key(|c| c.primary_key()[0].to_string());
    ours.sort_by_key(|c| c.primary_key()[0].to_string());
    assert_eq!(ours, recorded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_changeset_applies_by_stream_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cs_path = dir.path().join("big.bin");
    let db_path = dir.path().join("big.db");
    let started = Instant::now();
    let size = write_big_changeset(&cs_path, BIG_ROWS);
    assert!(size >= 200 * 1024 * 1024, "{size} bytes");
    let db = SqliteSession::open(db_path.to_str().unwrap())
        .await
        .unwrap();
    db.execute_batch("CREATE TABLE big(id INTEGER PRIMARY KEY, payload BLOB)")
        .await
        .unwrap();
    drop(db);
    let generated = started.elapsed();

    // A fresh process, so that its peak resident memory is the apply's alone.
    let out = Command::new(env!("CARGO_BIN_EXE_stream_apply_rss"))
        .arg(&cs_path)
        .arg(&db_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let (baseline, peak) = (field("baseline_kib"), field("peak_kib"));
    assert_eq!(field("changes"), BIG_ROWS as u64);
    assert_eq!(field("applied"), BIG_ROWS as u64);
    eprintln!(
        "streamed apply of {} MiB: peak RSS {} MiB (baseline {} MiB) in {:.1?} (+{:.1?} to \
         generate)",
        size >> 20,
        peak >> 10,
        baseline >> 10,
        started.elapsed() - generated,
        generated
    );
    // Far below the changeset's size: a small fraction of it, whatever the baseline.
    assert!(
        peak * 1024 < size / 8,
        "peak RSS {peak} KiB for a {size}-byte changeset"
    );

    let db = SqliteSession::open(db_path.to_str().unwrap())
        .await
        .unwrap();
    let rows = db
        .query("SELECT count(*), sum(length(payload)) FROM big", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].try_get::<i64>(0).unwrap(), BIG_ROWS);
    assert_eq!(
        rows[0].try_get::<i64>(1).unwrap(),
        BIG_ROWS * BIG_PAYLOAD as i64
    );
}
