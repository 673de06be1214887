//! A bounds-checked walk over the changeset/patchset wire format, run on untrusted bytes before
//! any of them reach SQLite.
//!
//! SQLite's own iterator is not safe on arbitrary input: a table header whose name has no NUL
//! terminator makes `sessionChangesetBufferTblhdr` loop forever (seen with SQLite 3.51.3), for
//! in-memory blobs at once and for streams once the input ends. This walk checks every length
//! against the input, so SQLite only ever iterates blobs whose structure is sound; it leaves
//! semantic checks (e.g. no undefined field in an insert) to SQLite, which reports those as
//! errors.
//!
//! The walk is incremental ([`Checker::feed`] takes the input in chunks of any size) so that a
//! stream can be checked as it passes through to SQLite: a stream reader hands SQLite only bytes
//! that extend a well-formed prefix, and reports an error instead of the end of input while a
//! change or table header is incomplete, so SQLite never sees a truncated one either.

use std::fmt;
use std::io::{self, Read, Write};

/// Op bytes (SQLITE_INSERT, SQLITE_UPDATE, SQLITE_DELETE).
const INSERT: u8 = 0x12;
const UPDATE: u8 = 0x17;
const DELETE: u8 = 0x09;
/// The table header marker of a changeset and of a patchset.
pub(crate) const CHANGESET: u8 = b'T';
pub(crate) const PATCHSET: u8 = b'P';
/// The most columns a table header may claim (SQLite treats more as corrupt).
const MAX_COLUMNS: u64 = 65_536;
/// The longest text or blob value SQLite's reader handles (it reads lengths into an `int`).
const MAX_VALUE_LEN: u64 = i32::MAX as u64;

/// Where and why a blob is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed {
    /// Index of the change being read (0-based; table headers belong to the change after them).
    pub(crate) entry: usize,
    /// Byte offset of the problem.
    pub(crate) offset: usize,
    /// What is wrong.
    pub(crate) reason: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (at change #{}, byte {})",
            self.reason, self.entry, self.offset
        )
    }
}

impl std::error::Error for Malformed {}

/// One table section of the input: its header, and how many changes followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    /// The table name (lossily decoded).
    pub(crate) table: String,
    /// Per column: its primary-key position, or 0.
    pub(crate) pk: Vec<u8>,
    /// The changes in this section.
    pub(crate) changes: usize,
}

/// Where the walk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a table header (at the start), or between two changes: a marker, an op or the end.
    Boundary,
    /// In a table header's column count varint.
    ColumnCount { value: u64, read: u8 },
    /// In a table header's primary-key flags.
    PkFlags { left: usize },
    /// In a table header's NUL-terminated name.
    Name { len: usize },
    /// After an op byte, expecting the indirect flag.
    Indirect { op: u8 },
    /// Expecting a field's type byte.
    FieldType,
    /// In an 8-byte integer or real; a real in a key column is kept (`bits`) to refuse a NaN.
    Number { left: u8, key_real: bool, bits: u64 },
    /// In a text or blob length varint.
    Length { value: u64, read: u8 },
    /// In a text or blob value.
    Payload { left: u64 },
}

/// Which fields of the current record are primary-key columns that must hold a value (neither
/// undefined nor NULL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyRecord {
    /// None (a changeset UPDATE's new record, where a key column is normally undefined).
    None,
    /// A changeset UPDATE's new record, whose key columns may stay undefined but, if set, must
    /// not be NULL (or a NaN): merging the update into an insert (a change group, a rebase)
    /// would make that the row's key.
    NewRecord,
    /// Every field (a patchset DELETE, which holds only the key).
    All,
    /// The fields whose column has a non-zero key flag.
    Flags,
}

/// An incremental structure check of a changeset or patchset.
#[derive(Debug, Clone)]
pub(crate) struct Checker {
    /// `T` or `P`; `None` until the first byte decides (for streams of either kind).
    marker: Option<u8>,
    state: State,
    /// Offset of the next byte.
    offset: usize,
    /// Changes completed.
    entry: usize,
    /// Whether a table header has been read (so an op byte may follow).
    in_table: bool,
    /// Columns and primary-key columns of the current table.
    n_col: usize,
    n_pk: usize,
    /// Fields left in the current record, and records left in the change after it.
    fields_left: usize,
    records_left: u8,
    /// The current table's primary-key flags.
    keys: Vec<u8>,
    /// The index of the current field in its record, and which fields of the record are key
    /// columns that must hold a value.
    field: usize,
    key_record: KeyRecord,
    /// The first error; the checker stays failed.
    failed: Option<Malformed>,
    /// Table sections seen, when surveying.
    survey: Option<Vec<Section>>,
    /// The header being read, when surveying.
    pk: Vec<u8>,
    name: Vec<u8>,
}

