//! The `log_row` target: rows of the change log table (`liteorm_changes`) as replication reads
//! them back, whatever a damaged or hostile database file holds in their fields.
//!
//! The table is created by the real [`ChangeLog::open`], so it has whatever columns the current
//! schema has; an input gives a value to every one of them, in `PRAGMA table_info` order, so the
//! target keeps working when columns are added. Each input's rows are inserted in a transaction
//! that is rolled back afterwards, and read through the real paths: [`LogTableSource::fetch`]
//! (what a replica pulls), [`ChangeLog::entries`], [`ChangeLog::entry`] and
//! [`ChangeLog::last_seq`].

use liteorm_core::{Session, Value};
use liteorm_replication::{
    ChangeLog, ChangeSource, LogEntry, LogFilter, LogTableSource, Payload,
};
use liteorm_sqlite::{PinnedConnection, SqliteSession};

/// Reads typed SQLite values off the front of an input.
///
/// Each value starts with a tag byte: `0` NULL, `1` an integer (8 bytes, big-endian), `2` a real
/// (8 bytes), `3` text (a length byte, then that many bytes, stored as text even when they are
/// not UTF-8), `4` a blob (a length byte, then the bytes), `5` text of ASCII digits (a length
/// byte, then the bytes: how SQLite keeps an integer in a TEXT column); other tags wrap around.
/// A missing byte reads as 0.
pub struct Values<'a> {
    rest: &'a [u8],
}

/// One value of a [`Values`] input: what to bind, and whether SQL must cast it to text (bytes
/// that may not be UTF-8 become a TEXT value that way).
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The bound value.
    pub value: Value,
    /// Whether it is bound as `CAST(? AS TEXT)`.
    pub as_text: bool,
}

impl<'a> Values<'a> {
    /// Values read from `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Values { rest: input }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        head
    }

    fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn eight(&mut self) -> [u8; 8] {
        let mut out = [0; 8];
        let got = self.take(8);
        out[..got.len()].copy_from_slice(got);
        out
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next value.
    pub fn field(&mut self) -> Field {
        let plain = |value| Field {
            value,
            as_text: false,
        };
        match self.byte() % 6 {
            0 => plain(Value::Null),
            1 => plain(Value::Integer(i64::from_be_bytes(self.eight()))),
            2 => plain(Value::Real(f64::from_be_bytes(self.eight()))),
            tag => {
                let len = usize::from(self.byte());
                let bytes = self.take(len).to_vec();
                Field {
                    value: Value::Blob(bytes),
                    as_text: tag != 4,
                }
            }
        }
    }

    /// Encodes `fields` so that [`Values::field`] reads them back (lengths above 255 are cut).
    pub fn encode(fields: &[Field]) -> Vec<u8> {
        let mut out = Vec::new();
        for field in fields {
            match (&field.value, field.as_text) {
                (Value::Null, _) => out.push(0),
                (Value::Integer(i), _) => {
                    out.push(1);
                    out.extend_from_slice(&i.to_be_bytes());
                }
                (Value::Real(r), _) => {
                    out.push(2);
                    out.extend_from_slice(&r.to_be_bytes());
                }
                (Value::Text(t), _) => push_bytes(&mut out, 3, t.as_bytes()),
                (Value::Blob(b), true) => push_bytes(&mut out, 3, b),
                (Value::Blob(b), false) => push_bytes(&mut out, 4, b),
            }
        }
        out
    }
}

fn push_bytes(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    let len = bytes.len().min(255);
    out.push(tag);
    out.push(u8::try_from(len).unwrap_or(u8::MAX));
    out.extend_from_slice(&bytes[..len]);
}

/// The `log_row` target's database: one in-memory database with the real log table, on one
/// pinned connection, for the whole run.
pub struct LogRowTarget {
    runtime: tokio::runtime::Runtime,
    /// `None` only while dropping.
    pinned: Option<PinnedConnection>,
    session: SqliteSession,
    /// The log table's columns, in order.
    columns: Vec<String>,
}

