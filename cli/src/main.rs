//! `liteorm-changeset`: work with SQLite changesets from the shell — capture, inspect, apply,
//! invert, concat, validate and diff — without writing Rust.
//!
//! Every failure prints one line on stderr and exits with a code that says what kind of failure
//! it was (see [`Failure::code`]); no panic backtrace reaches the user.

mod commands;
mod failure;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Capture, inspect, apply, invert, concat, validate and diff SQLite changesets.
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
    /// Merge changesets (or patchsets) into one, in order.
    Concat(ConcatArgs),
    /// Check that a file is a well-formed changeset or patchset.
    Validate(ValidateArgs),
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
    /// Apply only this table (repeatable; default: all).
    #[arg(long = "table", value_name = "T")]
    tables: Vec<String>,
    /// Apply inside a transaction that is rolled back: report what would happen.
    #[arg(long)]
    dry_run: bool,
    /// Print the report and every conflict as JSON.
    #[arg(long)]
    json: bool,
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
    #[arg(required = true, num_args = 2..)]
    blobs: Vec<PathBuf>,
    /// Output file.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
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
        Command::Invert(args) => commands::invert(args),
        Command::Concat(args) => commands::concat(args),
        Command::Validate(args) => commands::validate(args),
        Command::Diff(args) => commands::diff(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("liteorm-changeset: {failure}");
            ExitCode::from(failure.code())
        }
    }
}
