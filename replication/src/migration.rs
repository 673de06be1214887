//! Schema migrations through the log: DDL run on the primary and logged as a schema entry in
//! the same transaction, and the checks that keep it inside that transaction.
//!
//! A schema entry carries the migration's SQL, not a changeset: every replica runs the same SQL
//! at the same point of the log, inside the transaction that moves its cursor (SQLite's DDL is
//! transactional), so a replica has the primary's schema exactly when it applies the entries
//! recorded under it.

use std::collections::BTreeSet;

use liteorm_core::Session;

use crate::log::append_schema;
use crate::{ChangeLog, Error, Meta, Result};

/// Statements that would end, nest or leave the migration's transaction, or act outside it.
const REFUSED: &[&str] = &[
    "BEGIN",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "VACUUM",
    "ATTACH",
    "DETACH",
];

impl ChangeLog {
    /// Runs the schema migration `sql` (one or more statements: `ALTER TABLE`, `CREATE` /
    /// `DROP` of tables, indexes, views and triggers, and data statements that go with them)
    /// and appends it to the log as an [`EntryKind::Schema`](crate::EntryKind::Schema) entry,
    /// **in the same transaction**: the seq order is the order in which replicas see data and
    /// schema changes, and a migration that fails changes and logs nothing. Returns its seq.
    ///
    /// Replicas run the same SQL when they reach the entry, on the same data, so it must be
    /// deterministic: a data statement in it (a backfill of a new column) is not captured as a
    /// changeset but run again on each replica, and must not depend on the time, randomness or
    /// anything outside the database.
    ///
    /// The migration runs inside a transaction, where SQLite ignores `PRAGMA foreign_keys`,
    /// and liteorm's connections enforce foreign keys. A table nothing references is rebuilt
    /// the 12-step way as it is (create the new table, copy, drop the old one, rename it,
    /// recreate its indexes, triggers and views). To rebuild a table that other tables
    /// reference, rebuild those in the same migration: create the new parent and copy its rows;
    /// create each new child table referencing the *new* parent and copy its rows; drop the old
    /// children, then the old parent; rename the new parent (SQLite updates the children's
    /// references), then the children. Dropping a parent that still has children would fail
    /// (or fire their `ON DELETE` actions). Transaction control (`BEGIN`, `COMMIT`, `SAVEPOINT`, ...), `VACUUM`,
    /// `ATTACH`, `DETACH` and `PRAGMA foreign_keys` are refused with
    /// [`Error::InvalidMigration`], as is a migration that changes one of liteorm's own tables.
    ///
    /// ```
    /// use liteorm_core::Session;
    /// use liteorm_replication::{ChangeLog, EntryKind, Meta};
    /// use liteorm_sqlite::SqliteSession;
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), liteorm_replication::Error> {
    /// let app = SqliteSession::open_in_memory().await?;
    /// app.execute_batch("CREATE TABLE account(id INTEGER PRIMARY KEY, balance INTEGER)")
    ///     .await?;
    /// let log = ChangeLog::open(&app).await?;
    /// let seq = log
    ///     .migrate(
    ///         Meta::actor("dba").reason("v2: notes"),
    ///         "ALTER TABLE account ADD COLUMN note TEXT DEFAULT ''; CREATE INDEX account_note ON account(note)",
    ///     )
    ///     .await?; // DDL and schema entry committed together; a failing migration changes nothing
    /// assert_eq!(log.entry(seq).await?.kind, EntryKind::Schema);
    /// let pruned = log.prune(seq).await?; // refused (PruneBlocked) while a known replica is behind
    /// assert_eq!(pruned.horizon, seq);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn migrate(&self, meta: Meta, sql: &str) -> Result<u64> {
        check(sql)?;
        let tx = self.session().begin_immediate().await?;
        let session = tx.session();
        let before = schema(session).await?;
        session.execute_batch(sql).await?;
        let after = schema(session).await?;
        let tables = changed_tables(&before, &after);
        if let Some(own) = tables.iter().find(|t| t.starts_with("liteorm_")) {
            // Dropping the transaction rolls the migration back.
            return Err(Error::InvalidMigration(format!(
                "it changes {own}, one of liteorm's own tables"
            )));
        }
        let entry = append_schema(&mut tx.session(), meta, tables, sql.to_owned()).await?;
        tx.commit().await?;
        let seq = entry.seq;
        tracing::info!(seq, tables = ?entry.tables, "schema migration logged");
        self.published(entry).await;
        Ok(seq)
    }
}

/// One row of `sqlite_schema`: type, name, table, SQL.
type SchemaRow = (String, String, String, Option<String>);

