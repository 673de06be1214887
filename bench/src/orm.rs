//! The `orm` workload: the capture mix written the way an app's own data layer writes it.
//!
//! SeaORM (`update_many`, `delete_many`, one `ActiveModel::insert` per row) inside
//! `liteorm_seaorm::record` against the same SeaORM writes in a SeaORM transaction on the app's
//! `DatabaseConnection` (no capture); and sqlx queries (`sqlx::query(..).bind(..)`) inside
//! `liteorm_changeset::capture` against the same queries on a pool connection in a sqlx
//! transaction. Each rep runs the four on fresh databases holding rows `1..=N`; every figure is
//! the median over reps, and the ratios come from the medians of the same run.

use std::time::{Duration, Instant};

use liteorm_replication::{ChangeLog, Meta};
use liteorm_seaorm::SeaSession;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    TransactionTrait,
};
use tokio::runtime::Runtime;

use crate::common::{
    BenchResult, Common, Fingerprint, INSERT, Line, MIX_DELETE, MIX_UPDATE, RowData, fingerprint,
    median, mix_inserts, ms,
};
use crate::lite::LiteDb;

/// The benchmark table as a SeaORM entity.
#[allow(unreachable_pub)] // `DeriveEntityModel` generates public items.
mod t {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "t")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub a: String,
        pub b: i64,
        pub c: f64,
        pub d: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One repetition's four timings, in milliseconds.
struct Rep {
    seaorm_plain: f64,
    seaorm_record: f64,
    seaorm_capture: f64,
    sqlx_plain: f64,
    sqlx_capture: f64,
    /// What SQLite's session extension adds to the same mix (raw calls): the part of the
    /// recorded figures that no wrapper can remove.
    session_floor: f64,
}

/// The mix through SeaORM on `conn` (the caller provides the transaction).
async fn seaorm_mix(
    conn: &impl ConnectionTrait,
    inserts: &[RowData],
) -> Result<(), sea_orm::DbErr> {
    t::Entity::update_many()
        .col_expr(t::Column::B, Expr::col(t::Column::B).add(1))
        .exec(conn)
        .await?;
    t::Entity::delete_many()
        .filter(Expr::col(t::Column::Id).modulo(10).eq(0))
        .exec(conn)
        .await?;
    for row in inserts {
        t::ActiveModel {
            id: Set(row.id),
            a: Set(row.a.clone()),
            b: Set(row.b),
            c: Set(row.c),
            d: Set(row.d.to_vec()),
        }
        .insert(conn)
        .await?;
    }
    Ok(())
}

