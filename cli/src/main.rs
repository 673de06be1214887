//! `liteorm-changeset`: work with SQLite changesets from the shell — capture, inspect, apply,
//! invert, concat (group), rebase, validate, build and diff — and run replication over NATS JetStream (publish,
//! follow), without writing Rust.
//!
//! Every failure prints one line on stderr and exits with a code that says what kind of failure
//! it was (see [`Failure::code`]); no panic backtrace reaches the user.

mod commands;
mod failure;
mod log_admin;
mod log_commands;
mod replicate;
mod streamed;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use liteorm_nats::SecretSource;

/// Capture, inspect, apply, invert, concat, validate and diff SQLite changesets; publish and
/// follow change logs over NATS JetStream.
#[derive(Parser)]
#[command(name = "liteorm-changeset", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run SQL on a database while recording; write the changeset (or patchset).
    Capture(CaptureArgs),
    /// Show what a changeset or patchset contains.
    Inspect(InspectArgs),
    /// Apply a changeset or patchset to a database (atomically; default: abort on any conflict).
    Apply(ApplyArgs),
    /// Write the changeset that undoes a changeset.
    Invert(InvertArgs),
    /// Merge changesets (or patchsets) into one, in order (SQLite's changegroup); with
    /// --schema, conformed to a database's tables.
    #[command(visible_alias = "group")]
    Concat(ConcatArgs),
    /// Rebase a local changeset on the conflict resolutions of a remote apply (the rebase
    /// buffer `apply --rebase-out` writes).
    Rebase(RebaseArgs),
    /// Check that a file is a well-formed changeset or patchset.
    Validate(ValidateArgs),
    /// Write a changeset (or patchset) from changes in the JSON format of `inspect --json`.
    #[command(
        long_about = "Write a changeset (or patchset) from changes in the JSON format that \
        `inspect --json` prints: one change object per line (or one JSON array of them). The \
        changes are written in the order given, so `inspect --json` of a file, edited or not, \
        builds it again: unedited, byte for byte.\n\n\
        Each change is checked as SQLite writes changes (an insert has every column, a key column \
        is never NULL, an update changes a column outside the key, ...), and the output is \
        validated like any input file before it is written."
    )]
    Build(BuildArgs),
    /// Write the changes that make OTHER.db's tables equal to FILE's (SQLite's session diff).
    #[command(
        long_about = "Write the changeset that, applied to the --from database, makes its \
        tables equal to the same tables of the --db database (the direction of SQLite's \
        sqlite3session_diff: --db is the target state, --from the starting point). Applying the \
        output to --from brings it up to --db; `invert` gives the way back.\n\n\
        Each table must exist in both databases with the same columns and primary key. By \
        default every table of --db that has a primary key is diffed."
    )]
    Diff(DiffArgs),
    /// Copy a primary database into a new replica file tagged with its change log seq; `follow`
    /// then starts at seq + 1.
    Snapshot(SnapshotArgs),
    /// Publish a primary's change log to NATS JetStream until SIGTERM or Ctrl-C.
    Publish(PublishArgs),
    /// Keep a replica up to date from NATS JetStream until SIGTERM or Ctrl-C (or a conflict
    /// its policy aborts on, which names the entry's seq).
    Follow(FollowArgs),
    /// Work with a database's change log.
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check the change log's hash chain: exits 0 when intact, 10 naming the first seq whose
    /// content, metadata or order was changed, or that was deleted or inserted.
    Verify(VerifyArgs),
    /// List the log's entries (seq, time, actor, reason, kind, tables, change counts), oldest
    /// first, filtered by table, actor, time and seq range.
    List(log_commands::ListArgs),
    /// Show one entry: its metadata and changes (or the changes as SQL, or JSON).
    Show(log_commands::ShowArgs),
    /// Undo one entry by applying its inverse, as a new logged entry (the log is verified
    /// first: exit 10 naming the seq if its chain is broken; a conflict the policy aborts on
    /// exits 7 and changes nothing).
    Revert(log_commands::RevertArgs),
    /// Return the data to its state right after entry SEQ by undoing every later entry, newest
    /// first, as one new logged entry (verified first and atomic, like `revert`).
    RollbackTo(log_commands::RollbackArgs),
    /// Run a schema migration (DDL) on a primary and log it in the same transaction; replicas
    /// run it when they reach its seq. Exits 8 if the SQL fails or is refused (nothing changed).
    Migrate(log_admin::MigrateArgs),
    /// Delete the change log's entries up to a seq, keeping the chain verifiable. Exits 7
    /// (nothing pruned) if a known replica has not applied them yet, unless --force.
    Prune(log_admin::PruneArgs),
}

