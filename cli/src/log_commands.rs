//! `log list`, `log show`, `log revert` and `log rollback-to`: reading and undoing a database's
//! change log (`liteorm_changes`) from the shell.

use std::path::{Path, PathBuf};

use changeset::{Change, ChangeOp, ColumnNames};
use clap::Args;
use liteorm_replication::{ChangeLog, EntryKind, LogEntry, LogFilter, Meta, RevertOutcome};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::PolicyArgs;
use crate::commands::{describe, named, open_log, report_text, report_value, write_output};
use crate::failure::Failure;

const TIME_HELP: &str = "RFC 3339 (2026-05-01T12:00:00Z, 2026-05-01T14:00:00.250+02:00) or Unix \
    milliseconds (1777636800000)";

#[derive(Args)]
#[command(after_help = format!("TIME is {TIME_HELP}; both bounds are inclusive."))]
pub(crate) struct ListArgs {
    /// The database file with the change log.
    #[arg(long)]
    db: PathBuf,
    /// Only entries whose changes touch table T.
    #[arg(long, value_name = "T")]
    table: Option<String>,
    /// Only entries recorded by actor A.
    #[arg(long, value_name = "A")]
    actor: Option<String>,
    /// Only entries committed at or after TIME: RFC 3339 or Unix milliseconds.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<i64>,
    /// Only entries committed at or before TIME: RFC 3339 or Unix milliseconds.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<i64>,
    /// Only entries with seq >= SEQ.
    #[arg(long, value_name = "SEQ")]
    from_seq: Option<u64>,
    /// Only entries with seq <= SEQ.
    #[arg(long, value_name = "SEQ")]
    to_seq: Option<u64>,
    /// At most N entries: the first N that match, in seq order (page on with --from-seq).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// One JSON object per line, one line per entry.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ShowArgs {
    /// The entry's seq.
    seq: u64,
    /// The database file with the change log.
    #[arg(long)]
    db: PathBuf,
    /// One JSON object: the entry's metadata and its changes (in the `inspect --json` format).
    #[arg(long, conflicts_with = "sql")]
    json: bool,
    /// Only the changes, as SQL statements.
    #[arg(long)]
    sql: bool,
}

#[derive(Args)]
pub(crate) struct RevertArgs {
    /// The seq of the entry to undo.
    seq: u64,
    /// The database file with the change log.
    #[arg(long)]
    db: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    meta: MetaArgs,
    /// Print the new entry's seq and the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct RollbackArgs {
    /// The seq to return to: every later entry is undone (0: before the first entry).
    seq: u64,
    /// The database file with the change log.
    #[arg(long)]
    db: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    meta: MetaArgs,
    /// Print the new entry's seq and the reports as JSON.
    #[arg(long)]
    json: bool,
}

/// Who undoes and why, recorded in the new log entry.
#[derive(Args)]
struct MetaArgs {
    /// The actor recorded in the new entry.
    #[arg(long, value_name = "A")]
    actor: Option<String>,
    /// The reason recorded in the new entry.
    #[arg(long, value_name = "R")]
    reason: Option<String>,
}

impl MetaArgs {
    fn meta(self) -> Meta {
        Meta {
            actor: self.actor,
            reason: self.reason,
        }
    }
}

/// A time bound: Unix milliseconds, or an RFC 3339 timestamp.
fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let time = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not a time ({e}); give {TIME_HELP}"))?;
    i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| format!("{text:?} is out of range"))
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds (`2026-05-01T12:00:00.000Z`); the bare
/// number for a time outside the years 0 to 9999.
fn format_time(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) if (0..=9999).contains(&t.year()) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        _ => ms.to_string(),
    }
}

/// The failure for a seq the log does not have, saying which seqs it has.
async fn no_such_entry(path: &Path, log: &ChangeLog, seq: u64) -> Failure {
    let has = match log.last_seq().await {
        Ok(0) => "the log is empty".to_owned(),
        Ok(last) => format!("the newest is seq {last}"),
        Err(err) => return named(path, err.into()),
    };
    Failure::Other(format!(
        "{}: no change log entry with seq {seq} ({has})",
        path.display()
    ))
}

/// Text for a table cell or a metadata line: control characters escaped, so that a stored
/// actor or reason cannot break the layout (or forge lines).
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn optional(text: Option<&str>) -> String {
    text.map_or_else(|| "-".to_owned(), printable)
}

/// `change`, `revert of 3`, `rollback to 2`, `schema`.
fn kind_text(kind: EntryKind) -> String {
    match kind {
        EntryKind::Change => "change".to_owned(),
        EntryKind::Revert(seq) => format!("revert of {seq}"),
        EntryKind::Rollback(seq) => format!("rollback to {seq}"),
        EntryKind::Schema => "schema".to_owned(),
    }
}

