//! How a change log entry travels as a NATS message: metadata in headers, changeset as payload.
//!
//! | header                   | value                                                        |
//! |--------------------------|--------------------------------------------------------------|
//! | `Nats-Msg-Id`            | the seq (the server drops a re-send within its window)       |
//! | `Liteorm-Seq`            | the seq                                                      |
//! | `Liteorm-Committed-At`   | commit time, Unix milliseconds                               |
//! | `Liteorm-Kind`           | `change`, `revert`, `rollback` or `schema`                   |
//! | `Liteorm-Ref-Seq`        | the entry a revert undoes / the seq a rollback returns to    |
//! | `Liteorm-Actor`          | who (escaped; absent when unknown)                           |
//! | `Liteorm-Reason`         | why (escaped; absent when unknown)                           |
//! | `Liteorm-Tables`         | the tables touched, escaped, joined with `,`                 |
//! | `Liteorm-Wire`           | the format version: `3` for a schema entry, else `2`         |
//! | `Liteorm-Hash`           | the entry's chain hash, 64 hex digits                        |
//!
//! Version 1 (no `Liteorm-Wire` header) had no hash. Such a message is refused rather than
//! applied unchecked: accepting it would let anyone who can publish to the subject strip the
//! hash and bypass the replica's chain check. A version above 3 is refused too, naming it, so an
//! old follower stops with a clear error instead of misreading a newer format.
//!
//! Version 3 adds schema entries ([`EntryKind::Schema`]): the payload is the migration's SQL
//! (UTF-8), not a changeset. Only schema entries are sent as version 3, so a follower that reads
//! version 2 keeps following a stream until the first migration, and stops there with an error
//! naming the version instead of skipping the schema change. A schema kind in a version 2
//! message is refused.
//!
//! Free text is percent-escaped: every byte outside printable ASCII, and `%`, `,` and space,
//! becomes `%XX`, so a value can hold no line break (which would end the header block) and
//! survives the protocol's whitespace trimming.

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use bytes::Bytes;
use liteorm_changeset::Changeset;
use liteorm_replication::{EntryHash, EntryKind, LogEntry, Payload};

use crate::{Error, Result};

pub(crate) const SEQ: &str = "Liteorm-Seq";
const COMMITTED_AT: &str = "Liteorm-Committed-At";
const KIND: &str = "Liteorm-Kind";
const REF_SEQ: &str = "Liteorm-Ref-Seq";
const ACTOR: &str = "Liteorm-Actor";
const REASON: &str = "Liteorm-Reason";
const TABLES: &str = "Liteorm-Tables";
const WIRE: &str = "Liteorm-Wire";
const HASH: &str = "Liteorm-Hash";
/// The format [`encode`] writes for entries with a changeset, the oldest [`decode`] reads.
const VERSION: u32 = 2;
/// The format of schema entries (the newest [`decode`] reads).
const VERSION_SCHEMA: u32 = 3;

/// The headers (without the NATS ones) and payload of `entry`.
pub fn encode(entry: &LogEntry) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    let version = match entry.kind {
        EntryKind::Schema => VERSION_SCHEMA,
        _ => VERSION,
    };
    headers.insert(WIRE, version.to_string());
    headers.insert(HASH, entry.hash.to_hex());
    headers.insert(SEQ, entry.seq.to_string());
    headers.insert(COMMITTED_AT, entry.committed_at_ms.to_string());
    let (kind, ref_seq) = match entry.kind {
        EntryKind::Change => ("change", None),
        EntryKind::Revert(of) => ("revert", Some(of)),
        EntryKind::Rollback(to) => ("rollback", Some(to)),
        EntryKind::Schema => ("schema", None),
    };
    headers.insert(KIND, kind);
    if let Some(ref_seq) = ref_seq {
        headers.insert(REF_SEQ, ref_seq.to_string());
    }
    if let Some(actor) = &entry.actor {
        headers.insert(ACTOR, escape(actor));
    }
    if let Some(reason) = &entry.reason {
        headers.insert(REASON, escape(reason));
    }
    let tables: Vec<String> = entry.tables.iter().map(|t| escape(t)).collect();
    headers.insert(TABLES, tables.join(","));
    let payload = match entry.payload() {
        Payload::Changes(changeset) => changeset.as_bytes(),
        Payload::Schema(sql) => sql.as_bytes(),
    };
    (headers, Bytes::copy_from_slice(payload))
}