impl Checker {
    /// A checker for a changeset (`Some(b'T')`), a patchset (`Some(b'P')`), or either (`None`:
    /// the first byte decides, and every later header must agree).
    pub(crate) fn new(marker: Option<u8>) -> Self {
        Checker {
            marker,
            state: State::Boundary,
            offset: 0,
            entry: 0,
            in_table: false,
            n_col: 0,
            n_pk: 0,
            fields_left: 0,
            records_left: 0,
            keys: Vec::new(),
            field: 0,
            key_record: KeyRecord::None,
            failed: None,
            survey: None,
            pk: Vec::new(),
            name: Vec::new(),
        }
    }

    /// Also records each table section (name, key, change count), for [`Self::sections`].
    pub(crate) fn surveying(mut self) -> Self {
        self.survey = Some(Vec::new());
        self
    }

    /// `T` or `P`, once known.
    pub(crate) fn marker(&self) -> Option<u8> {
        self.marker
    }

    /// The table sections seen so far (empty unless [`Self::surveying`]).
    pub(crate) fn sections(&self) -> &[Section] {
        self.survey.as_deref().unwrap_or_default()
    }

    fn fail(&mut self, offset: usize, reason: impl Into<String>) -> Result<(), Malformed> {
        let malformed = Malformed {
            entry: self.entry,
            offset,
            reason: reason.into(),
        };
        self.failed = Some(malformed.clone());
        Err(malformed)
    }