#[derive(Args)]
struct VerifyArgs {
    /// The database file with the change log (a log from before tamper evidence is upgraded
    /// first).
    #[arg(long)]
    db: PathBuf,
}

#[derive(Args)]
struct CaptureArgs {
    /// The database file (must exist).
    #[arg(long)]
    db: PathBuf,
    /// Record only this table (repeatable; default: every table with a primary key).
    #[arg(long = "table", value_name = "T")]
    tables: Vec<String>,
    /// Write a patchset instead of a changeset.
    #[arg(long)]
    patchset: bool,
    /// Record every change as indirect.
    #[arg(long)]
    indirect: bool,
    /// Also record tables without a PRIMARY KEY, keyed by rowid (SQLite 3.44).
    #[arg(long)]
    implicit_pk: bool,
    /// Output file (default: standard output).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// The SQL to run.
    #[arg(
        long,
        conflicts_with = "sql_file",
        required_unless_present = "sql_file"
    )]
    sql: Option<String>,
    /// A file with the SQL to run.
    #[arg(long, value_name = "F")]
    sql_file: Option<PathBuf>,
}

#[derive(Args)]
struct InspectArgs {
    /// The changeset or patchset file (`-` for standard input).
    blob: PathBuf,
    /// One JSON object per line, one line per change.
    #[arg(long, conflicts_with = "sql")]
    json: bool,
    /// SQL statements equivalent to the changes.
    #[arg(long)]
    sql: bool,
    /// A database to read column names from (for `--sql` and the table view).
    #[arg(long)]
    db: Option<PathBuf>,
}

/// A conflict policy on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum Action {
    Omit,
    Replace,
    Abort,
}

#[derive(Args)]
struct ApplyArgs {
    /// The database file to apply to (must exist).
    #[arg(long)]
    db: PathBuf,
    /// The changeset or patchset file (`-` for standard input).
    blob: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Apply only this table (repeatable; default: all).
    #[arg(long = "table", value_name = "T")]
    tables: Vec<String>,
    /// Apply inside a transaction that is rolled back: report what would happen.
    #[arg(long)]
    dry_run: bool,
    /// Print the report and every conflict as JSON.
    #[arg(long)]
    json: bool,
    /// Apply the inverse of the changeset (SQLITE_CHANGESETAPPLY_INVERT).
    #[arg(long)]
    invert: bool,
    /// An update or delete whose row already has the target values is not a conflict
    /// (SQLITE_CHANGESETAPPLY_IGNORENOOP; SQLite 3.45).
    #[arg(long)]
    ignore_noop: bool,
    /// Treat every foreign key as ON UPDATE/DELETE NO ACTION while applying
    /// (SQLITE_CHANGESETAPPLY_FKNOACTION; SQLite 3.45).
    #[arg(long)]
    fk_no_action: bool,
    /// Write the rebase buffer of the conflicts this apply omitted or replaced to FILE (for
    /// `rebase` elsewhere; changesets only).
    #[arg(long, value_name = "FILE")]
    rebase_out: Option<PathBuf>,
}

/// Conflict policy per kind (default: abort on every conflict).
#[derive(Args)]
struct PolicyArgs {
    /// Action for every conflict kind not set by a more specific option.
    #[arg(long, value_enum, default_value = "abort")]
    on_conflict: Action,
    /// Action for DATA conflicts (the row's values differ).
    #[arg(long, value_enum)]
    on_data: Option<Action>,
    /// Action for NOTFOUND conflicts (the row is missing).
    #[arg(long, value_enum)]
    on_notfound: Option<Action>,
    /// Action for CONFLICT conflicts (the inserted key exists).
    #[arg(long, value_enum)]
    on_conflict_row: Option<Action>,
    /// Action for CONSTRAINT conflicts.
    #[arg(long, value_enum)]
    on_constraint: Option<Action>,
    /// Action for FOREIGN_KEY conflicts (omit: commit despite the violations).
    #[arg(long, value_enum)]
    on_fk: Option<Action>,
}

