//! The `diesel` workload: the capture mix written through Diesel 2.4 (`update`, `delete`, one
//! `insert_into(..).values(&row)` per inserted row) inside `liteorm_diesel::capture`, against
//! the same Diesel writes in a Diesel `immediate_transaction` (capture's own transaction is
//! `BEGIN IMMEDIATE` too) with no capture. Each rep runs both on fresh databases holding rows
//! `1..=N`, alternating which goes first; every figure is the median over reps, and the ratio
//! comes from the medians of the same run.

use std::time::Instant;

use diesel::connection::SimpleConnection;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use tempfile::TempDir;

use crate::common::{
    BenchResult, Common, DbMode, Fingerprint, Line, RowData, fingerprint, median, mix_inserts, ms,
    populate,
};
use crate::raw::with_diesel_handle;

diesel::table! {
    /// The benchmark table.
    t (id) {
        /// `id`.
        id -> BigInt,
        /// `a`.
        a -> Text,
        /// `b`.
        b -> BigInt,
        /// `c`.
        c -> Double,
        /// `d`.
        d -> Binary,
    }
}

/// One inserted row, as Diesel inserts it.
#[derive(Insertable)]
#[diesel(table_name = t)]
struct NewRow<'r> {
    id: i64,
    a: &'r str,
    b: i64,
    c: f64,
    d: &'r [u8],
}

/// The mix through Diesel's DSL on `conn` (the caller provides the transaction).
fn mix(conn: &mut SqliteConnection, inserts: &[RowData]) -> QueryResult<()> {
    diesel::update(t::table)
        .set(t::b.eq(t::b + 1))
        .execute(conn)?;
    diesel::delete(t::table.filter(sql::<Bool>("id % 10 = 0"))).execute(conn)?;
    for row in inserts {
        diesel::insert_into(t::table)
            .values(&NewRow {
                id: row.id,
                a: &row.a,
                b: row.b,
                c: row.c,
                d: &row.d,
            })
            .execute(conn)?;
    }
    Ok(())
}

/// A fresh Diesel connection holding rows `1..=n` (private `:memory:`, or a temp file with WAL
/// and `synchronous=NORMAL`), and the directory to remove afterwards.
fn fresh(mode: DbMode, n: i64) -> BenchResult<(SqliteConnection, Option<TempDir>)> {
    let (mut conn, dir) = match mode {
        DbMode::Mem => (SqliteConnection::establish(":memory:")?, None),
        DbMode::File => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("bench.db");
            let path = path.to_str().ok_or("temp path is not UTF-8")?;
            let mut conn = SqliteConnection::establish(path)?;
            conn.batch_execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL")?;
            (conn, Some(dir))
        }
    };
    with_diesel_handle(&mut conn, |db| populate(db, n))?;
    Ok((conn, dir))
}

/// One repetition: (plain ms, captured ms), with the content checks.
fn rep(mode: DbMode, n: i64, inserts: &[RowData], captured_first: bool) -> BenchResult<(f64, f64)> {
    let plain = |prints: &mut Vec<Fingerprint>| -> BenchResult<f64> {
        let (mut conn, _dir) = fresh(mode, n)?;
        let start = Instant::now();
        conn.immediate_transaction(|conn| mix(conn, inserts))?;
        let elapsed = ms(start.elapsed());
        prints.push(with_diesel_handle(&mut conn, fingerprint)?);
        Ok(elapsed)
    };
    let captured = |prints: &mut Vec<Fingerprint>| -> BenchResult<f64> {
        let (mut conn, _dir) = fresh(mode, n)?;
        let start = Instant::now();
        let changes = liteorm_diesel::capture(&mut conn, &["t"], |conn| {
            mix(conn, inserts)?;
            Ok::<_, liteorm_diesel::Error>(())
        })?;
        let elapsed = ms(start.elapsed());
        assert_eq!(
            changes.changes()?.len() as i64,
            n + n / 10,
            "content check failed: the changeset holds the mix"
        );
        prints.push(with_diesel_handle(&mut conn, fingerprint)?);
        Ok(elapsed)
    };
    let mut prints = Vec::new();
    let (plain_ms, captured_ms) = if captured_first {
        let c = captured(&mut prints)?;
        (plain(&mut prints)?, c)
    } else {
        let p = plain(&mut prints)?;
        (p, captured(&mut prints)?)
    };
    assert_eq!(
        prints[0], prints[1],
        "content check failed: with and without capture leave the same table"
    );
    Ok((plain_ms, captured_ms))
}

/// Runs the workload and prints its lines.
pub(crate) fn run(common: &Common, n: i64) -> BenchResult<()> {
    let inserts = mix_inserts(n);
    let (mut plain, mut captured, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..common.reps {
        let (p, c) = rep(common.db, n, &inserts, i % 2 == 1)?;
        plain.push(p);
        captured.push(c);
        floor.push(crate::capture::raw_session_cost(common.db, n, &inserts)?);
    }
    let (plain, captured, floor) = (median(&plain), median(&captured), median(&floor));
    let row_ops = (n + n / 10 + n / 10) as u64;
    let mut line = Line::new("diesel", "diesel", common);
    line.int("rows", n as u64)
        .int("row_ops", row_ops)
        .ms("plain_ms", plain)
        .ms("captured_ms", captured)
        .str(
            "plain",
            "Diesel immediate_transaction on a SqliteConnection",
        )
        .str(
            "captured",
            "liteorm_diesel::capture (BEGIN IMMEDIATE, changeset included)",
        )
        .str("content_checks", "passed");
    line.print();
    let mut ratio = Line::new("diesel", "ratio", common);
    ratio
        .int("rows", n as u64)
        .ratio("diesel_capture_ratio", captured / plain)
        .num("diesel_target", 1.10, 2)
        // SQLite's own session cost for this mix (raw calls), and the ratio once it is taken
        // out: what liteorm-diesel adds on top of the session extension.
        .ms("sqlite_session_ms", floor)
        .ratio("diesel_ratio_beyond_session", (captured - floor) / plain);
    ratio.print();
    Ok(())
}
