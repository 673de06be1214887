//! The `nats_message` target: a JetStream message as a follower decodes it into a log entry
//! (`liteorm_nats`'s wire format: version 4, the metadata framed in front of the changeset in the
//! payload; versions 2 and 3, the metadata in headers).

use std::str::FromStr;

use liteorm_nats::async_nats::{HeaderMap, HeaderName};
use liteorm_nats::fuzzing::{decode, encode, encode_headers};

/// The header block of a message as async-nats (0.51) reads an `HMSG` off the socket:
/// UTF-8 lines of `name:value`, the value trimmed, a line starting with whitespace continuing
/// the one before, empty lines skipped. `None` where async-nats would drop the connection (not
/// UTF-8, a line without `:`, an invalid name), so no such message reaches the follower. The
/// `NATS/1.0` version line is not part of the input.
pub fn parse_headers(block: &[u8]) -> Option<HeaderMap> {
    let mut lines = std::str::from_utf8(block).ok()?.lines().peekable();
    let mut headers = HeaderMap::new();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let name = HeaderName::from_str(name).ok()?;
        let mut value = value.trim_start().to_owned();
        while let Some(more) = lines.next_if(|s| s.starts_with(char::is_whitespace)) {
            value.push_str(more);
        }
        value.truncate(value.trim_end().len());
        // A CR left inside the value (`lines` only strips one before the LF) makes async-nats
        // 0.51 panic in its connection task (`HeaderValue::from` asserts): no such message
        // reaches the follower's decoder.
        if value.contains('\r') {
            return None;
        }
        headers.append(name, value.as_str());
    }
    Some(headers)
}

/// Writes `headers` as a header block that [`parse_headers`] reads back.
pub fn header_block(headers: &HeaderMap) -> Vec<u8> {
    let mut out = String::new();
    for (name, values) in headers.iter() {
        for value in values {
            out.push_str(&format!("{name}: {}\r\n", value.as_str()));
        }
    }
    out.into_bytes()
}

/// The two halves of a [`crate::split_pair`] input are a header block and a payload (byte 0 is
/// the stream seq; 255: a message without headers). Whatever
/// they hold, decoding ends in an entry or a typed error (never a panic); an entry is carried
/// by exactly the message it encodes to, in either format, so publishing it again delivers the
/// same entry.
pub fn check(data: &[u8]) {
    let Some((_, block, payload)) = crate::split_pair(data) else {
        return;
    };
    let stream_seq = u64::from(data[0]);
    let headers = if data[0] == u8::MAX {
        None
    } else {
        match parse_headers(block) {
            Some(headers) => Some(headers),
            None => return,
        }
    };
    match decode(headers.as_ref(), payload, stream_seq) {
        Ok(entry) => {
            assert!(entry.seq > 0, "decoded an entry with seq 0");
            for (headers, payload) in [encode(&entry), encode_headers(&entry)] {
                let again =
                    parse_headers(&header_block(&headers)).expect("the headers of an entry parse");
                let decoded = decode(Some(&again), &payload, stream_seq)
                    .unwrap_or_else(|err| panic!("an encoded entry does not decode: {err}"));
                assert_eq!(decoded, entry, "an entry does not survive a round trip");
            }
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
}
