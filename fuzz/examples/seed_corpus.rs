//! Writes the fuzz seed corpus: real changesets and patchsets that liteorm captures on
//! `liteorm_fuzz::SCHEMA`, into `fuzz/corpus/<target>/`.
//!
//! Run it from the repository root after changing the schema or the scripts below:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus
//! ```
//!
//! Seeds are named `seed-*` and rewritten each run; files the fuzzer added (named by their hash)
//! are left alone. Every seed is run through its target's check before it is written.

use std::path::Path;

use liteorm_changeset::{Capture, Changeset, ConflictAction, ConflictKind, Patchset};
use liteorm_core::Session;
use liteorm_fuzz::{ApplyTarget, BASE_ROWS, SCHEMA, join_pair};
use liteorm_sqlite::SqliteSession;

/// Scripts captured one by one on a fresh copy of the base rows.
const SCRIPTS: &[(&str, &str)] = &[
    (
        "insert-all-types",
        "INSERT INTO t VALUES (10, 'ten', 2.25, x'0a'), (11, NULL, NULL, NULL), (12, '', 0.0, x''),
            (-9223372036854775808, 'min', -1e-308, zeroblob(3)),
            (9223372036854775807, 'ünïcødé ✓ 🦀', 1e300, x'00');
         INSERT INTO kv VALUES ('int', -1), ('real', 0.1), ('text', ''), ('blob', x''),
            ('null', NULL), (x'6b', 'a blob key');",
    ),
    (
        "update-columns",
        "UPDATE t SET name = 'uno' WHERE id = 1;
         UPDATE t SET score = NULL, data = x'ff' WHERE id = 2;
         UPDATE kv SET v = v || '!' WHERE k = 'b';
         UPDATE wide SET z = 42, w = w - 1 WHERE y = 0.5;
         UPDATE many SET c7 = 'seven', c19 = NULL WHERE c0 = 1;",
    ),
    (
        "delete-rows",
        "DELETE FROM t WHERE id = 3; DELETE FROM kv WHERE k = '';
         DELETE FROM pair WHERE b = 'x' AND a = 2; DELETE FROM wide WHERE x = x'';",
    ),
    (
        "change-primary-keys",
        "UPDATE t SET id = 100 WHERE id = 4; UPDATE kv SET k = 'z' WHERE k = 'a';
         UPDATE pair SET a = 5 WHERE b = 'y'; UPDATE wide SET y = 2.5 WHERE x = x'00';",
    ),
    (
        "cascade-and-constraints",
        "INSERT INTO parent VALUES (3, 'p3'); INSERT INTO child VALUES (3, 3, 1, 'c3');
         UPDATE child SET qty = qty + 1; DELETE FROM parent WHERE id = 2;",
    ),
    (
        "replace-and-upsert",
        "INSERT OR REPLACE INTO kv VALUES ('a', 'replaced'), ('new', x'00');
         INSERT INTO t VALUES (1, 'upserted', 0.0, NULL)
            ON CONFLICT(id) DO UPDATE SET name = excluded.name;",
    ),
    (
        "many-rows",
        "WITH RECURSIVE n(i) AS (SELECT 20 UNION ALL SELECT i + 1 FROM n WHERE i < 60)
         INSERT INTO t SELECT i, 'r' || i, i * 0.5, zeroblob(i % 5) FROM n;",
    ),
    (
        "long-values",
        "INSERT INTO kv VALUES ('long', printf('%.300c', 'x')), ('blob', zeroblob(200));
         UPDATE t SET data = zeroblob(1000) WHERE id = 1;",
    ),
    (
        "wide-row",
        "INSERT INTO many VALUES (3, 1, 2.5, 'three', x'03', NULL, -1, 0.0, '', x'', 10, 11, 12,
            13, 14, 15, 16, 17, 18, 19);
         UPDATE many SET c1 = c1 + 1, c10 = 'ten' WHERE c0 = 2;",
    ),
    (
        "special-reals",
        "INSERT INTO wide VALUES (x'01', 1e999, 'inf', 0), (x'02', -1e999, '-inf', 1),
            (x'03', 4.9e-324, 'subnormal', 2), (x'04', -0.0, 'negative zero', 3);",
    ),
    (
        "update-and-delete-all",
        "UPDATE pair SET note = 'all'; DELETE FROM wide; DELETE FROM many;",
    ),
    (
        "insert-then-delete",
        "INSERT INTO t VALUES (50, 'gone', NULL, NULL); DELETE FROM t WHERE id = 50;
         UPDATE kv SET v = 2 WHERE k = 'a'; UPDATE kv SET v = 1 WHERE k = 'a';
         UPDATE t SET name = 'x' WHERE id = 2;",
    ),
];