impl LogRowTarget {
    /// Opens the database and creates the log table.
    ///
    /// # Panics
    /// If the runtime or the database cannot be set up (the fuzzer cannot run then).
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (pinned, session, columns) = runtime.block_on(async {
            let db = SqliteSession::open_in_memory()
                .await
                .expect("an in-memory database");
            ChangeLog::open(&db).await.expect("the log table");
            let pinned = db.pin().await.expect("a connection");
            let session = pinned.session();
            let rows = session
                .query("SELECT name FROM pragma_table_info('liteorm_changes')", &[])
                .await
                .expect("the log table's columns");
            let columns = rows
                .iter()
                .map(|row| row.try_get::<String>(0).expect("a column name"))
                .collect();
            (pinned, session, columns)
        });
        LogRowTarget {
            runtime,
            pinned: Some(pinned),
            session,
            columns,
        }
    }

    /// The log table's columns, in the order an input gives their values.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Byte 0 says how many rows (1 to 4) the rest of the input fills, column by column, with
    /// [`Values`]. Rows the table refuses (a seq that is not an integer, a NOT NULL column left
    /// NULL) end the input. Whatever the fields, reading them back ends in entries or an error;
    /// entries are consistent with the rows they come from.
    pub fn check(&self, data: &[u8]) {
        let Some((&count, rest)) = data.split_first() else {
            return;
        };
        let mut values = Values::new(rest);
        let rows: Vec<Vec<Field>> = (0..=count % 4)
            .map(|_| self.columns.iter().map(|_| values.field()).collect())
            .collect();
        self.runtime.block_on(async {
            self.session.execute("BEGIN", &[]).await.expect("begin");
            let mut stored = Vec::new();
            for row in &rows {
                if self.insert(row).await.is_err() {
                    break;
                }
                stored.push(row);
            }
            if !stored.is_empty() {
                self.read_back().await;
            }
            self.session
                .execute("ROLLBACK", &[])
                .await
                .expect("the rows are rolled back");
        });
    }

    async fn insert(&self, row: &[Field]) -> liteorm_core::Result<()> {
        let names = self.columns.join(", ");
        let slots: Vec<&str> = row
            .iter()
            .map(|f| if f.as_text { "CAST(? AS TEXT)" } else { "?" })
            .collect();
        let sql = format!(
            "INSERT INTO liteorm_changes({names}) VALUES ({})",
            slots.join(", ")
        );
        let params: Vec<Value> = row.iter().map(|f| f.value.clone()).collect();
        self.session.execute(&sql, &params).await.map(|_| ())
    }

    /// Reads the log through every path, checking what each returns.
    async fn read_back(&self) {
        let blobs: Vec<(i64, Option<Vec<u8>>)> = self
            .session
            .query("SELECT seq, CAST(blob AS BLOB) FROM liteorm_changes", &[])
            .await
            .expect("the raw rows")
            .iter()
            .map(|r| (r.try_get(0).expect("seq"), r.try_get(1).ok()))
            .collect();
        let consistent = |entry: &LogEntry| {
            let stored = blobs
                .iter()
                .find(|(seq, _)| u64::try_from(*seq).ok() == Some(entry.seq))
                .unwrap_or_else(|| panic!("entry {} is no stored row", entry.seq));
            let payload = match entry.payload() {
                Payload::Changes(changeset) => changeset.as_bytes(),
                Payload::Schema(sql) => {
                    assert!(entry.changeset.is_empty(), "a schema entry with changes");
                    sql.as_bytes()
                }
            };
            assert_eq!(
                stored.1.as_deref(),
                Some(payload),
                "entry {}: its payload is not the stored blob",
                entry.seq
            );
            assert!(
                entry
                    .tables
                    .iter()
                    .all(|t| !t.is_empty() && !t.contains(',')),
                "{:?}",
                entry.tables
            );
        };
        let mut source = LogTableSource::new(&self.session);
        if let Ok(entries) = source.fetch(0, 16).await {
            entries.iter().for_each(consistent);
            assert!(
                entries.windows(2).all(|w| w[0].seq < w[1].seq),
                "fetch returned entries out of seq order"
            );
        }
        let log = ChangeLog::open(&self.session).await.expect("the log opens");
        if let Ok(entries) = log.entries(&LogFilter::all()).await {
            entries.iter().for_each(consistent);
        }
        for (seq, _) in &blobs {
            if let Ok(seq) = u64::try_from(*seq)
                && let Ok(entry) = log.entry(seq).await
            {
                consistent(&entry);
                assert_eq!(entry.seq, seq);
            }
        }
        let _ = log.last_seq().await;
    }
}

impl Drop for LogRowTarget {
    fn drop(&mut self) {
        // Giving the connection back to its pool needs the runtime's context.
        let _context = self.runtime.enter();
        drop(self.pinned.take());
    }
}

impl Default for LogRowTarget {
    fn default() -> Self {
        Self::new()
    }
}
