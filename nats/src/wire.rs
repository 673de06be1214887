//! How a change log entry travels as a NATS message.
//!
//! **Version 4** (what [`encode`] writes): one header, `Liteorm-Wire: 4` (besides the
//! publisher's `Nats-Msg-Id` and `Nats-Expected-Last-Sequence`), and the metadata framed in
//! front of the changeset (or a schema entry's SQL) in the payload, integers big-endian:
//!
//! | field          | bytes                                                                  |
//! |----------------|------------------------------------------------------------------------|
//! | seq            | 8                                                                      |
//! | committed at   | 8, Unix milliseconds (signed)                                          |
//! | kind           | 1: 0 change, 1 revert, 2 rollback, 3 schema                            |
//! | ref seq        | 8, for a revert (the entry it undoes) or a rollback (the seq it returns to) only |
//! | hash           | 32, the entry's chain hash                                             |
//! | actor, reason  | each 0 (unknown), or 1 then a 4-byte length and that many UTF-8 bytes  |
//! | tables         | a 4-byte count, then each a 4-byte length and its UTF-8 name           |
//! | body           | the rest: the changeset, or a schema entry's SQL (UTF-8)                |
//!
//! Ten headers a message were most of what the server parsed and the client built and hashed
//! per entry; a frame is read without a map, escapes or hex.
//!
//! **Versions 2 and 3** (written before; still read, and written by [`encode_headers`]): the
//! metadata in headers, the changeset (or SQL) as payload:
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
/// The header format's version for entries with a changeset, the oldest [`decode`] reads.
const VERSION: u32 = 2;
/// The header format's version for schema entries.
const VERSION_SCHEMA: u32 = 3;
/// The framed format [`encode`] writes (the newest [`decode`] reads).
const VERSION_FRAMED: u32 = 4;

/// The headers (without the NATS ones) and payload of `entry`, in the framed format (version 4).
pub fn encode(entry: &LogEntry) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(WIRE, "4");
    let body = match entry.payload() {
        Payload::Changes(changeset) => changeset.as_bytes(),
        Payload::Schema(sql) => sql.as_bytes(),
    };
    let text_len = |t: &Option<String>| t.as_ref().map_or(1, |t| 5 + t.len());
    let tables_len: usize = entry.tables.iter().map(|t| 4 + t.len()).sum();
    let mut frame = Vec::with_capacity(
        8 + 8
            + 1
            + 8
            + 32
            + text_len(&entry.actor)
            + text_len(&entry.reason)
            + 4
            + tables_len
            + body.len(),
    );
    frame.extend_from_slice(&entry.seq.to_be_bytes());
    frame.extend_from_slice(&entry.committed_at_ms.to_be_bytes());
    let (kind, ref_seq) = match entry.kind {
        EntryKind::Change => (0, None),
        EntryKind::Revert(of) => (1, Some(of)),
        EntryKind::Rollback(to) => (2, Some(to)),
        EntryKind::Schema => (3, None),
    };
    frame.push(kind);
    if let Some(ref_seq) = ref_seq {
        frame.extend_from_slice(&ref_seq.to_be_bytes());
    }
    frame.extend_from_slice(entry.hash.as_bytes());
    for text in [&entry.actor, &entry.reason] {
        match text {
            None => frame.push(0),
            Some(text) => {
                frame.push(1);
                put_text(&mut frame, text);
            }
        }
    }
    put_len(&mut frame, entry.tables.len());
    for table in &entry.tables {
        put_text(&mut frame, table);
    }
    frame.extend_from_slice(body);
    (headers, Bytes::from(frame))
}