/// The kind's name and the seq it refers to, as stored.
fn kind_parts(kind: EntryKind) -> (&'static str, Option<u64>) {
    match kind {
        EntryKind::Change => ("change", None),
        EntryKind::Revert(seq) => ("revert", Some(seq)),
        EntryKind::Rollback(seq) => ("rollback", Some(seq)),
        EntryKind::Schema => ("schema", None),
    }
}

/// How many inserts, updates and deletes an entry's changeset holds.
#[derive(Default)]
struct Counts {
    inserts: usize,
    updates: usize,
    deletes: usize,
}

impl Counts {
    fn of(entry: &LogEntry) -> Result<Counts, Failure> {
        Ok(Counts::in_changes(&entry.changeset.changes()?))
    }

    fn in_changes(changes: &[Change]) -> Counts {
        let mut counts = Counts::default();
        for change in changes {
            match change.op {
                ChangeOp::Insert => counts.inserts += 1,
                ChangeOp::Update => counts.updates += 1,
                ChangeOp::Delete => counts.deletes += 1,
            }
        }
        counts
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "insert": self.inserts,
            "update": self.updates,
            "delete": self.deletes,
        })
    }
}

/// An entry's metadata and change counts as a JSON object.
fn entry_json(entry: &LogEntry, counts: &Counts) -> serde_json::Value {
    let (kind, ref_seq) = kind_parts(entry.kind);
    serde_json::json!({
        "seq": entry.seq,
        "committed_at_ms": entry.committed_at_ms,
        "committed_at": format_time(entry.committed_at_ms),
        "actor": entry.actor,
        "reason": entry.reason,
        "kind": kind,
        "ref_seq": ref_seq,
        "tables": entry.tables,
        "counts": counts.json(),
        "ddl": entry.ddl,
        "hash": entry.hash.to_hex(),
    })
}