/// Pairs of scripts captured one after the other on the same database, for `concat`: the second
/// touches rows the first changed, so the two merge.
const PAIRS: &[(&str, &str, &str)] = &[
    (
        "insert-then-update",
        "INSERT INTO t VALUES (10, 'ten', 1.0, NULL); INSERT INTO kv VALUES ('n', 1);",
        "UPDATE t SET name = 'TEN', data = x'10' WHERE id = 10; UPDATE kv SET v = 2 WHERE k = 'n';
         UPDATE t SET score = 9.5 WHERE id = 1;",
    ),
    (
        "update-then-delete",
        "UPDATE t SET name = 'a' WHERE id = 1; UPDATE pair SET note = 'b' WHERE a = 1;",
        "DELETE FROM t WHERE id = 1; DELETE FROM pair WHERE b = 'x';",
    ),
    (
        "delete-then-reinsert",
        "DELETE FROM kv WHERE k = 'b'; DELETE FROM wide WHERE x = x'00';",
        "INSERT INTO kv VALUES ('b', 'text'); INSERT INTO wide VALUES (x'00', 0.5, 'other', 1);",
    ),
    (
        "insert-then-delete",
        "INSERT INTO t VALUES (7, 'seven', NULL, NULL); INSERT INTO parent VALUES (9, 'p9');",
        "DELETE FROM t WHERE id = 7; UPDATE parent SET label = 'p9!' WHERE id = 9;",
    ),
    (
        "update-then-update-back",
        "UPDATE many SET c5 = 'five', c6 = 6 WHERE c0 = 1;",
        "UPDATE many SET c5 = NULL WHERE c0 = 1; UPDATE many SET c2 = 'two' WHERE c0 = 2;",
    ),
];

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn base() -> Result<SqliteSession, Error> {
    let db = SqliteSession::open_in_memory().await?;
    db.execute_batch(SCHEMA).await?;
    db.execute_batch(BASE_ROWS).await?;
    Ok(db)
}

async fn changeset(db: &SqliteSession, sql: &'static str) -> Result<Changeset, Error> {
    let cs = Capture::new(db)
        .changeset(|s| async move {
            s.execute_batch(sql).await?;
            Ok::<_, liteorm_changeset::Error>(())
        })
        .await?;
    Ok(cs)
}

