//! The subcommands.

use std::io::{IsTerminal as _, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use changeset::inspect::TypedValue;
use changeset::{
    ApplyReport, Capture, Change, ChangeOp, Changegroup, Changeset, ColumnNames, ConflictAction,
    ConflictKind, Patchset, RebaseBuffer, Rebaser,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use liteorm_core::{Session, Value};
use liteorm_sqlite::SqliteSession;
use sqlx::sqlite::SqlitePoolOptions;

use crate::failure::Failure;
use crate::streamed;
use crate::{
    Action, ApplyArgs, BuildArgs, CaptureArgs, ConcatArgs, DiffArgs, InspectArgs, InvertArgs,
    RebaseArgs, ValidateArgs, VerifyArgs,
};

/// A changeset or a patchset, told apart by the first byte of the blob.
enum Blob {
    Changeset(Changeset),
    Patchset(Patchset),
}

impl Blob {
    /// A copy of the blob's bytes, for streaming.
    fn bytes(&self) -> Arc<[u8]> {
        match self {
            Blob::Changeset(c) => Arc::from(c.as_bytes()),
            Blob::Patchset(p) => Arc::from(p.as_bytes()),
        }
    }

    fn changes(&self) -> Result<Vec<Change>, changeset::Error> {
        match self {
            Blob::Changeset(c) => c.changes(),
            Blob::Patchset(p) => p.changes(),
        }
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes).map(drop)
    } else {
        std::fs::read(path).map(|b| bytes = b)
    };
    read.map_err(|e| Failure::file(path, &e))?;
    Ok(bytes)
}

fn read_blob(path: &Path) -> Result<Blob, Failure> {
    let bytes = read_input(path)?;
    let describe = |e: changeset::Error| Failure::InvalidBlob(format!("{}: {e}", path.display()));
    if bytes.first() == Some(&b'P') {
        Patchset::from_bytes(bytes)
            .map(Blob::Patchset)
            .map_err(describe)
    } else {
        Changeset::from_bytes(bytes)
            .map(Blob::Changeset)
            .map_err(describe)
    }
}

pub(crate) fn write_output(path: Option<&Path>, bytes: &[u8]) -> Result<(), Failure> {
    match path {
        Some(path) => std::fs::write(path, bytes).map_err(|e| Failure::file(path, &e)),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)
                .and_then(|()| out.flush())
                .map_err(|e| Failure::file(Path::new("<stdout>"), &e))
        }
    }
}

/// A progress bar over `len` bytes on stderr, or a hidden one when stderr is not a terminal
/// (pipes, files, tests), so that nothing but errors ever reaches a redirected stderr.
fn progress_bar(len: usize, what: &'static str) -> ProgressBar {
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {binary_bytes}/{binary_total_bytes} ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar
}

/// Opens an existing database file; never creates one.
pub(crate) async fn open_db(path: &Path) -> Result<SqliteSession, Failure> {
    if !path.is_file() {
        return Err(Failure::NotADatabase(format!(
            "{}: no such database file",
            path.display()
        )));
    }
    let path_str = path
        .to_str()
        .ok_or_else(|| Failure::File(format!("{}: not a UTF-8 path", path.display())))?;
    let options = SqliteSession::options(path_str)?
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(2));
    let db = SqliteSession::connect_with(options, SqlitePoolOptions::new().max_connections(2))
        .await
        .map_err(|e| named(path, e.into()))?;
    // Reading the schema is what fails on a file that is not a database.
    db.query("SELECT count(*) FROM sqlite_schema", &[])
        .await
        .map_err(|e| named(path, e.into()))?;
    Ok(db)
}

/// Prefixes a failure's message with the database it is about.
pub(crate) fn named(path: &Path, failure: Failure) -> Failure {
    let message = format!("{}: {failure}", path.display());
    match failure {
        Failure::NotADatabase(_) => Failure::NotADatabase(message),
        Failure::Locked(_) => Failure::Locked(message),
        Failure::Sql(_) => Failure::Sql(message),
        other => other,
    }
}

pub(crate) async fn capture(args: CaptureArgs) -> Result<(), Failure> {
    let sql = match (&args.sql, &args.sql_file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| Failure::file(file, &e))?,
        (None, None) => return Err(Failure::Other("give --sql or --sql-file".into())),
    };
    let db = open_db(&args.db).await?;
    let capture = Capture::new(&db)
        .tables(args.tables.iter().cloned())
        .indirect(args.indirect)
        .implicit_primary_key(args.implicit_pk);
    let run = move |s: SqliteSession| async move {
        s.execute_batch(&sql).await?;
        Ok::<_, changeset::Error>(())
    };
    let bytes: Vec<u8> = if args.patchset {
        capture.patchset(run).await?.as_bytes().to_vec()
    } else {
        capture.changeset(run).await?.as_bytes().to_vec()
    };
    write_output(args.output.as_deref(), &bytes)
}