/// A length as 4 bytes; a log entry's strings and table lists are far below 4 GiB (a NATS
/// message is at most 64 MiB), so saturating never happens in practice and would only make
/// the frame fail to decode.
fn put_len(frame: &mut Vec<u8>, len: usize) {
    frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_text(frame: &mut Vec<u8>, text: &str) {
    put_len(frame, text.len());
    frame.extend_from_slice(text.as_bytes());
}

/// The headers (without the NATS ones) and payload of `entry` in the header format that
/// versions 2 and 3 wrote: what streams written before version 4 hold.
pub fn encode_headers(entry: &LogEntry) -> (HeaderMap, Bytes) {
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
            Ok(VERSION_FRAMED) => return decode_frame(payload, stream_seq),
            Ok(n @ VERSION..=VERSION_SCHEMA) => n,
            _ => {
                return Err(malformed(format!(
                    "wire format version {v:?}; this follower reads versions {VERSION} to \
                     {VERSION_FRAMED}: upgrade liteorm-nats"
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

/// The entry of a version 4 message: the frame in front of the body, then the body.
fn decode_frame(payload: &[u8], stream_seq: u64) -> Result<LogEntry> {
    let malformed = |reason: String| Error::Malformed { stream_seq, reason };
    let mut frame = Frame(payload);
    let truncated = |field: &str| malformed(format!("the frame ends inside its {field}"));
    let seq = frame.u64().ok_or_else(|| truncated("seq"))?;
    if seq == 0 {
        return Err(malformed("the seq is 0".into()));
    }
    let committed_at_ms = frame
        .u64()
        .map(|t| i64::from_be_bytes(t.to_be_bytes()))
        .ok_or_else(|| truncated("commit time"))?;
    let kind = match frame.take(1).ok_or_else(|| truncated("kind"))?[0] {
        0 => EntryKind::Change,
        1 => EntryKind::Revert(frame.u64().ok_or_else(|| truncated("ref seq"))?),
        2 => EntryKind::Rollback(frame.u64().ok_or_else(|| truncated("ref seq"))?),
        3 => EntryKind::Schema,
        other => {
            return Err(malformed(format!(
                "unknown kind {other} in a version 4 message"
            )));
        }
    };
    let hash = frame
        .take(32)
        .and_then(EntryHash::from_slice)
        .ok_or_else(|| truncated("hash"))?;
    let mut optional = |field: &str| -> Result<Option<String>> {
        match frame.take(1).ok_or_else(|| truncated(field))?[0] {
            0 => Ok(None),
            1 => frame.text(field).map(Some).map_err(&malformed),
            other => Err(malformed(format!("{field} is marked {other}, not 0 or 1"))),
        }
    };
    let actor = optional("actor")?;
    let reason = optional("reason")?;
    let count = frame.len().ok_or_else(|| truncated("table count"))?;
    // Each table takes at least its 4-byte length: a count beyond that is a lie, refused
    // before anything is allocated for it.
    if count > frame.0.len() / 4 {
        return Err(malformed(format!(
            "{count} tables in a frame of {} bytes",
            payload.len()
        )));
    }
    let tables = (0..count)
        .map(|_| frame.text("table name").map_err(&malformed))
        .collect::<Result<Vec<_>>>()?;
    let body = frame.0;
    let (changeset, ddl) = if kind == EntryKind::Schema {
        let sql = std::str::from_utf8(body)
            .map_err(|_| malformed("the SQL of a schema entry is not UTF-8".into()))?;
        (Changeset::default(), Some(sql.to_owned()))
    } else {
        let changeset = Changeset::from_bytes(body)
            .map_err(|e| malformed(format!("payload is not a valid changeset: {e}")))?;
        (changeset, None)
    };
    Ok(LogEntry {
        seq,
        committed_at_ms,
        actor,
        reason,
        kind,
        tables,
        changeset,
        ddl,
        hash,
    })
}

/// What is left of a version 4 frame to read.
struct Frame<'a>(&'a [u8]);

impl<'a> Frame<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn len(&mut self) -> Option<usize> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        usize::try_from(len).ok()
    }

    /// A length-prefixed UTF-8 string; the error says which field is wrong and how.
    fn text(&mut self, field: &str) -> std::result::Result<String, String> {
        let len = self
            .len()
            .ok_or_else(|| format!("the frame ends inside the length of its {field}"))?;
        let bytes = self
            .take(len)
            .ok_or_else(|| format!("the frame ends inside its {field} ({len} bytes)"))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("its {field} is not UTF-8"))
    }
}

/// The change log seq a stored message carries, if it is one of ours.
pub(crate) fn seq_of_stored(message: &StreamMessage) -> Option<u64> {
    let version = message.headers.get(WIRE).map(|v| v.as_str());
    if version == Some("4") {
        let seq = message.payload.get(..8)?;
        return Some(u64::from_be_bytes(seq.try_into().ok()?)).filter(|seq| *seq > 0);
    }
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
            for (headers, payload) in [encode(&original), encode_headers(&original)] {
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
    }

    #[test]
    fn version_4_is_one_header_and_a_frame_whose_every_cut_is_refused() {
        let original = entry(Some("ada"), EntryKind::Revert(7), &["item", "odd,name"]);
        let (headers, payload) = encode(&original);
        assert_eq!(headers.iter().count(), 1);
        assert_eq!(headers.get(WIRE).map(|v| v.as_str()), Some("4"));
        assert_eq!(&payload[..8], 42_u64.to_be_bytes());
        // Every prefix ends inside the frame (the empty changeset body is the last 0 bytes).
        for cut in 0..payload.len() {
            assert!(
                matches!(
                    decode(Some(&headers), &payload[..cut], 5),
                    Err(Error::Malformed { stream_seq: 5, .. })
                ),
                "cut at {cut}"
            );
        }
        let kind_at = 16;
        let mut bad = payload.to_vec();
        bad[kind_at] = 9;
        assert!(matches!(
            decode(Some(&headers), &bad, 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("kind 9")
        ));
        let mut zero = payload.to_vec();
        zero[..8].fill(0);
        assert!(matches!(
            decode(Some(&headers), &zero, 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("seq is 0")
        ));
        // The actor's marker, then its length and bytes: a byte that is not UTF-8.
        let actor_at = kind_at + 1 + 8 + 32;
        let mut bad = payload.to_vec();
        bad[actor_at + 5] = 0xff;
        assert!(matches!(
            decode(Some(&headers), &bad, 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("actor is not UTF-8")
        ));
        let mut bad = payload.to_vec();
        bad[actor_at] = 2;
        assert!(matches!(
            decode(Some(&headers), &bad, 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("actor")
        ));
        // A table count far beyond what the frame holds is refused before allocating.
        let (headers, payload) = encode(&entry(None, EntryKind::Change, &[]));
        let count_at = payload.len() - 4;
        let mut bad = payload.to_vec();
        bad[count_at..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(Some(&headers), &bad, 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("tables")
        ));
        // Not a changeset after the frame: the body is validated, never trusted.
        let mut bad = payload.to_vec();
        bad.extend_from_slice(b"\x12\x00garbage");
        assert!(matches!(
            decode(Some(&headers), &bad, 1),
            Err(Error::Malformed { reason, .. }) if reason.contains("changeset")
        ));
    }

    #[test]
    fn malformed_messages_are_refused_with_the_stream_position() {
        let (headers, _) = encode_headers(&entry(Some("ada"), EntryKind::Change, &["t"]));
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
        bad.insert(WIRE, "5");
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
        let (headers, payload) = encode_headers(&schema);
        assert_eq!(headers.get(WIRE).map(|v| v.as_str()), Some("3"));
        assert_eq!(&payload[..], schema.ddl.as_deref().unwrap().as_bytes());
        let (change_headers, _) = encode_headers(&entry(None, EntryKind::Change, &[]));
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
        fn any_metadata_round_trips_through_a_frame(
            actor in proptest::option::of(any::<String>()),
            reason in proptest::option::of(any::<String>()),
            tables in proptest::collection::vec(any::<String>(), 0..4),
            committed_at_ms in any::<i64>(),
        ) {
            let original = LogEntry {
                actor,
                reason,
                tables,
                committed_at_ms,
                ..entry(None, EntryKind::Rollback(3), &[])
            };
            let (headers, payload) = encode(&original);
            prop_assert_eq!(decode(Some(&headers), &payload, 42).unwrap(), original);
        }

        #[test]
        fn escape_round_trips_any_text(text in any::<String>()) {
            let escaped = escape(&text);
            prop_assert!(escaped.bytes().all(|b| b.is_ascii_graphic() && b != b','));
            prop_assert_eq!(unescape(&escaped), Some(text));
        }
    }
}
