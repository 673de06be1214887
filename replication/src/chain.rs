//! The tamper-evidence chain: each log entry's hash covers the previous entry's hash and every
//! field of the entry, in a canonical, length-prefixed encoding (SHA-256).
//!
//! `hash(n) = SHA-256(encode(hash(n - 1), entry n))`, with `hash(0)` = 32 zero bytes
//! ([`EntryHash::GENESIS`]). The encoding (version 1) is, in this order:
//!
//! | field          | encoding                                                          |
//! |----------------|-------------------------------------------------------------------|
//! | domain         | `len ‖ "liteorm-changes/v1"`                                      |
//! | previous hash  | 32 bytes                                                          |
//! | seq            | u64, big-endian                                                   |
//! | kind           | `len ‖ "change" / "revert" / "rollback" / "schema"`               |
//! | ref_seq        | `0x00`, or `0x01 ‖ u64`                                            |
//! | committed_at   | i64 (Unix ms), big-endian                                         |
//! | actor, reason  | each `0x00`, or `0x01 ‖ len ‖ UTF-8`                               |
//! | tables         | `count ‖ (len ‖ UTF-8)*`                                           |
//! | payload        | `len ‖ bytes`: the changeset, or a schema entry's SQL (UTF-8)      |
//!
//! where `len` and `count` are u64 big-endian. Every variable-length field carries its length, so
//! no two different entries encode to the same bytes (moving a byte from the actor to the reason
//! changes the hash).
//!
//! Schema entries were added without a new version: their kind name is new, so every entry of
//! the older kinds hashes exactly as before, and a schema entry cannot hash like a change entry
//! whose changeset has the same bytes.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::EntryKind;

const DOMAIN: &[u8] = b"liteorm-changes/v1";

/// The SHA-256 hash that chains a log entry to the one before it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryHash([u8; 32]);

impl EntryHash {
    /// The hash "before" seq 1: 32 zero bytes.
    pub const GENESIS: EntryHash = EntryHash([0; 32]);

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A hash from exactly 32 bytes (`None` for any other length).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(EntryHash)
    }

    /// Lower-case hexadecimal, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The inverse of [`EntryHash::to_hex`] (either case); `None` unless 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(EntryHash(bytes))
    }
}

impl From<[u8; 32]> for EntryHash {
    fn from(bytes: [u8; 32]) -> Self {
        EntryHash(bytes)
    }
}

impl fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryHash({})", self.to_hex())
    }
}

impl fmt::Display for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Every field of a log entry that its hash covers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields<'a> {
    pub(crate) seq: u64,
    pub(crate) committed_at_ms: i64,
    pub(crate) actor: Option<&'a str>,
    pub(crate) reason: Option<&'a str>,
    pub(crate) kind: EntryKind,
    pub(crate) tables: &'a [String],
    /// The changeset; for a schema entry, its SQL (UTF-8).
    pub(crate) payload: &'a [u8],
}

/// The hash of the entry with `fields` that follows the entry hashed `prev`.
pub(crate) fn link(prev: &EntryHash, fields: &Fields<'_>) -> EntryHash {
    let mut h = Sha256::new();
    let len =
        |h: &mut Sha256, n: usize| h.update(u64::try_from(n).unwrap_or(u64::MAX).to_be_bytes());
    let bytes = |h: &mut Sha256, b: &[u8]| {
        len(h, b.len());
        h.update(b);
    };
    let optional = |h: &mut Sha256, text: Option<&str>| match text {
        None => h.update([0]),
        Some(text) => {
            h.update([1]);
            bytes(h, text.as_bytes());
        }
    };
    bytes(&mut h, DOMAIN);
    h.update(prev.0);
    h.update(fields.seq.to_be_bytes());
    let (kind, ref_seq) = kind_parts(fields.kind);
    bytes(&mut h, kind.as_bytes());
    match ref_seq {
        None => h.update([0]),
        Some(seq) => {
            h.update([1]);
            h.update(seq.to_be_bytes());
        }
    }
    h.update(fields.committed_at_ms.to_be_bytes());
    optional(&mut h, fields.actor);
    optional(&mut h, fields.reason);
    len(&mut h, fields.tables.len());
    for table in fields.tables {
        bytes(&mut h, table.as_bytes());
    }
    bytes(&mut h, fields.payload);
    EntryHash(h.finalize().into())
}