/// Lines of cells, padded to each column's width; numbers right-aligned.
fn table(header: &[&str], numeric: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(numeric)
            .map(|((cell, &width), &numeric)| {
                if numeric {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// How many entries `log list` reads at a time: their changesets are dropped once listed, so a
/// long log is never in memory whole (only its rows of text are, for the table's widths).
const LIST_PAGE: u64 = 256;

pub(crate) async fn list(args: ListArgs) -> Result<(), Failure> {
    let (_db, log) = open_log(&args.db).await?;
    let mut filter = LogFilter::all();
    if let Some(table) = args.table {
        filter = filter.table(table);
    }
    if let Some(actor) = args.actor {
        filter = filter.actor(actor);
    }
    if let Some(ms) = args.since {
        filter = filter.since_ms(ms);
    }
    if let Some(ms) = args.until {
        filter = filter.until_ms(ms);
    }
    let (mut from, to) = (args.from_seq.unwrap_or(0), args.to_seq.unwrap_or(u64::MAX));
    let mut remaining = args.limit.unwrap_or(u64::MAX);
    let mut out = String::new();
    let mut rows = Vec::new();
    while remaining > 0 && from <= to {
        let take = remaining.min(LIST_PAGE);
        let page = log
            .entries(&filter.clone().seqs(from, to).limit(take))
            .await
            .map_err(|e| named(&args.db, e.into()))?;
        for entry in &page {
            let counts = Counts::of(entry)?;
            if args.json {
                out.push_str(&entry_json(entry, &counts).to_string());
                out.push('\n');
            } else {
                rows.push(vec![
                    entry.seq.to_string(),
                    format_time(entry.committed_at_ms),
                    optional(entry.actor.as_deref()),
                    optional(entry.reason.as_deref()),
                    kind_text(entry.kind),
                    printable(&entry.tables.join(",")),
                    counts.inserts.to_string(),
                    counts.updates.to_string(),
                    counts.deletes.to_string(),
                ]);
            }
        }
        if args.json {
            // JSON lines go out a page at a time.
            write_output(None, out.as_bytes())?;
            out.clear();
        }
        match page.last() {
            Some(last) if (page.len() as u64) == take => {
                from = last.seq.saturating_add(1);
                remaining -= take;
            }
            _ => break,
        }
    }
    if args.json {
        return Ok(());
    }
    out.push_str(&table(
        &[
            "SEQ", "TIME", "ACTOR", "REASON", "KIND", "TABLES", "INS", "UPD", "DEL",
        ],
        &[true, false, false, false, false, false, true, true, true],
        &rows,
    ));
    out.push_str(&match rows.len() {
        1 => "1 entry\n".to_owned(),
        n => format!("{n} entries\n"),
    });
    write_output(None, out.as_bytes())
}

pub(crate) async fn show(args: ShowArgs) -> Result<(), Failure> {
    let (db, log) = open_log(&args.db).await?;
    let entry = match log.entry(args.seq).await {
        Ok(entry) => entry,
        Err(liteorm_replication::Error::NoSuchEntry(seq)) => {
            return Err(no_such_entry(&args.db, &log, seq).await);
        }
        Err(err) => return Err(named(&args.db, err.into())),
    };
    let changes = entry.changeset.changes()?;
    // Column names for the text and SQL forms; JSON refers to columns by position.
    let names = if args.json {
        ColumnNames::new()
    } else {
        ColumnNames::of(&db).await?
    };
    let mut out = String::new();
    if args.json {
        let mut json = entry_json(&entry, &Counts::in_changes(&changes));
        json["changes"] =
            serde_json::to_value(&changes).map_err(|e| Failure::Other(e.to_string()))?;
        out.push_str(&json.to_string());
        out.push('\n');
    } else if args.sql {
        // A schema entry's SQL is what replicas run; a change entry's, what its changes do.
        if let Some(ddl) = &entry.ddl {
            out.push_str(ddl.trim_end());
            out.push('\n');
        }
        for change in &changes {
            out.push_str(&change.to_sql(&names));
            out.push('\n');
        }
    } else {
        let counts = Counts::in_changes(&changes);
        let lines = [
            ("seq", entry.seq.to_string()),
            (
                "time",
                format!(
                    "{} ({} ms)",
                    format_time(entry.committed_at_ms),
                    entry.committed_at_ms
                ),
            ),
            ("actor", optional(entry.actor.as_deref())),
            ("reason", optional(entry.reason.as_deref())),
            ("kind", kind_text(entry.kind)),
            ("tables", printable(&entry.tables.join(", "))),
            (
                "changes",
                format!(
                    "{} (insert {}, update {}, delete {})",
                    changes.len(),
                    counts.inserts,
                    counts.updates,
                    counts.deletes
                ),
            ),
            ("hash", entry.hash.to_hex()),
        ];
        for (name, value) in lines {
            out.push_str(&format!("{name:<8}{value}\n"));
        }
        out.push('\n');
        if let Some(ddl) = &entry.ddl {
            out.push_str(ddl.trim_end());
            out.push('\n');
        }
        for change in &changes {
            out.push_str(&describe(change, &names));
            out.push('\n');
        }
    }
    write_output(None, out.as_bytes())
}

/// The text or JSON of a revert's or rollback's outcome. `what` says what was undone (`reverted
/// seq 3`), `key`/`target` name it in JSON.
fn outcome(outcome: &RevertOutcome, what: &str, (key, target): (&str, u64), json: bool) -> String {
    if json {
        let reports: Vec<serde_json::Value> = outcome
            .reports
            .iter()
            .map(|(seq, report)| {
                let mut value = report_value(report);
                value["seq"] = serde_json::json!(seq);
                value
            })
            .collect();
        let mut value = serde_json::json!({
            "logged_as": outcome.logged_as,
            "reports": reports,
        });
        value[key] = serde_json::json!(target);
        return format!("{value}\n");
    }
    let mut out = match outcome.logged_as {
        Some(seq) => format!("{what}: logged as seq {seq}\n"),
        None => format!("{what}: nothing changed, no entry logged\n"),
    };
    for (seq, report) in &outcome.reports {
        out.push_str(&format!(
            "undo of seq {seq}: {}",
            report_text(report, false)
        ));
    }
    out
}

pub(crate) async fn revert(args: RevertArgs) -> Result<(), Failure> {
    let (_db, log) = open_log(&args.db).await?;
    let policy = args.policy.conflict_policy();
    let result = match log.revert(args.seq, policy, args.meta.meta()).await {
        Ok(result) => result,
        Err(liteorm_replication::Error::NoSuchEntry(seq)) => {
            return Err(no_such_entry(&args.db, &log, seq).await);
        }
        Err(err) => return Err(named(&args.db, err.into())),
    };
    let what = format!("reverted seq {}", args.seq);
    let out = outcome(&result, &what, ("reverted", args.seq), args.json);
    write_output(None, out.as_bytes())
}

pub(crate) async fn rollback_to(args: RollbackArgs) -> Result<(), Failure> {
    let (_db, log) = open_log(&args.db).await?;
    let last = log
        .last_seq()
        .await
        .map_err(|e| named(&args.db, e.into()))?;
    // Seq 0 (before the first entry) always exists; a seq beyond the newest is a typo, not a
    // rollback that has nothing to do.
    if args.seq > last {
        return Err(no_such_entry(&args.db, &log, args.seq).await);
    }
    let policy = args.policy.conflict_policy();
    let result = log
        .rollback_to(args.seq, policy, args.meta.meta())
        .await
        .map_err(|e| named(&args.db, e.into()))?;
    let what = format!("rolled back to seq {}", args.seq);
    let out = outcome(&result, &what, ("rolled_back_to", args.seq), args.json);
    write_output(None, out.as_bytes())
}
