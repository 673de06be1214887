//! Building a changeset or patchset by hand, change by change, in SQLite's wire format.
//!
//! A [`Builder`] writes what SQLite's session module would write for the same changes: a table
//! header (`T` or `P`, the column count, the primary-key layout, the name) before each run of
//! changes to one table, then per change its op, its indirect flag and its records. Rebuilding
//! the changes SQLite decoded from a blob, in the same order, gives the same bytes.
//!
//! What it accepts is checked change by change against the rules SQLite's own writer follows
//! (an insert records every column, a key column is never undefined or NULL where it names the
//! row, ...), and [`Builder::finish`] validates the whole output as it would an untrusted blob.

use std::marker::PhantomData;
use std::sync::Arc;

use liteorm_core::Value;

use crate::Error;
use crate::change::{Change, ChangeOp};
use crate::changeset::sealed::{BlobKind, Changes};
use crate::changeset::{Changeset, Patchset};

/// Field type bytes of SQLite's record format.
const UNDEFINED: u8 = 0x00;
const INTEGER: u8 = 0x01;
const REAL: u8 = 0x02;
const TEXT: u8 = 0x03;
const BLOB: u8 = 0x04;
const NULL: u8 = 0x05;
/// Op bytes (SQLITE_INSERT, SQLITE_UPDATE, SQLITE_DELETE).
const OP_INSERT: u8 = 0x12;
const OP_UPDATE: u8 = 0x17;
const OP_DELETE: u8 = 0x09;

/// Builds a [`Changeset`] or a [`Patchset`] from changes given one at a time.
///
/// Declare a table with its key layout ([`Builder::table`]), then add inserts, updates and
/// deletes to it; or [`push`](Builder::push) whole [`Change`]s, as an iterator decodes them.
/// Each call checks its change and says what is wrong with it; nothing is written then.
///
/// ```
/// use liteorm_changeset::{Changeset, ChangeOp};
/// use liteorm_core::Value;
///
/// # fn main() -> Result<(), liteorm_changeset::Error> {
/// let mut builder = Changeset::builder();
/// builder
///     .table("users", [1, 0])?
///     .insert([Value::Integer(1), Value::from("ada")])?
///     .update(
///         [Some(Value::Integer(2)), Some(Value::from("bob"))],
///         [None, Some(Value::from("Bob"))],
///     )?
///     .delete([Value::Integer(3), Value::Null])?;
/// let changes = builder.finish()?;
///
/// let ops: Vec<ChangeOp> = changes.iter().map(|c| c.map(|c| c.op)).collect::<Result<_, _>>()?;
/// assert_eq!(ops, [ChangeOp::Insert, ChangeOp::Update, ChangeOp::Delete]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Builder<C> {
    encoder: Encoder,
    /// The table that [`Builder::insert`] and the like add to, and its layout.
    current: Option<(Arc<str>, Vec<u8>)>,
    indirect: bool,
    _kind: PhantomData<fn() -> C>,
}

/// Writes checked changes of one kind in SQLite's wire format: what a [`Builder`] is made of,
/// and what the apply of a filtered changeset uses where SQLite cannot filter changes itself.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    kind: BlobKind,
    out: Vec<u8>,
    /// The table and key layout of the section being written.
    section: Option<(Arc<str>, Vec<u8>)>,
    changes: usize,
}

impl Changeset {
    /// A builder of a changeset (see [`Builder`]).
    pub fn builder() -> Builder<Changeset> {
        Builder::new()
    }
}

impl Patchset {
    /// A builder of a patchset (see [`Builder`]).
    pub fn builder() -> Builder<Patchset> {
        Builder::new()
    }
}

impl<C: Changes> Default for Builder<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Changes> Builder<C> {
    /// An empty builder.
    pub fn new() -> Self {
        Builder {
            encoder: Encoder::new(C::KIND),
            current: None,
            indirect: false,
            _kind: PhantomData,
        }
    }