/// The entry carried by a delivered message at `stream_seq`. The payload is untrusted bytes
/// from the network: it becomes a [`Changeset`] only through [`Changeset::from_bytes`], which
/// validates it.
pub fn decode(headers: Option<&HeaderMap>, payload: &[u8], stream_seq: u64) -> Result<LogEntry> {
    let malformed = |reason: String| Error::Malformed { stream_seq, reason };
    let headers = headers.ok_or_else(|| malformed("no headers".into()))?;
    let text = |name: &str| headers.get(name).map(|v| v.as_str());
    let required = |name: &str| text(name).ok_or_else(|| malformed(format!("no {name} header")));
    let number = |name: &str| -> Result<u64> {
        let raw = required(name)?;
        raw.parse()
            .map_err(|_| malformed(format!("{name} is not a number: {raw:?}")))
    };
    let version = match text(WIRE) {
        None => {
            return Err(malformed(format!(
                "no {WIRE} header: a version 1 message without a chain hash, refused \
                 (republish the log with this version of liteorm-nats)"
            )));
        }
        Some(v) => match v.parse::<u32>() {
            Ok(n @ VERSION..=VERSION_SCHEMA) => n,
            _ => {
                return Err(malformed(format!(
                    "wire format version {v:?}; this follower reads versions {VERSION} to \
                     {VERSION_SCHEMA}: upgrade liteorm-nats"
                )));
            }
        },
    };
    let hash_raw = required(HASH)?;
    let hash = EntryHash::from_hex(hash_raw)
        .ok_or_else(|| malformed(format!("{HASH} is not 64 hex digits: {hash_raw:?}")))?;
    let seq = number(SEQ)?;
    if seq == 0 {
        return Err(malformed(format!("{SEQ} is 0")));
    }
    let committed_raw = required(COMMITTED_AT)?;
    let committed_at_ms = committed_raw
        .parse()
        .map_err(|_| malformed(format!("{COMMITTED_AT} is not a number: {committed_raw:?}")))?;
    let kind = match required(KIND)? {
        "change" => EntryKind::Change,
        "revert" => EntryKind::Revert(number(REF_SEQ)?),
        "rollback" => EntryKind::Rollback(number(REF_SEQ)?),
        "schema" if version >= VERSION_SCHEMA => EntryKind::Schema,
        other => {
            return Err(malformed(format!(
                "unknown {KIND} {other:?} in a version {version} message"
            )));
        }
    };
    let optional = |name: &str| {
        text(name)
            .map(|v| unescape(v).ok_or_else(|| malformed(format!("bad escape in {name}"))))
            .transpose()
    };
    let tables = match text(TABLES) {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|t| unescape(t).ok_or_else(|| malformed(format!("bad escape in {TABLES}"))))
            .collect::<Result<_>>()?,
    };
    let (changeset, ddl) = if kind == EntryKind::Schema {
        let sql = String::from_utf8(payload.to_vec())
            .map_err(|_| malformed("the SQL of a schema entry is not UTF-8".into()))?;
        (Changeset::default(), Some(sql))
    } else {
        let changeset = Changeset::from_bytes(payload.to_vec())
            .map_err(|e| malformed(format!("payload is not a valid changeset: {e}")))?;
        (changeset, None)
    };
    Ok(LogEntry {
        seq,
        committed_at_ms,
        actor: optional(ACTOR)?,
        reason: optional(REASON)?,
        kind,
        tables,
        changeset,
        ddl,
        hash,
    })
}

/// The change log seq a stored message carries, if it is one of ours.
pub(crate) fn seq_of_stored(message: &StreamMessage) -> Option<u64> {
    message.headers.get(SEQ)?.as_str().parse().ok()
}

fn keeps(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'%' && b != b','
}