pub(crate) async fn inspect(args: InspectArgs) -> Result<(), Failure> {
    let blob = read_blob(&args.blob)?;
    let names = match &args.db {
        Some(path) => ColumnNames::of(&open_db(path).await?).await?,
        None => ColumnNames::new(),
    };
    let changes = blob.changes()?;
    let mut out = String::new();
    for change in &changes {
        if args.json {
            out.push_str(
                &serde_json::to_string(change).map_err(|e| Failure::Other(e.to_string()))?,
            );
        } else if args.sql {
            out.push_str(&change.to_sql(&names));
        } else {
            out.push_str(&describe(change, &names));
        }
        out.push('\n');
    }
    if !args.json && !args.sql {
        let kind = if matches!(blob, Blob::Patchset(_)) {
            "patchset"
        } else {
            "changeset"
        };
        out.push_str(&format!("{} changes ({kind})\n", changes.len()));
    }
    write_output(None, out.as_bytes())
}

/// One human-readable line: `UPDATE users [id=1] name: 'ada' -> 'Ada'`.
pub(crate) fn describe(change: &Change, names: &ColumnNames) -> String {
    let name = |i: usize| {
        names
            .get(&change.table)
            .and_then(|n| n.get(i))
            .cloned()
            .unwrap_or_else(|| format!("column{}", i + 1))
    };
    let show = |v: Option<&Option<Value>>| v.cloned().flatten().map(|v| v.to_string());
    let key: Vec<String> = (0..change.column_count())
        .filter(|&i| change.pk[i] != 0)
        .map(|i| {
            let side = if change.op == ChangeOp::Insert {
                &change.new
            } else {
                &change.old
            };
            format!("{}={}", name(i), show(side.get(i)).unwrap_or_default())
        })
        .collect();
    let columns: Vec<String> = (0..change.column_count())
        .filter(|&i| change.pk[i] == 0)
        .filter_map(
            |i| match (show(change.old.get(i)), show(change.new.get(i))) {
                (None, None) => None,
                (Some(old), None) if change.op == ChangeOp::Delete => {
                    Some(format!("{}: {old}", name(i)))
                }
                (None, Some(new)) => Some(format!("{}: {new}", name(i))),
                (old, new) => Some(format!(
                    "{}: {} -> {}",
                    name(i),
                    old.unwrap_or_default(),
                    new.unwrap_or_default()
                )),
            },
        )
        .collect();
    let indirect = if change.indirect { " (indirect)" } else { "" };
    format!(
        "{} {} [{}] {}{indirect}",
        change.op.as_str(),
        change.table,
        key.join(", "),
        columns.join(", ")
    )
}

pub(crate) fn action(action: Action) -> ConflictAction {
    match action {
        Action::Omit => ConflictAction::Omit,
        Action::Replace => ConflictAction::Replace,
        Action::Abort => ConflictAction::Abort,
    }
}

pub(crate) async fn apply(args: ApplyArgs) -> Result<(), Failure> {
    let blob = read_blob(&args.blob)?;
    let db = open_db(&args.db).await?;
    let default = action(args.policy.on_conflict);
    let specific = args.policy.per_kind();
    let per_kind = move |kind: ConflictKind| {
        let chosen = specific
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, a)| *a);
        chosen.map_or(default, action)
    };
    // The dry run applies inside a transaction that is then rolled back.
    let tx = db
        .begin_immediate()
        .await
        .map_err(|e| named(&args.db, e.into()))?;
    // Streamed to SQLite through a byte counter: the progress bar (drawn only when stderr is
    // a terminal) follows how far SQLite has read. The blob was validated whole above, so a
    // corrupt file fails before the database is touched; the stream is checked again.
    let bytes = blob.bytes();
    let bar = progress_bar(bytes.len(), "applying");
    let input = bar.wrap_read(std::io::Cursor::new(bytes));
    let mut apply = configure(
        changeset::stream::apply(tx.session(), input),
        &args.tables,
        per_kind,
    );
    if args.invert {
        if matches!(blob, Blob::Patchset(_)) {
            return Err(Failure::InvalidBlob(format!(
                "{}: a patchset cannot be inverted",
                args.blob.display()
            )));
        }
        apply = apply.invert();
    }
    if args.ignore_noop {
        apply = apply.ignore_noop();
    }
    if args.fk_no_action {
        apply = apply.fk_no_action();
    }
    if args.rebase_out.is_some() {
        apply = apply.rebase_buffer();
    }
    let result = apply.await;
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            tx.rollback().await?;
            return Err(err.into());
        }
    };
    if args.dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await.map_err(|e| named(&args.db, e.into()))?;
    }
    if let Some(path) = &args.rebase_out {
        write_output(Some(path), report.rebase.as_bytes())?;
    }
    let out = if args.json {
        report_json(&report, args.dry_run)?
    } else {
        report_text(&report, args.dry_run)
    };
    write_output(None, out.as_bytes())
}