/// The stored name of `kind` and its reference seq.
pub(crate) fn kind_parts(kind: EntryKind) -> (&'static str, Option<u64>) {
    match kind {
        EntryKind::Change => ("change", None),
        EntryKind::Revert(of) => ("revert", Some(of)),
        EntryKind::Rollback(to) => ("rollback", Some(to)),
        EntryKind::Schema => ("schema", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(
        tables: &'a [String],
        actor: Option<&'a str>,
        reason: Option<&'a str>,
    ) -> Fields<'a> {
        Fields {
            seq: 1,
            committed_at_ms: 1_700_000_000_000,
            actor,
            reason,
            kind: EntryKind::Change,
            tables,
            payload: b"",
        }
    }

    #[test]
    fn every_field_and_the_previous_hash_change_the_hash() {
        let tables = vec!["a".to_owned()];
        let base = fields(&tables, Some("ada"), Some("why"));
        let h = link(&EntryHash::GENESIS, &base);
        let other_prev = EntryHash::from([1; 32]);
        let two_tables = vec!["a".to_owned(), "b".to_owned()];
        let variants = [
            link(&other_prev, &base),
            link(&EntryHash::GENESIS, &Fields { seq: 2, ..base }),
            link(
                &EntryHash::GENESIS,
                &Fields {
                    committed_at_ms: 1,
                    ..base
                },
            ),
            link(
                &EntryHash::GENESIS,
                &Fields {
                    actor: None,
                    ..base
                },
            ),
            link(
                &EntryHash::GENESIS,
                &Fields {
                    reason: Some("wh"),
                    ..base
                },
            ),
            link(
                &EntryHash::GENESIS,
                &Fields {
                    kind: EntryKind::Revert(1),
                    ..base
                },
            ),
            link(
                &EntryHash::GENESIS,
                &Fields {
                    kind: EntryKind::Rollback(1),
                    ..base
                },
            ),
            link(
                &EntryHash::GENESIS,
                &Fields {
                    tables: &two_tables,
                    ..base
                },
            ),
            link(
                &EntryHash::GENESIS,
                &Fields {
                    payload: b"x",
                    ..base
                },
            ),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(*v, h, "variant {i}");
        }
        assert_eq!(link(&EntryHash::GENESIS, &base), h, "deterministic");
    }

    #[test]
    fn field_boundaries_are_part_of_the_hash() {
        let none: Vec<String> = Vec::new();
        let a = link(&EntryHash::GENESIS, &fields(&none, Some("ab"), Some("c")));
        let b = link(&EntryHash::GENESIS, &fields(&none, Some("a"), Some("bc")));
        assert_ne!(a, b);
        let split = vec!["a".to_owned(), "b".to_owned()];
        let joined = vec!["a,b".to_owned()];
        assert_ne!(
            link(&EntryHash::GENESIS, &fields(&split, None, None)),
            link(&EntryHash::GENESIS, &fields(&joined, None, None))
        );
    }

    #[test]
    fn the_encoding_matches_an_independent_implementation() {
        // Python: hashlib.sha256 over the encoding documented at the top of this module
        // (u64 big-endian lengths), for this entry after the genesis hash.
        let tables = vec!["item".to_owned(), "counter".to_owned()];
        let entry = Fields {
            seq: 7,
            committed_at_ms: 1_700_000_000_123,
            actor: Some("ada"),
            reason: None,
            kind: EntryKind::Revert(3),
            tables: &tables,
            payload: b"\x12\x34",
        };
        assert_eq!(
            link(&EntryHash::GENESIS, &entry).to_hex(),
            "395045e21c92eb5cbc35825c6e9bdaef9940c01f619b9b101c1120042de3299d"
        );
    }

    #[test]
    fn a_schema_entry_hashes_its_sql_under_its_own_kind() {
        // Python, as above: kind "schema", no ref_seq, the SQL as the payload.
        let tables = vec!["item".to_owned()];
        let entry = Fields {
            seq: 8,
            committed_at_ms: 1_700_000_000_456,
            actor: Some("ada"),
            reason: Some("v2"),
            kind: EntryKind::Schema,
            tables: &tables,
            payload: b"ALTER TABLE item ADD COLUMN note TEXT",
        };
        let schema = link(&EntryHash::GENESIS, &entry);
        assert_eq!(
            schema.to_hex(),
            "3d9f77fa680e09911204303b90ebb26848d666ba1e79b68ddeb0c9ed2be91335"
        );
        let same_bytes_as_a_change = Fields {
            kind: EntryKind::Change,
            ..entry
        };
        assert_ne!(link(&EntryHash::GENESIS, &same_bytes_as_a_change), schema);
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let h = EntryHash::from([0xab; 32]);
        assert_eq!(EntryHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(EntryHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(EntryHash::from_hex("ab"), None);
        assert_eq!(EntryHash::from_hex(&"zz".repeat(32)), None);
        assert_eq!(EntryHash::from_hex(&"é".repeat(32)), None);
    }
}