    /// Checks the next `bytes` of the input. After an error every call returns it again.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), Malformed> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        let mut i = 0;
        while i < bytes.len() {
            let at = self.offset + i;
            match self.state {
                // Runs of bytes whose values do not matter are skipped in one step.
                State::PkFlags { left } => {
                    let take = left.min(bytes.len() - i);
                    let flags = &bytes[i..i + take];
                    self.n_pk += flags.iter().filter(|&&f| f != 0).count();
                    self.keys.extend_from_slice(flags);
                    if self.survey.is_some() {
                        self.pk.extend_from_slice(flags);
                    }
                    i += take;
                    self.state = if take == left {
                        State::Name { len: 0 }
                    } else {
                        State::PkFlags { left: left - take }
                    };
                }
                State::Name { len } => {
                    let rest = &bytes[i..];
                    match rest.iter().position(|&b| b == 0) {
                        Some(0) if len == 0 => return self.fail(at, "empty table name"),
                        Some(end) => {
                            if self.survey.is_some() {
                                self.name.extend_from_slice(&rest[..end]);
                                self.start_section();
                            }
                            i += end + 1;
                            self.in_table = true;
                            self.state = State::Boundary;
                        }
                        None => {
                            if self.survey.is_some() {
                                self.name.extend_from_slice(rest);
                            }
                            i = bytes.len();
                            self.state = State::Name {
                                len: len + rest.len(),
                            };
                        }
                    }
                }
                State::Number {
                    left,
                    key_real,
                    mut bits,
                } => {
                    let take = usize::from(left).min(bytes.len() - i);
                    if key_real {
                        bits = bytes[i..i + take]
                            .iter()
                            .fold(bits, |bits, &b| bits << 8 | u64::from(b));
                    }
                    i += take;
                    // `take <= left`, which is at most 8.
                    let left = left - u8::try_from(take).unwrap_or(left);
                    if left > 0 {
                        self.state = State::Number {
                            left,
                            key_real,
                            bits,
                        };
                    } else if key_real && f64::from_bits(bits).is_nan() {
                        let field = self.field;
                        return self.fail(at + take - 9, nan_key(field));
                    } else {
                        self.end_field();
                    }
                }
                State::Payload { left } => {
                    let available = (bytes.len() - i) as u64;
                    let take = left.min(available);
                    // `take <= available`, a usize.
                    i += usize::try_from(take).unwrap_or(usize::MAX);
                    if take == left {
                        self.end_field();
                    } else {
                        self.state = State::Payload { left: left - take };
                    }
                }
                _ => {
                    self.byte(at, bytes[i])?;
                    i += 1;
                }
            }
        }
        self.offset += bytes.len();
        Ok(())
    }

    /// One byte in a state that looks at every byte.
    fn byte(&mut self, at: usize, b: u8) -> Result<(), Malformed> {
        match self.state {
            State::Boundary => {
                let marker = match self.marker {
                    Some(marker) => marker,
                    None if b == CHANGESET || b == PATCHSET => {
                        self.marker = Some(b);
                        b
                    }
                    None => {
                        return self.fail(
                            at,
                            format!("expected a table header ('T' or 'P'), found byte {b:#04x}"),
                        );
                    }
                };
                if b == marker {
                    self.state = State::ColumnCount { value: 0, read: 0 };
                    self.n_pk = 0;
                    self.pk.clear();
                    self.keys.clear();
                    self.name.clear();
                } else if !self.in_table {
                    return self.fail(
                        at,
                        format!(
                            "expected a table header ({:?}), found byte {b:#04x}",
                            char::from(marker)
                        ),
                    );
                } else if matches!(b, INSERT | UPDATE | DELETE) {
                    self.state = State::Indirect { op: b };
                } else {
                    return self.fail(at, format!("unknown op byte {b:#04x}"));
                }
            }
            State::ColumnCount { value, read } => match varint_step(value, read, b) {
                Varint::More(value) => {
                    self.state = State::ColumnCount {
                        value,
                        read: read + 1,
                    }
                }
                Varint::Done(n_col) => {
                    if n_col == 0 || n_col > MAX_COLUMNS {
                        return self.fail(at + 1, format!("table header claims {n_col} columns"));
                    }
                    // At most MAX_COLUMNS.
                    self.n_col = usize::try_from(n_col).unwrap_or(usize::MAX);
                    self.state = State::PkFlags { left: self.n_col };
                }
            },
            State::Indirect { op } => {
                let patchset = self.marker == Some(PATCHSET);
                let (records, fields) = match (op, patchset) {
                    (UPDATE, false) => (2, self.n_col),
                    (DELETE, true) => (1, self.n_pk),
                    _ => (1, self.n_col),
                };
                self.records_left = records - 1;
                self.fields_left = fields;
                // The first record names the row (an UPDATE's old record; a patchset UPDATE
                // has only one, a patchset DELETE only the key): SQLite reads its key columns
                // as values without checking (a NULL dereference in sessionApplyOneOp, reads
                // out of bounds in sessionChangeHash via concat and change groups).
                self.field = 0;
                self.key_record = if (op, patchset) == (DELETE, true) {
                    KeyRecord::All
                } else {
                    KeyRecord::Flags
                };
                self.state = State::FieldType;
                if fields == 0 {
                    self.end_change();
                }
            }
            State::FieldType => match b {
                0x00 | 0x05 if self.is_key_field() => {
                    let what = if b == 0x00 { "undefined" } else { "NULL" };
                    return self.fail(at, format!("primary-key column {} is {what}", self.field));
                }
                0x05 if self.is_new_key_field() => {
                    return self.fail(
                        at,
                        format!("an update sets primary-key column {} to NULL", self.field),
                    );
                }
                0x00 | 0x05 => self.end_field(),
                0x01 | 0x02 => {
                    self.state = State::Number {
                        left: 8,
                        key_real: b == 0x02 && (self.is_key_field() || self.is_new_key_field()),
                        bits: 0,
                    }
                }
                0x03 | 0x04 => self.state = State::Length { value: 0, read: 0 },
                other => return self.fail(at, format!("unknown field type {other:#04x}")),
            },
            State::Length { value, read } => match varint_step(value, read, b) {
                Varint::More(value) => {
                    self.state = State::Length {
                        value,
                        read: read + 1,
                    }
                }
                Varint::Done(len) if len > MAX_VALUE_LEN => {
                    return self.fail(
                        at + 1,
                        format!("a text/blob length of {len} bytes is more than SQLite reads"),
                    );
                }
                Varint::Done(0) => self.end_field(),
                Varint::Done(len) => self.state = State::Payload { left: len },
            },
            State::PkFlags { .. }
            | State::Name { .. }
            | State::Number { .. }
            | State::Payload { .. } => {
                unreachable!("`feed` consumes these states in bulk")
            }
        }
        Ok(())
    }

    fn start_section(&mut self) {
        if let Some(survey) = self.survey.as_mut() {
            survey.push(Section {
                table: String::from_utf8_lossy(&self.name).into_owned(),
                pk: std::mem::take(&mut self.pk),
                changes: 0,
            });
        }
    }

    /// Whether the current field is a key column of a record that names the row.
    fn is_key_field(&self) -> bool {
        match self.key_record {
            KeyRecord::None | KeyRecord::NewRecord => false,
            KeyRecord::All => true,
            KeyRecord::Flags => self.keys.get(self.field).is_some_and(|&f| f != 0),
        }
    }

    /// Whether the current field is a key column that an UPDATE's new record sets.
    fn is_new_key_field(&self) -> bool {
        self.key_record == KeyRecord::NewRecord
            && self.keys.get(self.field).is_some_and(|&f| f != 0)
    }

    fn end_field(&mut self) {
        self.state = State::FieldType;
        self.fields_left -= 1;
        self.field += 1;
        if self.fields_left > 0 {
            return;
        }
        if self.records_left > 0 {
            // A changeset UPDATE's new record: its key columns are undefined unless changed.
            self.records_left -= 1;
            self.fields_left = self.n_col;
            self.field = 0;
            self.key_record = KeyRecord::NewRecord;
            return;
        }
        self.end_change();
    }

    fn end_change(&mut self) {
        self.state = State::Boundary;
        self.entry += 1;
        if let Some(section) = self.survey.as_mut().and_then(|s| s.last_mut()) {
            section.changes += 1;
        }
    }

    /// The input ended: `Ok` with the number of changes if it ended between two changes.
    pub(crate) fn finish(&self) -> Result<usize, Malformed> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        let truncated = match self.state {
            State::Boundary => return Ok(self.entry),
            State::ColumnCount { .. } => "truncated: expected the column count".to_owned(),
            State::PkFlags { left } => format!(
                "truncated: the primary-key flags need {} bytes, {} left",
                self.n_col,
                self.n_col - left
            ),
            State::Name { .. } => "table name is not NUL-terminated".to_owned(),
            State::Indirect { .. } => "truncated: expected the indirect flag".to_owned(),
            State::FieldType => "truncated: expected a field type".to_owned(),
            State::Number { left, .. } => format!("truncated: a number needs {left} more bytes"),
            State::Length { .. } => "truncated: expected a text/blob length".to_owned(),
            State::Payload { left } => {
                format!("truncated: a text/blob value needs {left} more bytes")
            }
        };
        Err(Malformed {
            entry: self.entry,
            offset: self.offset,
            reason: truncated,
        })
    }
}