async fn patchset(db: &SqliteSession, sql: &'static str) -> Result<Patchset, Error> {
    let ps = Capture::new(db)
        .patchset(|s| async move {
            s.execute_batch(sql).await?;
            Ok::<_, liteorm_changeset::Error>(())
        })
        .await?;
    Ok(ps)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

type Seeds = Vec<(String, Vec<u8>)>;

/// A real change log that recorded every script (with metadata that needs escaping), reverted
/// one entry, rolled back to another and migrated the schema: its rows (every column, in table
/// order) and entries.
async fn log_seed_data()
-> Result<(Vec<liteorm_core::Row>, Vec<liteorm_replication::LogEntry>), Error> {
    use liteorm_replication::{ChangeLog, ConflictPolicy, LogFilter, Meta};

    let db = base().await?;
    let log = ChangeLog::open(&db).await?;
    for (i, (name, sql)) in SCRIPTS.iter().enumerate() {
        let meta = Meta::actor(format!("writer {i}")).reason(format!("{name}, 100% ✓"));
        // Scripts written for the base rows may fail on the rows earlier ones left: those
        // record nothing, the others go on.
        let _ = log
            .record(meta, |s| async move {
                s.execute_batch(sql).await?;
                Ok::<_, liteorm_replication::Error>(())
            })
            .await;
    }
    // The last entry reverted, then the revert rolled back: both apply cleanly.
    let last = log.last_seq().await?;
    log.revert(last, ConflictPolicy::abort(), Meta::default())
        .await?;
    log.rollback_to(last, ConflictPolicy::abort(), Meta::actor("auditor"))
        .await?;
    // A schema entry: its payload is SQL, with a literal that holds a `;`.
    log.migrate(
        Meta::actor("dba").reason("v2: notes"),
        "ALTER TABLE t ADD COLUMN note TEXT DEFAULT 'n/a; none'; CREATE INDEX t_note ON t(note)",
    )
    .await?;
    let rows = db
        .query("SELECT * FROM liteorm_changes ORDER BY seq", &[])
        .await?;
    Ok((rows, log.entries(&LogFilter::all()).await?))
}

/// Writes the `log_row` seeds (one row each) and the `nats_message` seeds (each entry as the
/// publisher sends it, `framed-entry-<seq>`, and in the header format that streams written
/// before version 4 hold, `entry-<seq>`); returns how many entries.
fn write_log_seeds(
    rows: &[liteorm_core::Row],
    entries: &[liteorm_replication::LogEntry],
    log_rows: &Path,
    messages: &Path,
) -> Result<usize, Error> {
    use liteorm_fuzz::log_row::{Field, LogRowTarget, Values};
    use liteorm_fuzz::nats_message;

    let target = LogRowTarget::new();
    for (i, row) in rows.iter().enumerate() {
        let fields: Vec<Field> = (0..target.columns().len())
            .map(|c| Field {
                value: row.get(c).cloned().unwrap_or(liteorm_core::Value::Null),
                as_text: false,
            })
            .collect();
        let seed = [&[0_u8][..], &Values::encode(&fields)].concat();
        target.check(&seed);
        write(log_rows, &format!("row-{}", i + 1), &seed)?;
    }
    for entry in entries {
        let formats = [
            ("framed-entry", liteorm_nats::fuzzing::encode(entry)),
            ("entry", liteorm_nats::fuzzing::encode_headers(entry)),
        ];
        for (name, (headers, payload)) in formats {
            let block = nats_message::header_block(&headers);
            let seed = join_pair(false, &block, &payload).ok_or("seed too large")?;
            // Byte 0 is the stream seq.
            let seed = [&[u8::try_from(entry.seq).unwrap_or(1)][..], &seed[1..]].concat();
            nats_message::check(&seed);
            write(messages, &format!("{name}-{}", entry.seq), &seed)?;
        }
    }
    Ok(entries.len())
}

/// Captures every seed: single changesets/patchsets, and concat pairs.
async fn capture_seeds() -> Result<(Seeds, Seeds), Error> {
    let mut singles: Seeds = Vec::new();
    for (name, sql) in SCRIPTS {
        let cs = changeset(&base().await?, sql).await?;
        let ps = patchset(&base().await?, sql).await?;
        assert!(!cs.is_empty() && !ps.is_empty(), "{name} recorded nothing");
        singles.push((format!("cs-{name}"), cs.as_bytes().to_vec()));
        singles.push((format!("ps-{name}"), ps.as_bytes().to_vec()));
        singles.push((
            format!("cs-inverse-{name}"),
            cs.invert()?.as_bytes().to_vec(),
        ));
    }
    let mut pairs: Seeds = Vec::new();
    for (name, first, second) in PAIRS {
        let db = base().await?;
        let (a, b) = (changeset(&db, first).await?, changeset(&db, second).await?);
        let db = base().await?;
        let (pa, pb) = (patchset(&db, first).await?, patchset(&db, second).await?);
        let joined = |patch, x: &[u8], y: &[u8]| join_pair(patch, x, y).ok_or("seed too large");
        pairs.push((
            format!("cs-{name}"),
            joined(false, a.as_bytes(), b.as_bytes())?,
        ));
        pairs.push((
            format!("ps-{name}"),
            joined(true, pa.as_bytes(), pb.as_bytes())?,
        ));
        let both = a.concat(&b)?;
        singles.push((format!("cs-concat-{name}"), both.as_bytes().to_vec()));
    }
    // Captures skip tables without a primary key; a blob can still name one (no key flags).
    let no_key = b"T\x02\x00\x00nopk\x00\x12\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x03\x01y";
    singles.push(("cs-table-without-key".to_owned(), no_key.to_vec()));
    // Every single seed is also one half of a concat with itself (same rows twice).
    for (name, bytes) in &singles {
        let patch = name.starts_with("ps-");
        let joined = join_pair(patch, bytes, bytes).ok_or("seed too large")?;
        pairs.push((format!("{name}-twice"), joined));
    }
    Ok((singles, pairs))
}

/// Rebase seeds: for each pair of scripts, the rebase buffer of applying the second (captured
/// on the base rows) onto the base rows with the first applied, resolving conflicts by turns
/// with `Omit` and `Replace`, joined with the first's changeset. Only non-empty buffers.
async fn rebase_seeds() -> Result<Seeds, Error> {
    let mut seeds: Seeds = Vec::new();
    let scripts: Vec<(&str, &'static str)> = PAIRS
        .iter()
        .flat_map(|(name, first, second)| [(*name, *first), (*name, *second)])
        .chain(SCRIPTS.iter().copied())
        .collect();
    for (i, (local_name, local_sql)) in scripts.iter().enumerate() {
        for (remote_name, remote_sql) in scripts.iter().skip(i + 1) {
            // The second script of a pair may need the first (then it fails on the base rows).
            let (Ok(local), Ok(remote)) = (
                changeset(&base().await?, local_sql).await,
                changeset(&base().await?, remote_sql).await,
            ) else {
                continue;
            };
            let target = base().await?;
            if liteorm_changeset::apply(&target, &local).await.is_err() {
                continue;
            }
            let mut turn = 0_usize;
            let Ok(report) = liteorm_changeset::apply(&target, &remote)
                .on_conflict(move |conflict| {
                    turn += 1;
                    match conflict.kind {
                        ConflictKind::Data | ConflictKind::Conflict if turn.is_multiple_of(2) => {
                            ConflictAction::Replace
                        }
                        _ => ConflictAction::Omit,
                    }
                })
                .await
            else {
                continue;
            };
            if report.rebase.is_empty() {
                continue;
            }
            let joined = join_pair(false, report.rebase.as_bytes(), local.as_bytes())
                .ok_or("seed too large")?;
            seeds.push((format!("{local_name}-over-{remote_name}"), joined));
        }
    }
    Ok(seeds)
}

fn main() -> Result<(), Error> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let target = |name: &str| corpus.join(name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (singles, pairs) = runtime.block_on(capture_seeds())?;
    let rebases = runtime.block_on(rebase_seeds())?;
    let (log_rows, log_entries) = runtime.block_on(log_seed_data())?;
    drop(runtime);
    // The apply target has a runtime of its own, so it is made after the one above is gone.
    let apply = ApplyTarget::new();
    for (name, bytes) in &singles {
        liteorm_fuzz::check_validate(bytes);
        liteorm_fuzz::check_invert(bytes);
        apply.check(bytes);
        write(&target("validate"), name, bytes)?;
        write(&target("apply"), name, bytes)?;
        if name.starts_with("cs-") {
            write(&target("invert"), name, bytes)?;
        }
    }
    for (name, bytes) in &pairs {
        liteorm_fuzz::check_concat(bytes);
        write(&target("concat"), name, bytes)?;
    }
    // Small corpora for the newer targets: the pairs, the second added whole and filtered
    // (flag bits 1 and 2); every single through each streaming operation, in 7-byte reads.
    let mut extra = (0, 0, 0);
    for (name, bytes) in pairs.iter().filter(|(name, _)| !name.ends_with("-twice")) {
        for flags in [0, 2, 6] {
            let mut seed = bytes.clone();
            seed[0] |= flags;
            liteorm_fuzz::check_changegroup(&seed);
            write(&target("changegroup"), &format!("{name}-{flags}"), &seed)?;
            extra.0 += 1;
        }
        let seed = [&[2_u8, 7][..], bytes].concat();
        apply.check_stream(&seed);
        write(&target("stream"), &format!("concat-{name}"), &seed)?;
        extra.1 += 1;
    }
    for (name, bytes) in singles
        .iter()
        .filter(|(name, _)| !name.starts_with("cs-inverse-"))
    {
        for (op, label) in [(0_u8, "apply"), (1, "invert")] {
            if op == 1 && !name.starts_with("cs-") {
                continue;
            }
            let seed = [&[op, 7][..], bytes].concat();
            apply.check_stream(&seed);
            write(&target("stream"), &format!("{label}-{name}"), &seed)?;
            extra.1 += 1;
        }
    }
    for (name, bytes) in &rebases {
        liteorm_fuzz::check_rebase(bytes);
        write(&target("rebase"), name, bytes)?;
        extra.2 += 1;
    }
    let written = write_log_seeds(
        &log_rows,
        &log_entries,
        &target("log_row"),
        &target("nats_message"),
    )?;
    println!("wrote {written} log_row and nats_message seeds");
    println!(
        "wrote {} changegroup, {} stream and {} rebase seeds",
        extra.0, extra.1, extra.2
    );
    println!(
        "wrote {} single seeds and {} concat seeds under {}",
        singles.len(),
        pairs.len(),
        corpus.display()
    );
    Ok(())
}
