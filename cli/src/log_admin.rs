//! `log migrate` and `log prune`: schema migrations through a database's change log, and
//! pruning it behind its replicas.

use std::path::PathBuf;

use clap::Args;
use liteorm_replication::{ChangeLog, Meta};

use crate::commands::{open_db, open_log};
use crate::failure::Failure;

/// `log migrate`.
#[derive(Args)]
pub(crate) struct MigrateArgs {
    /// The primary database file with the change log.
    #[arg(long)]
    db: PathBuf,
    /// The migration's SQL (one or more statements).
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    sql: Option<String>,
    /// A file with the migration's SQL.
    #[arg(long, value_name = "F")]
    file: Option<PathBuf>,
    /// Who runs it (stored with the entry).
    #[arg(long, value_name = "A")]
    actor: Option<String>,
    /// Why (stored with the entry).
    #[arg(long, value_name = "R")]
    reason: Option<String>,
}

/// `log prune`.
#[derive(Args)]
pub(crate) struct PruneArgs {
    /// The primary database file with the change log.
    #[arg(long)]
    db: PathBuf,
    /// Delete every entry up to this seq.
    #[arg(long, value_name = "SEQ")]
    up_to: u64,
    /// Prune even entries a known replica has not applied (it will need a new snapshot).
    #[arg(long)]
    force: bool,
}

/// Runs the migration and logs it as a schema entry, in one transaction.
pub(crate) async fn migrate(args: MigrateArgs) -> Result<(), Failure> {
    let sql = match (&args.sql, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(file)) => {
            std::fs::read_to_string(file).map_err(|err| Failure::file(file, &err))?
        }
        (None, None) => return Err(Failure::Other("give --sql or --file".into())),
    };
    let db = open_db(&args.db).await?;
    let log = ChangeLog::open(&db).await.map_err(Failure::from)?;
    let meta = Meta {
        actor: args.actor,
        reason: args.reason,
    };
    let seq = log.migrate(meta, &sql).await.map_err(Failure::from)?;
    let tables = log.entry(seq).await.map_err(Failure::from)?.tables;
    println!(
        "{}: migrated, logged as seq {seq} (tables: {})",
        args.db.display(),
        if tables.is_empty() {
            "none".to_owned()
        } else {
            tables.join(", ")
        }
    );
    Ok(())
}

/// Prunes the log up to `--up-to`.
pub(crate) async fn prune(args: PruneArgs) -> Result<(), Failure> {
    let (_db, log) = open_log(&args.db).await?;
    let pruned = if args.force {
        log.force_prune(args.up_to).await
    } else {
        log.prune(args.up_to).await
    }
    .map_err(Failure::from)?;
    println!(
        "{}: pruned {} entries; the log starts after seq {}",
        args.db.display(),
        pruned.entries,
        pruned.horizon
    );
    Ok(())
}