    /// The table the next [`insert`](Self::insert), [`update`](Self::update) and
    /// [`delete`](Self::delete) change, and its key layout: per column in table order, its
    /// position in the primary key (1-based), or 0 for a column outside the key.
    pub fn table(
        &mut self,
        name: impl Into<Arc<str>>,
        pk: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, Error> {
        let (name, pk) = (name.into(), pk.into());
        check_table(&name, &pk).map_err(|reason| self.encoder.invalid(reason))?;
        self.current = Some((name, pk));
        Ok(self)
    }

    /// Marks the changes added from now on as indirect (as SQLite marks changes made by a
    /// trigger or a foreign-key action), or direct again. [`push`](Self::push) uses the
    /// change's own flag instead.
    pub fn indirect(&mut self, indirect: bool) -> &mut Self {
        self.indirect = indirect;
        self
    }

    /// Adds an insert of `values` (one per column) to the current table.
    pub fn insert(&mut self, values: impl IntoIterator<Item = Value>) -> Result<&mut Self, Error> {
        let new = values.into_iter().map(Some).collect();
        self.add(ChangeOp::Insert, Vec::new(), new)
    }

    /// Adds an update of the current table's row: `old` and `new` have one entry per column,
    /// `None` where the change does not record the column.
    ///
    /// In a changeset, a key column has its value in `old` and `None` in `new`, a changed column
    /// has both, and an unchanged one neither. In a patchset, `old` needs only the key (other
    /// entries of `old` are not written).
    pub fn update(
        &mut self,
        old: impl IntoIterator<Item = Option<Value>>,
        new: impl IntoIterator<Item = Option<Value>>,
    ) -> Result<&mut Self, Error> {
        let (old, new) = (old.into_iter().collect(), new.into_iter().collect());
        self.add(ChangeOp::Update, old, new)
    }

    /// Adds a delete of the current table's row whose values were `values` (one per column;
    /// a patchset keeps only the key).
    pub fn delete(&mut self, values: impl IntoIterator<Item = Value>) -> Result<&mut Self, Error> {
        let old = values.into_iter().map(Some).collect();
        self.add(ChangeOp::Delete, old, Vec::new())
    }

    /// Adds `change` as it is (its table, key layout and indirect flag included). The current
    /// table of [`insert`](Self::insert) and the like does not change.
    pub fn push(&mut self, change: &Change) -> Result<&mut Self, Error> {
        self.encoder.push(change)?;
        Ok(self)
    }

    /// How many changes were added.
    pub fn len(&self) -> usize {
        self.encoder.changes
    }

    /// Whether no change was added.
    pub fn is_empty(&self) -> bool {
        self.encoder.changes == 0
    }

    /// The changeset or patchset, validated as an untrusted blob would be (structure first, then
    /// SQLite's own iterator decodes every change).
    pub fn finish(self) -> Result<C, Error> {
        let bytes: Arc<[u8]> = self.encoder.out.into();
        C::validate(&bytes)?;
        Ok(C::from_trusted(bytes))
    }

    fn add(
        &mut self,
        op: ChangeOp,
        old: Vec<Option<Value>>,
        new: Vec<Option<Value>>,
    ) -> Result<&mut Self, Error> {
        let Some((table, pk)) = &self.current else {
            let reason = "no table: call `table` before adding changes";
            return Err(self.encoder.invalid(reason.into()));
        };
        self.encoder
            .write(table, pk, op, self.indirect, &old, &new)?;
        Ok(self)
    }
}

impl Encoder {
    pub(crate) fn new(kind: BlobKind) -> Self {
        Encoder {
            kind,
            out: Vec::new(),
            section: None,
            changes: 0,
        }
    }

    /// Checks `change` and appends it.
    pub(crate) fn push(&mut self, change: &Change) -> Result<(), Error> {
        check_table(&change.table, &change.pk).map_err(|reason| self.invalid(reason))?;
        self.write(
            &change.table,
            &change.pk,
            change.op,
            change.indirect,
            &change.old,
            &change.new,
        )
    }

    /// The bytes written, not validated.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    fn invalid(&self, reason: String) -> Error {
        Error::Invalid {
            kind: self.kind.name(),
            entry: self.changes,
            offset: None,
            reason,
        }
    }