/// Adds the conflict policy and the table filter to an apply.
fn configure<'a>(
    apply: changeset::Apply<'a>,
    tables: &[String],
    per_kind: impl Fn(ConflictKind) -> ConflictAction + Send + 'static,
) -> changeset::Apply<'a> {
    let apply = apply.on_conflict(move |c| per_kind(c.kind)).log_conflicts();
    if tables.is_empty() {
        return apply;
    }
    let tables = tables.to_vec();
    apply.filter(move |t| tables.iter().any(|x| x == t))
}

pub(crate) fn report_text(report: &ApplyReport, dry_run: bool) -> String {
    let mut out = format!(
        "{}{} changes: {} applied, {} omitted, {} replaced\n",
        if dry_run {
            "dry run (rolled back): "
        } else {
            ""
        },
        report.changes,
        report.applied,
        report.omitted,
        report.replaced
    );
    for (conflict, action) in &report.conflict_log {
        out.push_str(&format!(
            "conflict {} on {}: {:?}\n",
            conflict.kind,
            conflict.table().unwrap_or("(foreign keys)"),
            action
        ));
    }
    for table in &report.filtered_tables {
        out.push_str(&format!("filtered out: {table}\n"));
    }
    for skipped in &report.skipped_tables {
        out.push_str(&format!(
            "skipped (incompatible schema): {} {:?}, {} changes\n",
            skipped.table, skipped.reason, skipped.changes
        ));
    }
    out
}

fn report_json(report: &ApplyReport, dry_run: bool) -> Result<String, Failure> {
    let mut json = report_value(report);
    json["dry_run"] = dry_run.into();
    Ok(format!("{json}\n"))
}

/// An apply report and every conflict as JSON, values in the typed encoding of `inspect --json`.
pub(crate) fn report_value(report: &ApplyReport) -> serde_json::Value {
    let conflicts: Vec<serde_json::Value> = report
        .conflict_log
        .iter()
        .map(|(c, action)| {
            serde_json::json!({
                "kind": c.kind.to_string(),
                "action": format!("{action:?}"),
                "change": c.change,
                "conflicting_row": c.conflicting_row.as_ref().map(|row| row.iter().map(TypedValue).collect::<Vec<_>>()),
                "foreign_key_violations": c.foreign_key_violations,
            })
        })
        .collect();
    serde_json::json!({
        "changes": report.changes,
        "attempted": report.attempted,
        "applied": report.applied,
        "omitted": report.omitted,
        "replaced": report.replaced,
        "filtered_tables": report.filtered_tables,
        "skipped_tables": report.skipped_tables.iter().map(|s| serde_json::json!({
            "table": s.table, "reason": format!("{:?}", s.reason), "changes": s.changes,
        })).collect::<Vec<_>>(),
        "conflicts": conflicts,
    })
}

pub(crate) fn build(args: BuildArgs) -> Result<(), Failure> {
    let bytes = read_input(&args.json)?;
    let json = String::from_utf8(bytes)
        .map_err(|e| Failure::InvalidBlob(format!("{}: not UTF-8: {e}", args.json.display())))?;
    let describe =
        |e: changeset::Error| Failure::InvalidBlob(format!("{}: {e}", args.json.display()));
    let blob: Vec<u8> = if args.patchset {
        Patchset::from_json(&json)
            .map_err(describe)?
            .as_bytes()
            .to_vec()
    } else {
        Changeset::from_json(&json)
            .map_err(describe)?
            .as_bytes()
            .to_vec()
    };
    write_output(args.output.as_deref(), &blob)
}

pub(crate) async fn invert(args: InvertArgs) -> Result<(), Failure> {
    let (input, source) = streamed::open(&args.blob)?;
    let (output, target) = streamed::create(args.output.as_deref())?;
    match changeset::stream::invert(input, output).await {
        Ok(output) => target.commit(output),
        Err(changeset::Error::Misuse(_)) => Err(Failure::InvalidBlob(format!(
            "{}: a patchset cannot be inverted (it lacks the old values)",
            args.blob.display()
        ))),
        Err(err) => Err(target.failure(err, &[source])),
    }
}