/// Percent-escapes everything but printable ASCII (and `%`, `,`).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if keeps(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`escape`]; `None` for a malformed escape or bytes that are not UTF-8.
pub(crate) fn unescape(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(actor: Option<&str>, kind: EntryKind, tables: &[&str]) -> LogEntry {
        LogEntry {
            seq: 42,
            committed_at_ms: 1_700_000_000_123,
            actor: actor.map(str::to_owned),
            reason: Some("line one\r\nline two, 100% done".into()),
            kind,
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            // An empty changeset is valid and needs no database to make.
            changeset: Changeset::from_bytes(Vec::new()).unwrap(),
            ddl: (kind == EntryKind::Schema)
                .then(|| "ALTER TABLE item ADD COLUMN note TEXT DEFAULT 'é'".into()),
            hash: EntryHash::from([7; 32]),
        }
    }

    #[test]
    fn an_entry_round_trips_through_headers_and_payload() {
        for (actor, kind, tables) in [
            (Some("ada"), EntryKind::Change, &["item", "odd,name"][..]),
            (None, EntryKind::Revert(7), &[][..]),
            (Some(" spaced "), EntryKind::Rollback(3), &["t"][..]),
            (Some("ada"), EntryKind::Schema, &["item"][..]),
        ] {
            let original = entry(actor, kind, tables);
            let (headers, payload) = encode(&original);
            for (name, values) in headers.iter() {
                for value in values {
                    assert!(
                        !value.as_str().contains(['\r', '\n', ' ']),
                        "{name}: {value:?}"
                    );
                }
            }
            assert_eq!(decode(Some(&headers), &payload, 42).unwrap(), original);
        }
    }

    #[test]
    fn malformed_messages_are_refused_with_the_stream_position() {
        let (headers, _) = encode(&entry(Some("ada"), EntryKind::Change, &["t"]));
        // Not a changeset: the payload is validated, never trusted.
        let err = decode(Some(&headers), b"\x12\x00garbage", 9).unwrap_err();
        assert!(
            matches!(&err, Error::Malformed { stream_seq: 9, reason } if reason.contains("changeset")),
            "{err}"
        );
        assert!(matches!(
            decode(None, b"", 3),
            Err(Error::Malformed { stream_seq: 3, .. })
        ));
        let mut bad = headers.clone();
        bad.insert(SEQ, "x1");
        assert!(matches!(
            decode(Some(&bad), b"", 1),
            Err(Error::Malformed { .. })
        ));
        let mut bad = headers.clone();
        bad.insert(HASH, "00");
        assert!(matches!(
            decode(Some(&bad), b"", 1),
            Err(Error::Malformed { reason, .. }) if reason.contains(HASH)
        ));
        let mut bad = headers.clone();
        bad.insert(WIRE, "4");
        assert!(matches!(
            decode(Some(&bad), b"", 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("version")
        ));
        let mut v1 = HeaderMap::new();
        for (name, values) in headers.iter() {
            if ![WIRE, HASH].contains(&AsRef::<str>::as_ref(name)) {
                for value in values {
                    v1.insert(name.clone(), value.clone());
                }
            }
        }
        assert!(matches!(
            decode(Some(&v1), b"", 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("version 1")
        ));
        let mut bad = headers;
        bad.insert(ACTOR, "%G1");
        assert!(matches!(
            decode(Some(&bad), b"", 1),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn a_schema_entry_travels_as_version_3_and_a_version_2_one_is_refused() {
        let schema = entry(Some("ada"), EntryKind::Schema, &["item"]);
        let (headers, payload) = encode(&schema);
        assert_eq!(headers.get(WIRE).map(|v| v.as_str()), Some("3"));
        assert_eq!(&payload[..], schema.ddl.as_deref().unwrap().as_bytes());
        let (change_headers, _) = encode(&entry(None, EntryKind::Change, &[]));
        assert_eq!(change_headers.get(WIRE).map(|v| v.as_str()), Some("2"));
        // What a follower that reads only version 2 sees, and what it would make of a schema
        // kind if one came with version 2.
        let mut old = headers.clone();
        old.insert(WIRE, "2");
        assert!(matches!(
            decode(Some(&old), &payload, 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("schema")
        ));
        assert!(matches!(
            decode(Some(&headers), b"\xff\xfe", 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("UTF-8")
        ));
    }

    proptest! {
        #[test]
        fn escape_round_trips_any_text(text in any::<String>()) {
            let escaped = escape(&text);
            prop_assert!(escaped.bytes().all(|b| b.is_ascii_graphic() && b != b','));
            prop_assert_eq!(unescape(&escaped), Some(text));
        }
    }
}