    /// Checks one change and appends it (after a table header, when it starts a section).
    fn write(
        &mut self,
        table: &Arc<str>,
        pk: &[u8],
        op: ChangeOp,
        indirect: bool,
        old: &[Option<Value>],
        new: &[Option<Value>],
    ) -> Result<(), Error> {
        let (patchset, marker) = match self.kind {
            BlobKind::Changeset => (false, Changeset::MARKER),
            BlobKind::Patchset => (true, Patchset::MARKER),
        };
        let records = records(pk, op, patchset, old, new).map_err(|reason| {
            self.invalid(format!("{} on table {table:?}: {reason}", op.as_str()))
        })?;
        if self
            .section
            .as_ref()
            .is_none_or(|(t, k)| t != table || k.as_slice() != pk)
        {
            self.out.push(marker);
            put_varint(&mut self.out, pk.len() as u64);
            self.out.extend_from_slice(pk);
            self.out.extend_from_slice(table.as_bytes());
            self.out.push(0);
            self.section = Some((Arc::clone(table), pk.to_vec()));
        }
        self.out.push(match op {
            ChangeOp::Insert => OP_INSERT,
            ChangeOp::Update => OP_UPDATE,
            ChangeOp::Delete => OP_DELETE,
        });
        self.out.push(u8::from(indirect));
        for field in records {
            put_field(&mut self.out, field);
        }
        self.changes += 1;
        Ok(())
    }
}

/// A table name SQLite can write in a header, and a key layout it accepts.
fn check_table(name: &str, pk: &[u8]) -> Result<(), String> {
    if name.is_empty() || name.contains('\0') {
        return Err(format!("invalid table name {name:?}"));
    }
    if pk.is_empty() {
        return Err(format!(
            "table {name:?}: a key layout needs at least one column"
        ));
    }
    if pk.iter().all(|&p| p == 0) {
        return Err(format!("table {name:?}: the key layout has no key column"));
    }
    Ok(())
}

/// The fields a change writes, in order, after checking them against SQLite's rules for `op`.
fn records<'v>(
    pk: &[u8],
    op: ChangeOp,
    patchset: bool,
    old: &'v [Option<Value>],
    new: &'v [Option<Value>],
) -> Result<Vec<Option<&'v Value>>, String> {
    let n = pk.len();
    let is_key = |i: usize| pk[i] != 0;
    let sized = |side: &[Option<Value>], what: &str| {
        if side.len() == n {
            Ok(())
        } else {
            Err(format!("{what} has {} values for {n} columns", side.len()))
        }
    };
    let unused = |side: &[Option<Value>], what: &str| {
        if side.iter().all(Option::is_none) {
            Ok(())
        } else {
            Err(format!("{what} values are not recorded for this op"))
        }
    };
    let full = |side: &'v [Option<Value>], what: &str| {
        side.iter()
            .enumerate()
            .map(|(i, v)| match v {
                None => Err(format!("{what} value of column {i} is missing")),
                Some(Value::Null) if is_key(i) => Err(format!("key column {i} is NULL")),
                Some(v) => Ok(Some(v)),
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let key = |i: usize, v: &'v Option<Value>| match v {
        None => Err(format!("key column {i} has no old value")),
        Some(Value::Null) => Err(format!("key column {i} is NULL")),
        Some(v) => Ok(Some(v)),
    };
    match op {
        ChangeOp::Insert => {
            unused(old, "old")?;
            sized(new, "new")?;
            full(new, "new")
        }
        ChangeOp::Delete if patchset => {
            unused(new, "new")?;
            sized(old, "old")?;
            // Only the key is written.
            (0..n)
                .filter(|&i| is_key(i))
                .map(|i| key(i, &old[i]))
                .collect()
        }
        ChangeOp::Delete => {
            unused(new, "new")?;
            sized(old, "old")?;
            full(old, "old")
        }
        ChangeOp::Update => {
            sized(old, "old")?;
            sized(new, "new")?;
            let mut fields = Vec::with_capacity(if patchset { n } else { 2 * n });
            for i in 0..n {
                if is_key(i) {
                    fields.push(key(i, &old[i])?);
                    if !patchset && new[i].is_some() {
                        return Err(format!(
                            "key column {i} has a new value (a key change is a delete and an insert)"
                        ));
                    }
                } else if patchset {
                    // One record: the key (above) and the new values of changed columns.
                    fields.push(new[i].as_ref());
                } else if old[i].is_some() != new[i].is_some() {
                    let (has, lacks) = if old[i].is_some() {
                        ("an old", "a new")
                    } else {
                        ("a new", "an old")
                    };
                    return Err(format!(
                        "column {i} has {has} value but not {lacks} one (a changed column records both)"
                    ));
                } else {
                    fields.push(old[i].as_ref());
                }
            }
            if !(0..n).any(|i| !is_key(i) && new[i].is_some()) {
                // SQLite never writes one, and its apply rejects one as corrupt.
                return Err("it changes no column".into());
            }
            if patchset && pk.iter().zip(new).any(|(&k, v)| k != 0 && v.is_some()) {
                return Err(
                    "a key column has a new value (a key change is a delete and an insert)".into(),
                );
            }
            if !patchset {
                fields.extend(new.iter().map(Option::as_ref));
            }
            Ok(fields)
        }
    }
}