enum Varint {
    More(u64),
    Done(u64),
}

/// One byte of an SQLite varint: up to 8 bytes of 7 bits (high bit: more follow), then one of 8.
fn varint_step(value: u64, read: u8, b: u8) -> Varint {
    if read == 8 {
        return Varint::Done((value << 8) | u64::from(b));
    }
    let value = (value << 7) | u64::from(b & 0x7f);
    if b & 0x80 == 0 {
        Varint::Done(value)
    } else {
        Varint::More(value)
    }
}

/// The tables with at least one change in a whole blob of either kind, each once, in the order
/// of their first changes; `None` if a [`Checker`] would refuse the blob. [`sections`] without
/// the sections: what a log entry lists, with no allocation beyond the names.
pub(crate) fn changed_tables(bytes: &[u8]) -> Option<Vec<String>> {
    let mut tables: Vec<String> = Vec::new();
    // The name of the last header, until its section's first change.
    let mut pending: Option<&[u8]> = None;
    walk(bytes, |item| match item {
        Item::Header { name, .. } => pending = Some(name),
        Item::Change(_) => {
            if let Some(name) = pending.take() {
                let name = String::from_utf8_lossy(name);
                if !tables.iter().any(|t| *t == name) {
                    tables.push(name.into_owned());
                }
            }
        }
    })?;
    Some(tables)
}

/// The table sections of a whole blob of either kind, as a surveying [`Checker`] fed `bytes`
/// lists them (sections without changes included), or `None` if that checker would refuse the
/// blob. The same checks as the checker's, as one tight loop over one slice instead of a state
/// machine stepped byte by byte: several times faster, which matters on apply's hot path (every
/// apply surveys its blob). `None` says nothing about why; the checker names the problem.
pub(crate) fn sections(bytes: &[u8]) -> Option<Vec<Section>> {
    let mut sections: Vec<Section> = Vec::new();
    // The changes of the last section, stored when the next one starts and at the end.
    let mut changes = 0;
    walk(bytes, |item| match item {
        Item::Header { name, pk } => start_section(&mut sections, &mut changes, name, pk),
        Item::Change(_) => changes += 1,
    })?;
    if let Some(section) = sections.last_mut() {
        section.changes = changes;
    }
    Some(sections)
}

/// The table sections of a whole blob of either kind (see [`sections`]), or why a surveying
/// [`Checker`] refuses it.
pub(crate) fn checked_sections(bytes: &[u8]) -> Result<Vec<Section>, Malformed> {
    if let Some(sections) = sections(bytes) {
        return Ok(sections);
    }
    let mut checker = Checker::new(None).surveying();
    checker.feed(bytes)?;
    checker.finish()?;
    Ok(checker.sections().to_vec())
}

/// For [`sections`]: stores the changes of the section before (if any) and starts one. Kept out
/// of line, so that the per-change step of the walk stays small.
#[inline(never)]
fn start_section(sections: &mut Vec<Section>, changes: &mut usize, name: &[u8], pk: &[u8]) {
    if let Some(section) = sections.last_mut() {
        section.changes = *changes;
    }
    *changes = 0;
    sections.push(Section {
        table: String::from_utf8_lossy(name).into_owned(),
        pk: pk.to_vec(),
        changes: 0,
    });
}

/// One change of a well-formed changeset or patchset, as [`walk`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChangeAt {
    /// The op byte (`0x12` INSERT, `0x17` UPDATE, `0x09` DELETE).
    pub(crate) op: u8,
    /// Whether the indirect flag is set (SQLite treats any non-zero byte as set).
    pub(crate) indirect: bool,
    /// Offset of the op byte.
    pub(crate) start: usize,
    /// Offset of the first field of its first record.
    pub(crate) record: usize,
    /// Offset after its last record.
    pub(crate) end: usize,
}

impl ChangeAt {
    /// Whether it is a DELETE.
    pub(crate) fn is_delete(&self) -> bool {
        self.op == DELETE
    }
}

/// What [`walk`] hands its visitor, in blob order.
pub(crate) enum Item<'a> {
    /// A table header: the table's name (without the NUL) and per column its key position or 0.
    Header { name: &'a [u8], pk: &'a [u8] },
    /// A change of the table of the last header.
    Change(ChangeAt),
}

