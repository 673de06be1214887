//! The tables of an apply's input, and whether the target schema can take their changes.

use std::collections::HashMap;

use liteorm_sqlite::PinnedGuard;

use crate::ffi::{self, Handle};
use crate::{Capability, Error, format};

use crate::changeset::BlobKind;

use super::report::SkipReason;

/// Per table of the blob: its header and how many changes it has.
pub(crate) struct TableInfo {
    pub(crate) n_col: usize,
    pub(crate) pk: Vec<u8>,
    pub(crate) changes: usize,
}

/// The tables of a streamed changeset, from the sections its checker saw.
pub(super) fn stream_tables(sections: &[format::Section]) -> HashMap<String, TableInfo> {
    let mut tables = HashMap::new();
    let mut previous: Option<&str> = None;
    for section in sections {
        let info = TableInfo {
            n_col: section.pk.len(),
            pk: section.pk.clone(),
            changes: section.changes,
        };
        // A section continues the run before it when SQLite says so (see `same_run`).
        let name = match previous {
            Some(run) if same_run(run, &section.table) => run,
            _ => section.table.as_str(),
        };
        previous = Some(name);
        merge(&mut tables, name.to_owned(), info);
    }
    tables
}

/// Whether SQLite's apply takes a table header named `next` right after the run of `run` as
/// the same table: it compares the names ASCII-case-insensitively (`sqlite3_strnicmp`), and
/// calls the table filter once per run.
fn same_run(run: &str, next: &str) -> bool {
    run.as_bytes().eq_ignore_ascii_case(next.as_bytes())
}

/// Lists a blob's tables, their headers and change counts with the bounds-checked byte walk of
/// [`format`] (no value is decoded and SQLite's iterator is not involved). A malformed blob
/// fails here: before anything is written for a small blob, alongside SQLite's apply (which is
/// then undone) for a large one.
pub(crate) fn survey(blob: &[u8], kind: BlobKind) -> Result<HashMap<String, TableInfo>, Error> {
    let mut sections = format::checked_sections(blob).map_err(|m| Error::Invalid {
        kind: kind.name(),
        entry: m.entry,
        offset: Some(m.offset),
        reason: m.reason,
    })?;
    // SQLite's iterator never stops on a header without changes, so neither does the survey.
    sections.retain(|s| s.changes > 0);
    Ok(stream_tables(&sections))
}

fn merge(tables: &mut HashMap<String, TableInfo>, name: String, run: TableInfo) {
    tables
        .entry(name)
        .and_modify(|t| t.changes += run.changes)
        .or_insert(run);
}

/// Checks each table against the target schema as SQLite does (same name, at least as many
/// columns, same primary key columns), so skipped tables can be reported.
pub(crate) fn compatibility(
    db: Handle<'_>,
    tables: &HashMap<String, TableInfo>,
) -> Result<HashMap<String, (usize, Option<SkipReason>)>, Error> {
    let mut out = HashMap::with_capacity(tables.len());
    for (name, info) in tables {
        let reason = table_compatibility(db, name, info)?;
        out.insert(name.clone(), (info.changes, reason));
    }
    Ok(out)
}

/// [`compatibility`], with each table's key layout kept on the connection while its schema does
/// not change ([`PinnedGuard::schema_cached`]): reading it anew costs about a tenth of applying
/// a one-row changeset (SQLite prepares a pragma anew on every run).
pub(super) async fn compatibility_cached(
    guard: &mut PinnedGuard,
    tables: &HashMap<String, TableInfo>,
) -> Result<HashMap<String, (usize, Option<SkipReason>)>, Error> {
    let mut out = HashMap::with_capacity(tables.len());
    for (name, info) in tables {
        let pk = crate::capture::table_pk(guard, name).await?;
        out.insert(name.clone(), (info.changes, compatible(pk, info)));
    }
    Ok(out)
}

/// Why changes recorded with `info`'s header cannot apply to `main.<name>`, if they cannot.
pub(crate) fn table_compatibility(
    db: Handle<'_>,
    name: &str,
    info: &TableInfo,
) -> Result<Option<SkipReason>, Error> {
    Ok(compatible(ffi::table_pk(db, name)?, info))
}

/// Why changes recorded with `info`'s header cannot apply to a table whose key layout is `pk`
/// (see [`ffi::table_pk`]; `None`: no such table), if they cannot.
fn compatible(pk: Option<Vec<u8>>, info: &TableInfo) -> Option<SkipReason> {
    let Some(mut pk) = pk else {
        return Some(SkipReason::Missing);
    };
    // SQLite 3.42+ keys a table without a PRIMARY KEY by an implicit leading `_rowid_` column,
    // in recording and in applying alike.
    if pk.iter().all(|&p| p == 0) && Capability::ImplicitPrimaryKey.is_available() {
        pk.insert(0, 1);
    }
    if pk.len() < info.n_col {
        Some(SkipReason::TooFewColumns {
            expected: info.n_col,
            found: pk.len(),
        })
    } else if pk[..info.n_col] != info.pk[..] {
        Some(SkipReason::PrimaryKeyMismatch)
    } else {
        None
    }
}