pub(crate) async fn concat(args: ConcatArgs) -> Result<(), Failure> {
    let Some(schema) = &args.schema else {
        // Without a schema the merge streams, whatever the size of the inputs.
        let (inputs, sources): (Vec<_>, Vec<_>) = args
            .blobs
            .iter()
            .map(|path| streamed::open(path))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let (output, target) = streamed::create(Some(&args.output))?;
        return match changeset::stream::merge(inputs, output).await {
            Ok(output) => target.commit(output),
            Err(changeset::Error::Misuse(message)) => Err(Failure::InvalidBlob(message.into())),
            Err(err) => Err(target.failure(err, &sources)),
        };
    };
    let blobs = args
        .blobs
        .iter()
        .map(|p| read_blob(p))
        .collect::<Result<Vec<_>, _>>()?;
    let db = open_db(schema).await?;
    // The same merge for either kind; every input must be of the first one's.
    macro_rules! merge {
        ($variant:ident) => {{
            let inputs = blobs
                .into_iter()
                .map(|blob| match blob {
                    Blob::$variant(changes) => Ok(changes),
                    _ => Err(Failure::InvalidBlob(
                        "cannot merge changesets with patchsets".into(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Changegroup::merge_with_schema(&db, inputs)
                .await?
                .as_bytes()
                .to_vec()
        }};
    }
    let merged = if matches!(blobs.first(), Some(Blob::Patchset(_))) {
        merge!(Patchset)
    } else {
        merge!(Changeset)
    };
    write_output(Some(&args.output), &merged)
}

pub(crate) fn rebase(args: RebaseArgs) -> Result<(), Failure> {
    let mut rebaser = Rebaser::new()?;
    for path in &args.buffers {
        let buffer = RebaseBuffer::from_bytes(read_input(path)?)
            .map_err(|e| Failure::InvalidBlob(format!("{}: {e}", path.display())))?;
        rebaser.configure(&buffer)?;
    }
    let (input, source) = streamed::open(&args.blob)?;
    let (output, target) = streamed::create(args.output.as_deref())?;
    match rebaser.rebase_stream(input, output) {
        Ok(output) => target.commit(output),
        Err(changeset::Error::Misuse(_)) => Err(Failure::InvalidBlob(format!(
            "{}: only a changeset can be rebased",
            args.blob.display()
        ))),
        Err(err) => Err(target.failure(err, &[source])),
    }
}

pub(crate) fn validate(args: ValidateArgs) -> Result<(), Failure> {
    let blob = read_blob(&args.blob)?;
    let (kind, n) = match &blob {
        Blob::Changeset(c) => ("changeset", c.changes()?.len()),
        Blob::Patchset(p) => ("patchset", p.changes()?.len()),
    };
    write_output(
        None,
        format!("{}: valid {kind}, {n} changes\n", args.blob.display()).as_bytes(),
    )
}

pub(crate) async fn diff(args: DiffArgs) -> Result<(), Failure> {
    let db = open_db(&args.db).await?;
    // The library attaches --from by path; check first that it is a database, so that a missing
    // or foreign file gets the same message and exit code as --db.
    let from = open_db(&args.from).await?;
    drop(from);
    let diff = changeset::Diff::from_file(&db, &args.from).tables(args.tables.iter().cloned());
    let bytes: Vec<u8> = if args.patchset {
        diff.patchset().await?.as_bytes().to_vec()
    } else {
        diff.changeset().await?.as_bytes().to_vec()
    };
    write_output(args.output.as_deref(), &bytes)
}

/// Opens the change log of an existing database; a database without one is an error (reading
/// or undoing never creates the log table).
pub(crate) async fn open_log(
    path: &Path,
) -> Result<(SqliteSession, liteorm_replication::ChangeLog), Failure> {
    let db = open_db(path).await?;
    let has_log = db
        .query(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'liteorm_changes'",
            &[],
        )
        .await
        .map_err(|e| named(path, e.into()))?;
    if has_log.is_empty() {
        return Err(Failure::Sql(format!(
            "{}: no change log (no liteorm_changes table)",
            path.display()
        )));
    }
    let log = liteorm_replication::ChangeLog::open(&db)
        .await
        .map_err(|e| named(path, e.into()))?;
    Ok((db, log))
}

pub(crate) async fn verify_log(args: VerifyArgs) -> Result<(), Failure> {
    let (_db, log) = open_log(&args.db).await?;
    let verified = log.verify().await?;
    println!(
        "{}: change log intact, {} entries, head {}",
        args.db.display(),
        verified.entries,
        verified.head
    );
    if verified.pruned_through > 0 {
        println!(
            "entries up to seq {} were pruned; the chain is checked from the hash recorded then",
            verified.pruned_through
        );
    }
    if let Some(seq) = verified.upgraded_through {
        println!(
            "entries up to seq {seq} were chained when the log was upgraded, not when committed"
        );
    }
    Ok(())
}