/// One field of a record: undefined (`None`) or a value.
fn put_field(out: &mut Vec<u8>, field: Option<&Value>) {
    match field {
        None => out.push(UNDEFINED),
        Some(Value::Null) => out.push(NULL),
        Some(Value::Integer(i)) => {
            out.push(INTEGER);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Some(Value::Real(x)) => {
            out.push(REAL);
            out.extend_from_slice(&x.to_bits().to_be_bytes());
        }
        Some(Value::Text(text)) => {
            out.push(TEXT);
            put_varint(out, text.len() as u64);
            out.extend_from_slice(text.as_bytes());
        }
        Some(Value::Blob(bytes)) => {
            out.push(BLOB);
            put_varint(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
    }
}

/// SQLite's variable-length integer (`sqlite3PutVarint`): big-endian groups of 7 bits with the
/// high bit set on all but the last byte; a ninth byte, when needed, carries 8 bits.
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v >> 56 != 0 {
        let mut bytes = [0u8; 9];
        bytes[8] = v.to_be_bytes()[7];
        let mut rest = v >> 8;
        for byte in bytes[..8].iter_mut().rev() {
            *byte = low7(rest) | 0x80;
            rest >>= 7;
        }
        out.extend_from_slice(&bytes);
        return;
    }
    let mut groups = [0u8; 8];
    let mut n = 0;
    let mut rest = v;
    loop {
        groups[n] = low7(rest) | 0x80;
        n += 1;
        rest >>= 7;
        if rest == 0 {
            break;
        }
    }
    groups[0] &= 0x7f;
    out.extend(groups[..n].iter().rev());
}

/// The low 7 bits of `v`.
fn low7(v: u64) -> u8 {
    v.to_be_bytes()[7] & 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    #[test]
    fn varints_match_sqlite() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(0x7f), [0x7f]);
        assert_eq!(varint(0x80), [0x81, 0x00]);
        assert_eq!(varint(0x3fff), [0xff, 0x7f]);
        assert_eq!(varint(0x4000), [0x81, 0x80, 0x00]);
        assert_eq!(varint(u64::MAX), [0xff; 9]);
        // And whatever the reader makes of what is written is the value written.
        for shift in 0..64 {
            for v in [1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1] {
                let bytes = varint(v);
                assert_eq!(
                    crate::format::varint(&bytes, 0),
                    Some((v, bytes.len())),
                    "{v:#x}"
                );
            }
        }
    }

    #[test]
    fn a_change_that_breaks_a_rule_is_refused_and_not_written() {
        let mut builder = Changeset::builder();
        builder.table("t", [1, 0]).unwrap();
        let err = builder
            .insert([Value::Null, Value::Integer(1)])
            .unwrap_err();
        assert!(err.to_string().contains("key column 0 is NULL"), "{err}");
        let err = builder
            .update(
                [Some(Value::Integer(1)), None],
                [None, Some(Value::Integer(2))],
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("column 1 has a new value but not an old one"),
            "{err}"
        );
        assert!(builder.is_empty());
        assert!(builder.finish().unwrap().is_empty());
    }
}