/// Every object of the `main` schema.
async fn schema(session: &dyn Session) -> Result<BTreeSet<SchemaRow>> {
    let rows = session
        .query(
            "SELECT type, name, tbl_name, sql FROM main.sqlite_schema",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect()
}

/// The tables (and views) whose object, or an index or trigger of theirs, appeared, changed or
/// disappeared; SQLite's internal tables left out.
fn changed_tables(before: &BTreeSet<SchemaRow>, after: &BTreeSet<SchemaRow>) -> Vec<String> {
    let tables: BTreeSet<&str> = before
        .symmetric_difference(after)
        .map(|(_, _, table, _)| table.as_str())
        .filter(|t| !t.starts_with("sqlite_"))
        .collect();
    tables.into_iter().map(str::to_owned).collect()
}

/// Refuses an empty migration and statements that would break its transaction (see
/// [`ChangeLog::migrate`]).
pub(crate) fn check(sql: &str) -> Result<()> {
    let statements = statements(sql);
    if statements.is_empty() {
        return Err(Error::InvalidMigration("the SQL has no statement".into()));
    }
    for words in &statements {
        let first = words.first().map(String::as_str).unwrap_or_default();
        if REFUSED.contains(&first) {
            return Err(Error::InvalidMigration(format!(
                "{first} is not allowed: the migration runs in the transaction that logs it"
            )));
        }
        if first == "PRAGMA" && words.iter().take(4).any(|w| w == "FOREIGN_KEYS") {
            return Err(Error::InvalidMigration(
                "PRAGMA foreign_keys has no effect inside the migration's transaction; rebuild \
                 the tables that reference a rebuilt table in the same migration (see \
                 ChangeLog::migrate)"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// A token of SQL text, as far as splitting statements needs.
#[derive(Debug, PartialEq)]
enum Token {
    /// A keyword or unquoted identifier, upper-cased.
    Word(String),
    /// `;`
    Semicolon,
    /// Anything else: punctuation, a literal, a quoted identifier.
    Other,
}

/// The statements of `sql`, each as the words (upper-cased) and other tokens it starts with,
/// split at `;`, except inside a `CREATE TRIGGER` body, which ends at
/// `END ;` (an `END` closing a `CASE` ends nothing). Comments, literals and quoted identifiers never split.
fn statements(sql: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut tokens_in_statement = 0_usize;
    let mut in_trigger = false;
    // Inside a trigger body, `CASE ... END` ends no statement.
    let mut open_cases = 0_usize;
    let mut previous_end = false;
    for token in tokens(sql) {
        match token {
            Token::Semicolon if in_trigger && !previous_end => {}
            Token::Semicolon => {
                if tokens_in_statement > 0 {
                    out.push(std::mem::take(&mut current));
                }
                tokens_in_statement = 0;
                in_trigger = false;
                open_cases = 0;
                previous_end = false;
                continue;
            }
            Token::Word(word) => {
                if tokens_in_statement < 4 {
                    if tokens_in_statement > 0
                        && current.first().is_some_and(|w| w == "CREATE")
                        && word == "TRIGGER"
                    {
                        in_trigger = true;
                    }
                    current.push(word.clone());
                }
                previous_end = false;
                if word == "CASE" {
                    open_cases += 1;
                } else if word == "END" {
                    match open_cases.checked_sub(1) {
                        Some(left) => open_cases = left,
                        None => previous_end = true,
                    }
                }
                tokens_in_statement += 1;
                continue;
            }
            Token::Other => {
                if tokens_in_statement < 4 {
                    current.push(String::new());
                }
            }
        }
        tokens_in_statement += 1;
        previous_end = false;
    }
    if tokens_in_statement > 0 {
        out.push(current);
    }
    out
}

/// The tokens of `sql`, whitespace and comments left out.
fn tokens(sql: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            ';' => out.push(Token::Semicolon),
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut star = false;
                for c in chars.by_ref() {
                    if star && c == '/' {
                        break;
                    }
                    star = c == '*';
                }
            }
            '\'' | '"' | '`' | '[' => {
                let close = if c == '[' { ']' } else { c };
                while let Some(c) = chars.next() {
                    // A doubled quote is one quote character inside the literal.
                    if c == close && (close == ']' || chars.next_if_eq(&close).is_none()) {
                        break;
                    }
                }
                out.push(Token::Other);
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii() => {
                let mut word = c.to_ascii_uppercase().to_string();
                while let Some(c) = chars
                    .next_if(|c| c.is_alphanumeric() || *c == '_' || *c == '$' || !c.is_ascii())
                {
                    word.push(c.to_ascii_uppercase());
                }
                out.push(Token::Word(word));
            }
            _ => out.push(Token::Other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firsts(sql: &str) -> Vec<String> {
        statements(sql)
            .into_iter()
            .map(|w| w.first().cloned().unwrap_or_default())
            .collect()
    }

    #[test]
    fn statements_split_at_semicolons_outside_literals_comments_and_trigger_bodies() {
        assert_eq!(
            firsts(
                "ALTER TABLE t ADD COLUMN a TEXT DEFAULT ';commit'; -- ; COMMIT\n\
                 /* ; END; */ CREATE TRIGGER tr AFTER INSERT ON t BEGIN \
                 UPDATE t SET a = CASE WHEN 1 THEN 'x' END; DELETE FROM u; END; \
                 create index \"i;x\" on t(a);;"
            ),
            ["ALTER", "CREATE", "CREATE"]
        );
        assert!(statements("  -- only a comment\n ;; ").is_empty());
    }

    #[test]
    fn transaction_control_and_foreign_keys_pragmas_are_refused() {
        for sql in [
            "ALTER TABLE t ADD COLUMN a; COMMIT",
            "end",
            "savepoint x; release x",
            "VACUUM",
            "ATTACH 'x.db' AS x",
            "PRAGMA foreign_keys = OFF; CREATE TABLE t(a)",
            "pragma main.foreign_keys=0",
            "",
            "-- nothing",
        ] {
            assert!(
                matches!(check(sql), Err(Error::InvalidMigration(_))),
                "{sql:?}"
            );
        }
        for sql in [
            "PRAGMA defer_foreign_keys = ON; CREATE TABLE t(a)",
            "CREATE TABLE t(\"begin\" TEXT, [commit] INT, `end` INT)",
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
        ] {
            assert!(check(sql).is_ok(), "{sql:?}");
        }
    }
}
