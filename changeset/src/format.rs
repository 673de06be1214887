//! A bounds-checked walk over the changeset/patchset wire format, run on untrusted bytes before
//! any of them reach SQLite.
//!
//! SQLite's own iterator is not safe on arbitrary input: for in-memory blobs, a table header
//! whose name has no NUL terminator makes `sessionChangesetBufferTblhdr` loop forever (seen with
//! SQLite 3.51.3). This walk checks every length against the buffer, so SQLite only ever iterates
//! blobs whose structure is sound; it leaves semantic checks (e.g. no undefined field in an
//! insert) to SQLite, which reports those as errors.

/// Op bytes (SQLITE_INSERT, SQLITE_UPDATE, SQLITE_DELETE).
const INSERT: u8 = 0x12;
const UPDATE: u8 = 0x17;
const DELETE: u8 = 0x09;
/// The most columns a table header may claim (SQLite treats more as corrupt).
const MAX_COLUMNS: u64 = 65_536;

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

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    entry: usize,
}

impl Reader<'_> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, Malformed> {
        Err(Malformed {
            entry: self.entry,
            offset: self.pos,
            reason: reason.into(),
        })
    }

    fn byte(&mut self, what: &str) -> Result<u8, Malformed> {
        let Some(&b) = self.bytes.get(self.pos) else {
            return self.fail(format!("truncated: expected {what}"));
        };
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), Malformed> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return self.fail(format!("truncated: {what} needs {n} bytes, {left} left"));
        }
        // `n <= left`, which fits in usize.
        self.pos += usize::try_from(n).unwrap_or(usize::MAX);
        Ok(())
    }

    /// An SQLite varint: up to 8 bytes of 7 bits (high bit: more follow), then one of 8 bits.
    fn varint(&mut self, what: &str) -> Result<u64, Malformed> {
        let mut value: u64 = 0;
        for i in 0..9 {
            let b = self.byte(what)?;
            if i == 8 {
                return Ok((value << 8) | u64::from(b));
            }
            value = (value << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        unreachable!("the loop returns by its ninth byte")
    }

    /// One record: `fields` values, each a type byte and its payload.
    fn record(&mut self, fields: usize) -> Result<(), Malformed> {
        for _ in 0..fields {
            match self.byte("a field type")? {
                0x00 | 0x05 => {}
                0x01 | 0x02 => self.skip(8, "a number")?,
                0x03 | 0x04 => {
                    let len = self.varint("a text/blob length")?;
                    self.skip(len, "a text/blob value")?;
                }
                other => return self.fail(format!("unknown field type {other:#04x}")),
            }
        }
        Ok(())
    }
}

/// Checks the structure of `bytes` as a changeset (`marker` `b'T'`) or patchset (`b'P'`) and
/// returns the number of changes.
pub(crate) fn check(bytes: &[u8], marker: u8) -> Result<usize, Malformed> {
    let mut r = Reader {
        bytes,
        pos: 0,
        entry: 0,
    };
    let patchset = marker == b'P';
    while r.pos < bytes.len() {
        let found = r.byte("a table header")?;
        if found != marker {
            r.pos -= 1;
            return r.fail(format!(
                "expected a table header ({:?}), found byte {found:#04x}",
                char::from(marker)
            ));
        }
        let n_col = r.varint("the column count")?;
        if n_col == 0 || n_col > MAX_COLUMNS {
            return r.fail(format!("table header claims {n_col} columns"));
        }
        let n_col = usize::try_from(n_col).unwrap_or(usize::MAX);
        let pk_start = r.pos;
        r.skip(n_col as u64, "the primary-key flags")?;
        let n_pk = bytes[pk_start..r.pos].iter().filter(|&&f| f != 0).count();
        let name_len = bytes[r.pos..].iter().position(|&b| b == 0);
        let Some(name_len) = name_len else {
            return r.fail("table name is not NUL-terminated");
        };
        if name_len == 0 {
            return r.fail("empty table name");
        }
        r.pos += name_len + 1;
        while r.pos < bytes.len() && bytes[r.pos] != marker {
            let op = r.byte("an op")?;
            r.byte("the indirect flag")?;
            match (op, patchset) {
                (INSERT, _) => r.record(n_col)?,
                (UPDATE, false) => {
                    r.record(n_col)?;
                    r.record(n_col)?;
                }
                (UPDATE, true) => r.record(n_col)?,
                (DELETE, false) => r.record(n_col)?,
                (DELETE, true) => r.record(n_pk)?,
                _ => {
                    r.pos -= 2;
                    return r.fail(format!("unknown op byte {op:#04x}"));
                }
            }
            r.entry += 1;
        }
    }
    Ok(r.entry)
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
    fn huge_lengths_do_not_overflow() {
        let mut huge = b"T\x01\x01t\x00\x12\x00\x03".to_vec();
        huge.extend_from_slice(&[0xff; 9]);
        assert!(check(&huge, b'T').unwrap_err().reason.contains("truncated"));
        assert!(check(b"T\xff\xff\xff\xff\xff\xff\xff\xff\xff", b'T').is_err());
    }
}
