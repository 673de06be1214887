//! A SeaORM 2 app with an audit log: entity writes recorded with `liteorm_seaorm::record`, the
//! audit trail shown with the entities' column names, a change reverted, and a replica brought
//! up to date.
//!
//! Run with `cargo run -p liteorm-seaorm --example seaorm_audit [DIR]` (files go to DIR, default
//! a fresh temporary directory).

use liteorm_changeset::ColumnNames;
use liteorm_replication::{ChangeLog, ConflictPolicy, LogFilter, LogTableSource, Meta, Replica};
use liteorm_seaorm::{EntityColumns, Error};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{Database, DatabaseConnection, QueryOrder, Schema};

#[allow(unreachable_pub)] // `DeriveEntityModel` needs public items.
mod account {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "account")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub owner: String,
        pub balance: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(has_many = "super::payment::Entity")]
        Payment,
    }

    impl Related<super::payment::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Payment.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

#[allow(unreachable_pub)]
mod payment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "payment")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub account_id: i64,
        pub amount: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(
            belongs_to = "super::account::Entity",
            from = "Column::AccountId",
            to = "super::account::Column::Id"
        )]
        Account,
    }

    impl Related<super::account::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Account.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// Opens (creating) a database file with the app's tables.
async fn open(path: &std::path::Path) -> Result<DatabaseConnection, Error> {
    let db = Database::connect(format!("sqlite://{}?mode=rwc", path.display())).await?;
    db.execute_unprepared("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON")
        .await?;
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(account::Entity))
        .await?;
    db.execute(&schema.create_table_from_entity(payment::Entity))
        .await?;
    Ok(db)
}

/// Pays `amount` from `from` to `to`: two balance updates and a payment row, one unit of work.
async fn pay(conn: &impl ConnectionTrait, from: i64, to: i64, amount: i64) -> Result<(), DbErr> {
    for (id, delta) in [(from, -amount), (to, amount)] {
        account::Entity::update_many()
            .col_expr(
                account::Column::Balance,
                Expr::col(account::Column::Balance).add(delta),
            )
            .filter(account::Column::Id.eq(id))
            .exec(conn)
            .await?;
    }
    payment::ActiveModel {
        account_id: Set(from),
        amount: Set(amount),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(())
}

async fn accounts(db: &DatabaseConnection) -> Result<Vec<account::Model>, DbErr> {
    account::Entity::find()
        .order_by_asc(account::Column::Id)
        .all(db)
        .await
}

async fn show(title: &str, db: &DatabaseConnection) -> Result<(), DbErr> {
    println!("{title}:");
    for a in accounts(db).await? {
        println!("  {:>2} {:<6} {:>4}", a.id, a.owner, a.balance);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The databases stay in a directory given as the argument (to look at them afterwards, with
    // the CLI for instance); otherwise in a temporary one, removed at the end.
    let temp;
    let dir = match std::env::args().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let (app_path, replica_path) = (dir.join("app.db"), dir.join("replica.db"));
    for path in [&app_path, &replica_path] {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    let db = open(&app_path).await?;
    let session = liteorm_seaorm::sqlite_session(&db).await?;
    let log = ChangeLog::open(&session).await?;

    // 1. The app's SeaORM code, run inside `record`: each unit of work is captured and logged
    //    in the same transaction as the data.
    liteorm_seaorm::record(
        &log,
        Meta::actor("ada").reason("open accounts"),
        |conn| async move {
            account::Entity::insert_many([
                account::ActiveModel {
                    id: Set(1),
                    owner: Set("ada".into()),
                    balance: Set(100),
                },
                account::ActiveModel {
                    id: Set(2),
                    owner: Set("bob".into()),
                    balance: Set(50),
                },
            ])
            .exec(&conn)
            .await?;
            Ok::<_, Error>(())
        },
    )
    .await?;
    liteorm_seaorm::record(
        &log,
        Meta::actor("ada").reason("pay bob"),
        |conn| async move {
            pay(&conn, 1, 2, 30).await?;
            Ok::<_, Error>(())
        },
    )
    .await?;
    liteorm_seaorm::record(
        &log,
        Meta::actor("bob").reason("rename"),
        |conn| async move {
            let mut bob: account::ActiveModel = account::Entity::find_by_id(2)
                .one(&conn)
                .await?
                .ok_or(DbErr::RecordNotFound("account 2".into()))?
                .into();
            bob.owner = Set("robert".into());
            bob.update(&conn).await?;
            Ok::<_, Error>(())
        },
    )
    .await?;
    show("accounts", &db).await?;

    // 2. The audit trail, each change as SQL with the entities' column names.
    let names = ColumnNames::new()
        .entity::<account::Entity>()
        .entity::<payment::Entity>();
    println!("\naudit trail:");
    for entry in log.entries(&LogFilter::all()).await? {
        println!(
            "  #{} {} ({})",
            entry.seq,
            entry.actor.as_deref().unwrap_or("-"),
            entry.reason.as_deref().unwrap_or("-")
        );
        let mut changes: Vec<String> = entry
            .changeset
            .changes()?
            .iter()
            .map(|c| c.to_sql(&names))
            .collect();
        changes.sort();
        for sql in changes {
            println!("      {sql}");
        }
    }

    // 3. Revert the payment: the inverse is applied and logged as an entry of its own.
    let reverted = log
        .revert(
            2,
            ConflictPolicy::abort(),
            Meta::actor("ops").reason("refund"),
        )
        .await?;
    println!("\nreverted #2 as #{}", reverted.logged_as.unwrap_or(0));
    show("accounts", &db).await?;

    // 4. A replica (another file) catches up from the log.
    let replica_db = open(&replica_path).await?;
    let replica = Replica::open(&liteorm_seaorm::sqlite_session(&replica_db).await?).await?;
    let done = replica.catch_up(&mut LogTableSource::new(&session)).await?;
    println!(
        "\nreplica applied {} entries, at seq {}",
        done.applied, done.last_seq
    );
    show("replica accounts", &replica_db).await?;
    assert_eq!(accounts(&db).await?, accounts(&replica_db).await?);
    Ok(())
}