impl PolicyArgs {
    /// Each kind with its specific action, if one was given.
    fn per_kind(&self) -> [(changeset::ConflictKind, Option<Action>); 5] {
        use changeset::ConflictKind as K;
        [
            (K::Data, self.on_data),
            (K::NotFound, self.on_notfound),
            (K::Conflict, self.on_conflict_row),
            (K::Constraint, self.on_constraint),
            (K::ForeignKey, self.on_fk),
        ]
    }

    /// The policy: each kind's specific action, else the `--on-conflict` one.
    fn conflict_policy(&self) -> liteorm_replication::ConflictPolicy {
        let default = commands::action(self.on_conflict);
        self.per_kind().into_iter().fold(
            liteorm_replication::ConflictPolicy::abort(),
            |policy, (kind, specific)| policy.on(kind, specific.map_or(default, commands::action)),
        )
    }
}

/// Where the NATS server is, how to authenticate and encrypt, and logging. Secrets are never
/// given inline: SRC is `file:PATH` or `env:VAR`.
#[derive(Args)]
struct NatsArgs {
    /// The NATS server (JetStream enabled: `nats-server -js`); `tls://` requires TLS. A
    /// `user:password@` in the URL works, but is visible in process listings: prefer
    /// --nats-user with --nats-password.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Authenticate as this user (with --nats-password).
    #[arg(long, value_name = "USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// The user's password: file:PATH or env:VAR.
    #[arg(long, value_name = "SRC", requires = "nats_user")]
    nats_password: Option<SecretSource>,
    /// Authenticate with a token: file:PATH or env:VAR.
    #[arg(long, value_name = "SRC", conflicts_with_all = ["nats_user", "nats_nkey", "nats_creds"])]
    nats_token: Option<SecretSource>,
    /// Authenticate with an NKey seed (`SU...`): file:PATH or env:VAR.
    #[arg(long, value_name = "SRC", conflicts_with_all = ["nats_user", "nats_creds"])]
    nats_nkey: Option<SecretSource>,
    /// Authenticate with a `.creds` file (user JWT and NKey seed).
    #[arg(long, value_name = "FILE", conflicts_with = "nats_user")]
    nats_creds: Option<PathBuf>,
    /// Trust the CA certificate(s) in this PEM file for the server (implies TLS).
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM; with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[arg(long)]
    tls: bool,
    /// Seconds to wait for the first connection.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    connect_timeout: u64,
    /// Log the lag (seq behind) every SECS seconds (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    lag_every: u64,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Args)]
struct PublishArgs {
    /// The primary database file (must exist); its change log table is the outbox.
    #[arg(long, value_name = "PRIMARY")]
    db: PathBuf,
    /// The database name in the stream (`LITEORM_<NAME>`) and subject (`liteorm.<NAME>.changes`);
    /// default: the file name without extension.
    #[arg(long, value_name = "NAME")]
    stream: Option<String>,
    /// Entries per batch (sent, acknowledged, then the cursor written).
    #[arg(long, value_name = "N", default_value_t = 256)]
    batch: usize,
    /// How often to look for new entries in the log table, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    poll_ms: u64,
    /// The stream's duplicate window in seconds, when this creates the stream (default 120).
    #[arg(long, value_name = "SECS")]
    duplicate_window: Option<u64>,
    /// Drop stream entries older than SECS, when this creates the stream (default: keep all).
    #[arg(long, value_name = "SECS")]
    max_age: Option<u64>,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
struct SnapshotArgs {
    /// The primary database file (must exist, with a change log).
    #[arg(long, value_name = "PRIMARY")]
    db: PathBuf,
    /// The new replica file (must not exist).
    #[arg(short, long, value_name = "REPLICA.db")]
    output: PathBuf,
}

#[derive(Args)]
struct FollowArgs {
    /// The replica database file (must exist, with the primary's schema or a snapshot of it).
    #[arg(long, value_name = "REPLICA")]
    db: PathBuf,
    /// The primary's database name in the stream (as given to, or derived by, `publish`).
    #[arg(long, value_name = "NAME")]
    stream: String,
    /// The durable consumer's name, one per replica (letters, digits, `_`, `-`).
    #[arg(long, value_name = "NAME")]
    durable: String,
    /// Entries applied per transaction at most.
    #[arg(long, value_name = "N", default_value_t = 256)]
    batch: usize,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Args)]
struct InvertArgs {
    /// The changeset file (`-` for standard input).
    blob: PathBuf,
    /// Output file (default: standard output).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct ConcatArgs {
    /// The changesets (or patchsets) to merge, in order.
    #[arg(required = true, num_args = 1..)]
    blobs: Vec<PathBuf>,
    /// Conform the inputs to the tables of this database (sqlite3changegroup_schema): changes
    /// recorded before `ALTER TABLE ... ADD COLUMN` get the new columns' defaults. Needs SQLite
    /// 3.44.
    #[arg(long, value_name = "DB")]
    schema: Option<PathBuf>,
    /// Output file.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
}

#[derive(Args)]
struct RebaseArgs {
    /// The local changeset to rebase (`-` for standard input).
    blob: PathBuf,
    /// A rebase buffer, as `apply --rebase-out` writes it (repeatable: all are combined).
    #[arg(long = "buffer", value_name = "FILE", required = true)]
    buffers: Vec<PathBuf>,
    /// Output file (default: standard output).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct DiffArgs {
    /// The database whose content the output leads to (must exist).
    #[arg(long, value_name = "FILE")]
    db: PathBuf,
    /// The database the output applies to (must exist).
    #[arg(long, value_name = "OTHER.db")]
    from: PathBuf,
    /// Diff only this table (repeatable; default: every table of --db with a primary key).
    #[arg(long = "table", value_name = "T")]
    tables: Vec<String>,
    /// Write a patchset instead of a changeset.
    #[arg(long)]
    patchset: bool,
    /// Output file (default: standard output).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct BuildArgs {
    /// The JSON lines (`-` for standard input).
    json: PathBuf,
    /// Write a patchset instead of a changeset (for the output of `inspect --json` of a
    /// patchset).
    #[arg(long)]
    patchset: bool,
    /// Output file (default: standard output).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct ValidateArgs {
    /// The changeset or patchset file (`-` for standard input).
    blob: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Capture(args) => commands::capture(args).await,
        Command::Inspect(args) => commands::inspect(args).await,
        Command::Apply(args) => commands::apply(args).await,
        Command::Invert(args) => commands::invert(args).await,
        Command::Concat(args) => commands::concat(args).await,
        Command::Rebase(args) => commands::rebase(args),
        Command::Validate(args) => commands::validate(args),
        Command::Build(args) => commands::build(args),
        Command::Diff(args) => commands::diff(args).await,
        Command::Snapshot(args) => replicate::snapshot(args).await,
        Command::Publish(args) => {
            replicate::init_tracing(args.nats.verbose);
            replicate::publish(args).await
        }
        Command::Follow(args) => {
            replicate::init_tracing(args.nats.verbose);
            replicate::follow(args).await
        }
        Command::Log(LogCommand::Verify(args)) => commands::verify_log(args).await,
        Command::Log(LogCommand::List(args)) => log_commands::list(args).await,
        Command::Log(LogCommand::Show(args)) => log_commands::show(args).await,
        Command::Log(LogCommand::Revert(args)) => log_commands::revert(args).await,
        Command::Log(LogCommand::RollbackTo(args)) => log_commands::rollback_to(args).await,
        Command::Log(LogCommand::Migrate(args)) => log_admin::migrate(args).await,
        Command::Log(LogCommand::Prune(args)) => log_admin::prune(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("liteorm-changeset: {failure}");
            ExitCode::from(failure.code())
        }
    }
}