/// The mix through sqlx queries on `$executor` (an expression giving a fresh executor each
/// time: `&mut *tx` or `&s`); the caller provides the transaction.
macro_rules! sqlx_mix {
    ($executor:expr, $inserts:expr) => {
        async {
            sqlx::query(MIX_UPDATE).execute($executor).await?;
            sqlx::query(MIX_DELETE).execute($executor).await?;
            for row in $inserts {
                sqlx::query(INSERT)
                    .bind(row.id)
                    .bind(&row.a)
                    .bind(row.b)
                    .bind(row.c)
                    .bind(&row.d[..])
                    .execute($executor)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
    };
}

/// A fresh database with rows `1..=n`, and the sqlx pool behind it free for direct use.
async fn fresh(common: &Common, n: i64) -> BenchResult<LiteDb> {
    let db = LiteDb::populated(common.db, n).await?;
    // liteorm keeps the connection of its setup for a few ms (its linger): let it go back to
    // the pool so that the baselines, which use the pool directly, do not wait for it.
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok(db)
}

async fn finish(db: LiteDb) -> BenchResult<Fingerprint> {
    let print = db.with_raw(fingerprint).await?;
    db.close().await;
    Ok(print)
}

async fn rep(common: &Common, n: i64, inserts: &[RowData]) -> BenchResult<(Rep, [Fingerprint; 4])> {
    // SeaORM in its own transaction, no capture.
    let db = fresh(common, n).await?;
    let orm = DatabaseConnection::from(db.session.pool().ok_or("no pool")?.clone());
    let start = Instant::now();
    let tx = orm.begin().await?;
    seaorm_mix(&tx, inserts).await?;
    tx.commit().await?;
    let seaorm_plain = ms(start.elapsed());
    let print_seaorm_plain = finish(db).await?;

    // SeaORM inside `record`.
    let db = fresh(common, n).await?;
    let log = ChangeLog::open(&db.session).await?;
    let start = Instant::now();
    let seq = liteorm_seaorm::record(&log, Meta::actor("bench"), |conn: SeaSession| async move {
        seaorm_mix(&conn, inserts).await?;
        Ok::<_, liteorm_seaorm::Error>(())
    })
    .await?;
    let seaorm_record = ms(start.elapsed());
    let ops = log
        .entry(seq.ok_or("nothing recorded")?)
        .await?
        .changeset
        .changes()?
        .len();
    assert_eq!(
        ops as i64,
        n + n / 10,
        "content check failed: the log entry holds the mix"
    );
    let print_seaorm_record = finish(db).await?;

    // SeaORM inside a bare capture (no log entry): the record figure without the log's part.
    let db = fresh(common, n).await?;
    let start = Instant::now();
    let changes = liteorm_seaorm::capture(&db.session, &["t"], |conn| async move {
        seaorm_mix(&conn, inserts).await?;
        Ok::<_, liteorm_seaorm::Error>(())
    })
    .await?;
    let seaorm_capture = ms(start.elapsed());
    assert_eq!(
        changes.changes()?.len() as i64,
        n + n / 10,
        "content check failed: the changeset holds the mix"
    );
    let print_seaorm_capture = finish(db).await?;
    assert_eq!(
        print_seaorm_capture, print_seaorm_record,
        "content check failed: capture and record leave the same table"
    );

    // sqlx on a pool connection in a sqlx transaction.
    let db = fresh(common, n).await?;
    let pool = db.session.pool().ok_or("no pool")?.clone();
    let start = Instant::now();
    let mut tx = pool.begin().await?;
    sqlx_mix!(&mut *tx, inserts).await?;
    tx.commit().await?;
    let sqlx_plain = ms(start.elapsed());
    drop(pool);
    let print_sqlx_plain = finish(db).await?;

    // sqlx inside `capture`.
    let db = fresh(common, n).await?;
    let start = Instant::now();
    let changes = liteorm_changeset::capture(&db.session, &["t"], |s| async move {
        sqlx_mix!(&s, inserts).await.map_err(|e| {
            liteorm_changeset::Error::Session(liteorm_core::Error::Driver(Box::new(e)))
        })
    })
    .await?;
    let sqlx_capture = ms(start.elapsed());
    assert_eq!(
        changes.changes()?.len() as i64,
        n + n / 10,
        "content check failed: the changeset holds the mix"
    );
    let print_sqlx_capture = finish(db).await?;

    Ok((
        Rep {
            seaorm_plain,
            seaorm_record,
            seaorm_capture,
            sqlx_plain,
            sqlx_capture,
            session_floor: crate::capture::raw_session_cost(common.db, n, inserts)?,
        },
        [
            print_seaorm_plain,
            print_seaorm_record,
            print_sqlx_plain,
            print_sqlx_capture,
        ],
    ))
}

/// Runs the workload and prints its lines.
pub(crate) fn run(rt: &Runtime, common: &Common, n: i64) -> BenchResult<()> {
    let inserts = mix_inserts(n);
    let mut reps = Vec::new();
    for _ in 0..common.reps {
        let (rep, prints) = rt.block_on(rep(common, n, &inserts))?;
        assert!(
            prints.iter().all(|p| *p == prints[0]),
            "content check failed: the four ways of writing the mix leave the same table"
        );
        reps.push(rep);
    }
    let med = |f: fn(&Rep) -> f64| median(&reps.iter().map(f).collect::<Vec<_>>());
    let row_ops = (n + n / 10 + n / 10) as u64;
    let (seaorm_plain, seaorm_record) = (med(|r| r.seaorm_plain), med(|r| r.seaorm_record));
    let (sqlx_plain, sqlx_capture) = (med(|r| r.sqlx_plain), med(|r| r.sqlx_capture));
    let floor = med(|r| r.session_floor);
    let mut seaorm = Line::new("orm", "seaorm", common);
    seaorm
        .int("rows", n as u64)
        .int("row_ops", row_ops)
        .ms("plain_ms", seaorm_plain)
        .ms("recorded_ms", seaorm_record)
        .ms("captured_ms", med(|r| r.seaorm_capture))
        .str("plain", "SeaORM transaction on the DatabaseConnection")
        .str("recorded", "liteorm_seaorm::record (capture + log entry)")
        .str(
            "captured",
            "liteorm_seaorm::capture (changeset included, no log)",
        )
        .str("content_checks", "passed");
    seaorm.print();
    let mut sqlx = Line::new("orm", "sqlx", common);
    sqlx.int("rows", n as u64)
        .int("row_ops", row_ops)
        .ms("plain_ms", sqlx_plain)
        .ms("recorded_ms", sqlx_capture)
        .str("plain", "sqlx transaction on a pool connection")
        .str(
            "recorded",
            "liteorm_changeset::capture (changeset included)",
        )
        .str("content_checks", "passed");
    sqlx.print();
    let mut ratio = Line::new("orm", "ratio", common);
    ratio
        .int("rows", n as u64)
        .ratio("seaorm_record_ratio", seaorm_record / seaorm_plain)
        .num("seaorm_target", 1.15, 2)
        .ratio("sqlx_capture_ratio", sqlx_capture / sqlx_plain)
        .num("sqlx_target", 1.10, 2)
        // SQLite's own session cost for this mix, and the ratios once it is taken out: what
        // liteorm and the ORM layer add on top of the session extension.
        .ms("sqlite_session_ms", floor)
        .ratio(
            "seaorm_ratio_beyond_session",
            (seaorm_record - floor) / seaorm_plain,
        )
        .ratio(
            "sqlx_ratio_beyond_session",
            (sqlx_capture - floor) / sqlx_plain,
        );
    ratio.print();
    Ok(())
}