/// Walks a whole blob of either kind with the checks of [`Checker`], handing every table header
/// and change to `visit`; `None` if the checker would refuse the blob (after visiting the items
/// before the problem).
pub(crate) fn walk<'a>(bytes: &'a [u8], mut visit: impl FnMut(Item<'a>)) -> Option<()> {
    let marker = match bytes.first() {
        None => return Some(()),
        Some(&b) if b == CHANGESET || b == PATCHSET => b,
        Some(_) => return None,
    };
    let patchset = marker == PATCHSET;
    let mut in_table = false;
    let mut keys: &[u8] = &[];
    let mut n_pk = 0;
    let mut key_span = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == marker {
            let (n_col, next) = varint(bytes, i + 1)?;
            if n_col == 0 || n_col > MAX_COLUMNS {
                return None;
            }
            // At most MAX_COLUMNS.
            let n_col = usize::try_from(n_col).ok()?;
            keys = bytes.get(next..next.checked_add(n_col)?)?;
            n_pk = keys.iter().filter(|&&f| f != 0).count();
            // Fields after the last key column are only skipped (see `record`).
            key_span = keys
                .iter()
                .rposition(|&f| f != 0)
                .map_or(0, |last| last + 1);
            let name = bytes.get(next + n_col..)?;
            let end = name.iter().position(|&b| b == 0)?;
            if end == 0 {
                return None;
            }
            in_table = true;
            visit(Item::Header {
                name: &name[..end],
                pk: keys,
            });
            i = next + n_col + end + 1;
            continue;
        }
        // An op byte needs a table header before it.
        if !in_table {
            return None;
        }
        // After the op byte, the indirect flag (any value), then the records.
        let fields = i + 2;
        let end = match (b, patchset) {
            (INSERT | DELETE, false) | (INSERT | UPDATE, true) => {
                record(bytes, fields, keys.len(), Keys::Flags(&keys[..key_span]))?
            }
            (UPDATE, false) => {
                let new = record(bytes, fields, keys.len(), Keys::Flags(&keys[..key_span]))?;
                record(bytes, new, keys.len(), Keys::New(&keys[..key_span]))?
            }
            (DELETE, true) => record(bytes, fields, n_pk, Keys::All)?,
            _ => return None,
        };
        visit(Item::Change(ChangeAt {
            op: b,
            indirect: bytes.get(i + 1).is_some_and(|&f| f != 0),
            start: i,
            record: fields,
            end,
        }));
        i = end;
    }
    Some(())
}

/// The serialized key fields of the record that starts at `i` in a blob [`walk`] accepted, one
/// after the other: what SQLite compares byte for byte to tell whether two changes name the same
/// row. `flags` are the table's key flags (every field a key field for a patchset DELETE).
pub(crate) fn key_fields(bytes: &[u8], mut i: usize, flags: &[u8]) -> Vec<u8> {
    let mut key = Vec::new();
    for &flag in flags {
        let Some(end) = field_end(bytes, i) else {
            break;
        };
        if flag != 0 {
            key.extend_from_slice(&bytes[i..end]);
        }
        i = end;
    }
    key
}

/// The offset after the field whose type byte is at `i` (its payload unchecked against the end
/// of `bytes`), or `None` if its type or length is malformed.
#[inline]
fn field_end(bytes: &[u8], i: usize) -> Option<usize> {
    let i = i + 1;
    match *bytes.get(i - 1)? {
        0x00 | 0x05 => Some(i),
        0x01 | 0x02 => Some(i + 8),
        0x03 | 0x04 => {
            let (len, next) = match bytes.get(i) {
                // The usual one-byte length, without the general loop.
                Some(&len) if len < 0x80 => (u64::from(len), i + 1),
                _ => varint(bytes, i)?,
            };
            if len > MAX_VALUE_LEN {
                return None;
            }
            // At most MAX_VALUE_LEN.
            next.checked_add(usize::try_from(len).ok()?)
        }
        _ => None,
    }
}

/// [`FIELD_SIZE`] of a text or blob type: a length follows.
const TEXT_OR_BLOB: usize = 0;
/// [`FIELD_SIZE`] of a byte that is no field type: larger than the distance from any offset
/// within a slice to its end (a slice is at most `isize::MAX` bytes long) and small enough not
/// to overflow when added to one, so that the walk steps past the end and fails there, without
/// a test of its own per field.
const NO_TYPE: usize = usize::MAX / 2 + 1;
/// Per type byte: the size of a field of that type with its type byte, when fixed (1 for
/// undefined and NULL, 9 for an integer or a real), else [`TEXT_OR_BLOB`] or [`NO_TYPE`].
static FIELD_SIZE: [usize; 256] = {
    let mut sizes = [NO_TYPE; 256];
    sizes[0x00] = 1;
    sizes[0x05] = 1;
    sizes[0x01] = 9;
    sizes[0x02] = 9;
    sizes[0x03] = TEXT_OR_BLOB;
    sizes[0x04] = TEXT_OR_BLOB;
    sizes
};

/// The offset after the field at `i` whose type byte `ty` is (past the end of `bytes` if its
/// payload runs past it or `ty` is no type; see [`NO_TYPE`]), or `None` if its length is
/// malformed or missing: [`field_end`] with the size looked up rather than matched, and no test
/// beyond the one for a text or blob.
#[inline(always)]
fn skip_field(bytes: &[u8], i: usize, ty: u8) -> Option<usize> {
    let size = FIELD_SIZE[usize::from(ty)];
    if size != TEXT_OR_BLOB {
        // `i` is within `bytes`, so this cannot overflow (see `NO_TYPE`).
        return Some(i + size);
    }
    match bytes.get(i + 1) {
        // The usual one-byte length, without the general loop.
        Some(&len) if len < 0x80 => Some(i + 2 + usize::from(len)),
        _ => field_end(bytes, i),
    }
}

/// Which fields of a record [`record`] checks as key columns that must hold a value (see
/// [`KeyRecord`]).
#[derive(Clone, Copy)]
enum Keys<'a> {
    /// An UPDATE's new record: key columns (per flag) may be undefined, not NULL or a NaN.
    New(&'a [u8]),
    All,
    /// Per column up to the last key column: its primary-key flag.
    Flags(&'a [u8]),
}

/// The offset after a record of `fields` fields that starts at `i`, or `None` if it is
/// malformed or runs past the end of `bytes`. The fields up to the last key column (the length
/// of the flags in `keys`; every field for [`Keys::All`]) have their key values checked; the
/// others, usually most of them, are only skipped by their types and lengths. Inlined: it runs
/// once or twice per change of every blob an apply surveys.
#[inline(always)]
fn record(bytes: &[u8], mut i: usize, fields: usize, keys: Keys<'_>) -> Option<usize> {
    let (checked, new) = match keys {
        Keys::All => (fields, false),
        Keys::Flags(flags) => (flags.len().min(fields), false),
        Keys::New(flags) => (flags.len().min(fields), true),
    };
    for field in 0..checked {
        // A number or payload that ran past the end makes this fail, or the check at the end.
        let ty = *bytes.get(i)?;
        let key = match keys {
            Keys::All => true,
            Keys::Flags(flags) | Keys::New(flags) => flags[field] != 0,
        };
        if key {
            match ty {
                0x00 if new => {}
                0x00 | 0x05 => return None,
                0x02 => {
                    let real = bytes.get(i + 1..i + 9)?;
                    if f64::from_be_bytes(real.try_into().ok()?).is_nan() {
                        return None;
                    }
                }
                _ => {}
            }
        }
        i = skip_field(bytes, i, ty)?;
    }
    for _ in checked..fields {
        i = skip_field(bytes, i, *bytes.get(i)?)?;
    }
    // The last field must end within `bytes`; a record of no field ends after the indirect
    // flag, which must be there.
    (i <= bytes.len()).then_some(i)
}

/// Why a key column holding a NaN is refused: SQLite reads a NaN as NULL (it cannot store one),
/// so its own invert of such a change writes a NULL key, which other calls read out of bounds.
/// SQLite never writes a NaN into a changeset (found by the `invert` fuzz target).
fn nan_key(field: usize) -> String {
    format!("primary-key column {field} is a NaN, which SQLite reads as NULL")
}

/// The varint at `i` and the offset after it, or `None` if `bytes` ends first.
pub(crate) fn varint(bytes: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let mut value = 0;
    for read in 0..9 {
        let b = *bytes.get(i)?;
        i += 1;
        match varint_step(value, read, b) {
            Varint::Done(value) => return Some((value, i)),
            Varint::More(more) => value = more,
        }
    }
    // `varint_step` is done at the ninth byte.
    None
}

/// Checks the structure of `bytes` as a changeset (`marker` `b'T'`) or patchset (`b'P'`) and
/// returns the number of changes.
pub(crate) fn check(bytes: &[u8], marker: u8) -> Result<usize, Malformed> {
    let mut checker = Checker::new(Some(marker));
    checker.feed(bytes)?;
    checker.finish()
}

/// A reader that checks the structure of what passes through it, so that what it hands on is
/// always a well-formed prefix of a changeset or patchset, and its end is the end of a complete
/// one (otherwise it fails with an `InvalidData` error carrying the checker's finding).
pub(crate) struct Checked<R> {
    inner: R,
    checker: Checker,
}

impl<R> Checked<R> {
    /// Checks a changeset or a patchset, whichever the first byte says.
    pub(crate) fn new(inner: R) -> Self {
        Checked {
            inner,
            checker: Checker::new(None),
        }
    }

    /// Also records the table sections (see [`Checker::surveying`]).
    pub(crate) fn surveying(inner: R) -> Self {
        Checked {
            inner,
            checker: Checker::new(None).surveying(),
        }
    }

    /// Checks one kind (`T`: changeset, `P`: patchset) and records its table sections.
    pub(crate) fn surveying_kind(inner: R, marker: u8) -> Self {
        Checked {
            inner,
            checker: Checker::new(Some(marker)).surveying(),
        }
    }

    pub(crate) fn checker(&self) -> &Checker {
        &self.checker
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        let checked = if n == 0 {
            self.checker.finish().map(drop)
        } else {
            self.checker.feed(&buf[..n])
        };
        checked.map_err(|malformed| io::Error::new(io::ErrorKind::InvalidData, malformed))?;
        Ok(n)
    }
}

/// A writer that checks the structure of what passes through it as a changeset (`T`) or
/// patchset (`P`) before handing it on, for output SQLite builds without checking (a rebase): a
/// malformed change never reaches the inner writer; it fails with an `InvalidData` error
/// carrying the checker's finding, which [`Self::malformed`] keeps.
pub(crate) struct CheckedWriter<W> {
    inner: W,
    checker: Checker,
    malformed: Option<Malformed>,
}

impl<W> CheckedWriter<W> {
    pub(crate) fn new(inner: W, marker: u8) -> Self {
        CheckedWriter {
            inner,
            checker: Checker::new(Some(marker)),
            malformed: None,
        }
    }

    /// What made a write fail, if anything did.
    pub(crate) fn malformed(&mut self) -> Option<Malformed> {
        self.malformed.take()
    }

    /// The inner writer, once the output ended between two changes.
    pub(crate) fn finish(self) -> Result<W, Malformed> {
        self.checker.finish()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for CheckedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(malformed) = self.checker.feed(buf) {
            self.malformed.get_or_insert(malformed.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, malformed));
        }
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `T`, 2 columns (pk, other), table "t", one insert of (1, 'ab').
    const INSERT_ONE: &[u8] =
        b"T\x02\x01\x00t\x00\x12\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x03\x02ab";

    #[test]
    fn a_well_formed_changeset_passes() {
        assert_eq!(check(INSERT_ONE, b'T'), Ok(1));
        assert_eq!(check(b"", b'T'), Ok(0));
    }

    #[test]
    fn every_truncation_is_reported_with_its_offset() {
        const HEADER_LEN: usize = 6;
        assert_eq!(
            check(&INSERT_ONE[..HEADER_LEN], b'T'),
            Ok(0),
            "a header with no change"
        );
        for len in (1..INSERT_ONE.len()).filter(|&len| len != HEADER_LEN) {
            let err = check(&INSERT_ONE[..len], b'T').unwrap_err();
            assert!(err.offset <= len, "{len}: {err:?}");
        }
    }

    #[test]
    fn a_header_without_name_terminator_is_malformed() {
        let err = check(b"T\x7f\x7f\x7f", b'T').unwrap_err();
        assert!(
            err.reason.contains("truncated") || err.reason.contains("NUL"),
            "{err:?}"
        );
        let err = check(b"T\x01\x01abc", b'T').unwrap_err();
        assert_eq!(err.reason, "table name is not NUL-terminated");
    }

    #[test]
    fn wrong_marker_op_and_field_type_are_malformed() {
        assert!(check(INSERT_ONE, b'P').is_err());
        let mut bad_op = INSERT_ONE.to_vec();
        bad_op[6] = 0x42;
        assert_eq!(check(&bad_op, b'T').unwrap_err().offset, 6);
        let mut bad_type = INSERT_ONE.to_vec();
        bad_type[8] = 0x09;
        assert_eq!(
            check(&bad_type, b'T').unwrap_err().reason,
            "unknown field type 0x09"
        );
    }

    #[test]
    fn feeding_in_chunks_of_any_size_agrees_with_one_slice() {
        let mut two = INSERT_ONE.to_vec();
        two.extend_from_slice(&INSERT_ONE[6..]);
        for input in [INSERT_ONE, &two[..], &two[..two.len() - 3], b"T\x01\x01abc"] {
            let whole = check(input, b'T');
            for chunk in 1..=input.len() {
                let mut checker = Checker::new(Some(b'T'));
                let fed = input.chunks(chunk).try_for_each(|c| checker.feed(c));
                let result = fed.and_then(|()| checker.finish());
                assert_eq!(result, whole, "chunks of {chunk}");
            }
        }
    }

    #[test]
    fn either_kind_is_detected_from_the_first_byte_and_must_not_change() {
        let mut checker = Checker::new(None);
        checker.feed(INSERT_ONE).unwrap();
        assert_eq!(checker.marker(), Some(b'T'));
        let mut patch = INSERT_ONE.to_vec();
        patch[0] = b'P';
        let err = checker.feed(&patch).unwrap_err();
        assert_eq!(err.reason, "unknown op byte 0x50");
        assert!(Checker::new(None).feed(b"X").is_err());
        let mut checker = Checker::new(None);
        checker.feed(&patch).unwrap();
        assert_eq!((checker.marker(), checker.finish()), (Some(b'P'), Ok(1)));
    }

    #[test]
    fn a_survey_lists_each_table_section_with_its_changes() {
        let mut input = INSERT_ONE.to_vec();
        input.extend_from_slice(&INSERT_ONE[6..]);
        input.extend_from_slice(b"T\x01\x01u\x00\x09\x00\x03\x01k");
        let mut checker = Checker::new(Some(b'T')).surveying();
        for byte in &input {
            checker.feed(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(checker.finish(), Ok(3));
        let sections: Vec<_> = checker
            .sections()
            .iter()
            .map(|s| (s.table.as_str(), s.pk.clone(), s.changes))
            .collect();
        assert_eq!(sections, [("t", vec![1, 0], 2), ("u", vec![1], 1)]);
    }

    #[test]
    fn a_patchset_delete_records_only_the_key() {
        // Two columns, key on the first; the delete carries one field.
        assert_eq!(check(b"P\x02\x01\x00t\x00\x09\x00\x03\x01k", b'P'), Ok(1));
        assert!(check(b"T\x02\x01\x00t\x00\x09\x00\x03\x01k", b'T').is_err());
    }

    #[test]
    fn a_key_column_that_names_the_row_must_hold_a_value() {
        // t(k, v) with key k: an INSERT, a DELETE and an UPDATE's old record whose key is NULL
        // or undefined are refused; an UPDATE's new record leaves the key undefined.
        for bad in [
            &b"T\x02\x01\x00t\x00\x12\x00\x05\x05"[..],
            b"T\x02\x01\x00t\x00\x09\x00\x00\x05",
            b"T\x02\x01\x00t\x00\x17\x00\x05\x00\x00\x03\x01v",
        ] {
            let err = check(bad, b'T').unwrap_err();
            assert!(err.reason.starts_with("primary-key column 0 is"), "{err:?}");
            assert_eq!(err.offset, 8);
        }
        assert!(check(b"P\x02\x01\x00t\x00\x09\x00\x05", b'P').is_err());
        let update = b"T\x02\x01\x00t\x00\x17\x00\x03\x01k\x05\x00\x03\x01v";
        assert_eq!(check(update, b'T'), Ok(1));
    }

    /// What a surveying checker fed `input` in one slice lists, or `None` if it refuses it.
    fn checker_sections(input: &[u8]) -> Option<Vec<Section>> {
        let mut checker = Checker::new(None).surveying();
        checker.feed(input).ok()?;
        checker.finish().ok()?;
        Some(checker.sections().to_vec())
    }

    #[test]
    fn the_whole_blob_walk_agrees_with_the_checker() {
        let mut two_tables = INSERT_ONE.to_vec();
        two_tables.extend_from_slice(&INSERT_ONE[6..]);
        two_tables.extend_from_slice(b"T\x01\x01u\x00\x09\x00\x03\x01k");
        // t(k, i, r) keyed on k: an UPDATE with integer, real and NULL old values.
        let mut update = b"T\x03\x01\x00\x00t\x00\x17\x01\x01".to_vec();
        update.extend_from_slice(&7i64.to_be_bytes());
        update.push(0x02);
        update.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        update.extend_from_slice(b"\x05\x00\x01");
        update.extend_from_slice(&8i64.to_be_bytes());
        update.push(0x00);
        // A 200-byte text, whose length takes two varint bytes.
        let mut long_text = b"T\x01\x01t\x00\x12\x00\x03\x81\x48".to_vec();
        long_text.extend_from_slice(&[b'x'; 200]);
        let seeds: [&[u8]; 11] = [
            b"",
            INSERT_ONE,
            &two_tables,
            &update,
            &long_text,
            b"P\x02\x01\x00t\x00\x09\x00\x03\x01k\x17\x00\x03\x01k\x00",
            // A patchset DELETE in a table without a key carries no field.
            b"P\x01\x00t\x00\x09\x00\x09\x01",
            // A header with no change, then another table.
            b"T\x01\x01t\x00T\x01\x01u\x00\x12\x00\x05",
            // Refused: a patchset DELETE whose key is NULL, an UPDATE whose old key is undefined.
            b"P\x02\x01\x00t\x00\x09\x00\x05",
            b"T\x02\x01\x00t\x00\x17\x00\x00\x00\x00\x03\x01v",
            // Refused: a table of no column.
            b"T\x00t\x00",
        ];
        let mut inputs = Vec::new();
        for seed in seeds {
            inputs.extend((0..=seed.len()).map(|len| seed[..len].to_vec()));
            for at in 0..seed.len() {
                for byte in [
                    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x09, 0x12, 0x17, 0x50, 0x54, 0x7f, 0x80,
                    0xff,
                ] {
                    let mut mutated = seed.to_vec();
                    mutated[at] = byte;
                    inputs.push(mutated);
                }
            }
        }
        let mut accepted = 0;
        for input in &inputs {
            let expected = checker_sections(input);
            accepted += usize::from(expected.is_some());
            assert_eq!(sections(input), expected, "{input:02x?}");
        }
        // Both verdicts occur often enough for the comparison to mean something.
        let refused = inputs.len() - accepted;
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut huge = b"T\x01\x01t\x00\x12\x00\x03".to_vec();
        huge.extend_from_slice(&[0xff; 9]);
        // Longer than SQLite's `int` lengths: rejected without waiting for the bytes.
        let reason = check(&huge, b'T').unwrap_err().reason;
        assert!(reason.contains("more than SQLite reads"), "{reason}");
        // Within them (2^21 - 1) but past the end of the input: truncated.
        huge.truncate(huge.len() - 7);
        huge.push(0x7f);
        assert!(check(&huge, b'T').unwrap_err().reason.contains("truncated"));
        assert!(check(b"T\xff\xff\xff\xff\xff\xff\xff\xff\xff", b'T').is_err());
    }
}
