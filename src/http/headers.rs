//! Header hygiene (RFC 9110 §7.6.1) and the encoding that stores a header
//! block in the queue: a JSON array of `[name, value]` pairs.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::UnderscoreHeaders;

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_named(headers)
        .iter()
        .chain(HOP_BY_HOP)
        .chain(&LEGACY_HOP_BY_HOP)
    {
        headers.remove(name);
    }
}

/// Prefix of the headers the gateway sets towards the upstream
/// (`X-Flashgate-Ticket`, `X-Flashgate-Attempt`): a client's own would let
/// it forge a delivery, so they are removed on every route.
const GATEWAY_PREFIX: &str = "x-flashgate-";

/// What [`sanitize`] found that refuses the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header name `{0}` has an underscore")]
pub struct Underscore(pub HeaderName);

/// Cleans a client's request head before anything reads it: removes the
/// gateway's own `X-Flashgate-*` headers and, unless `underscores` allows
/// them, header names with `_` (dropped, or the request refused), which
/// CGI/WSGI stacks would merge with the real dash-spelled header. One scan of
/// the names, no allocation when there is nothing to remove.
pub fn sanitize(headers: &mut HeaderMap, underscores: UnderscoreHeaders) -> Result<(), Underscore> {
    let unwanted = |name: &HeaderName| {
        let n = name.as_str();
        n.starts_with(GATEWAY_PREFIX)
            || (underscores != UnderscoreHeaders::Allow && n.contains('_'))
    };
    if !headers.keys().any(unwanted) {
        return Ok(());
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| unwanted(n)).cloned().collect();
    for name in names {
        if underscores == UnderscoreHeaders::Reject && name.as_str().contains('_') {
            return Err(Underscore(name));
        }
        headers.remove(&name);
    }
    Ok(())
}

/// Not in the IANA list but sent by old clients and proxies.
static LEGACY_HOP_BY_HOP: [HeaderName; 2] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The headers that `Connection` names (empty, without allocating, when
/// there is no `Connection` header).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// [`encode`] of the end-to-end headers — what [`strip_hop_by_hop`] would
/// leave — less those in `also`, in one pass over `headers` and one
/// allocation: the admission path's way to store a request's headers
/// (removing each name from the map hashed and probed it, twenty times a
/// request).
pub fn encode_end_to_end(headers: &HeaderMap, also: &[HeaderName]) -> Bytes {
    let named = connection_named(headers);
    let kept = || {
        headers.iter().filter(|(n, _)| {
            !(HOP_BY_HOP.contains(n)
                || LEGACY_HOP_BY_HOP.contains(n)
                || also.contains(n)
                || named.contains(n))
        })
    };
    let len = kept()
        .map(|(n, v)| n.as_str().len() + v.len() + PAIR_EXTRA)
        .sum();
    write_pairs(len, kept().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

/// Encodes headers as a JSON array of `[name, value]` pairs, in order
/// (repeated names repeat), e.g. `[["content-type","application/json"]]`:
/// readable by any consumer of the stream without a parser of ours. JSON
/// strings are Unicode and a header value is bytes, so each byte is written
/// as the character of the same number (Latin-1, ISO-8859-1): ASCII stays
/// ASCII, and an obs-text byte 0x80–0xFF becomes U+0080–U+00FF; a consumer
/// gets the exact bytes back by encoding the string as Latin-1. Written
/// directly, without building JSON values.
pub fn encode(headers: &HeaderMap) -> Bytes {
    let len = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + PAIR_EXTRA)
        .sum();
    write_pairs(len, headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

/// Encodes `(name, value)` pairs; see [`encode`].
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Bytes {
    write_pairs(0, pairs)
}

/// What a pair adds to its name and value: `["`, `","`, `"]` and the `,`
/// between pairs (7 made every header block of two or more pairs grow,
/// a second allocation and a copy, and doubled its capacity).
const PAIR_EXTRA: usize = 8;

/// The pairs' JSON, in a buffer made for `len` bytes: names and values
/// plus [`PAIR_EXTRA`] per pair (escapes and obs-text make it longer,
/// rarely: one allocation mostly).
fn write_pairs<'a>(len: usize, pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Bytes {
    let mut out = BytesMut::with_capacity(len + 2);
    out.put_u8(b'[');
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(b"[\"");
        put_latin1(&mut out, name.as_bytes());
        out.put_slice(b"\",\"");
        put_latin1(&mut out, value);
        out.put_slice(b"\"]");
    }
    out.put_u8(b']');
    out.freeze()
}

/// `bytes` as the inside of a JSON string, one character per byte.
fn put_latin1(out: &mut BytesMut, bytes: &[u8]) {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    let mut rest = bytes;
    while !rest.is_empty() {
        let run = rest.iter().position(|&b| !plain(b)).unwrap_or(rest.len());
        out.put_slice(&rest[..run]);
        let Some(&b) = rest.get(run) else { break };
        match b {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            b'\t' => out.put_slice(b"\\t"),
            0x80.. => out.put_slice(&[0xc0 | (b >> 6), 0x80 | (b & 0x3f)]),
            _ => out.put_slice(format!("\\u{b:04x}").as_bytes()),
        }
        rest = &rest[run + 1..];
    }
}

/// Decodes what [`encode`] wrote, or the `name: value\r\n` lines that
/// versions before the JSON form stored (an entry admitted by one of them
/// may be delivered by this one); pairs that are not valid headers are
/// skipped. A header name never starts with `[`, so the first byte tells
/// the two forms apart.
pub fn decode(block: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    if block.first() == Some(&b'[') {
        return decode_json(block);
    }
    block
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|&b| b == b':')?;
            let name = HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = line[colon + 1..]
                .strip_prefix(b" ")
                .unwrap_or(&line[colon + 1..]);
            Some((name, HeaderValue::from_bytes(value).ok()?))
        })
        .collect()
}

fn decode_json(block: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    let pairs: Vec<(String, String)> = serde_json::from_slice(block).unwrap_or_default();
    let bytes = |s: &str| -> Option<Vec<u8>> { s.chars().map(|c| u8::try_from(c).ok()).collect() };
    pairs
        .iter()
        .filter_map(|(name, value)| {
            let name = HeaderName::from_bytes(&bytes(name)?).ok()?;
            Some((name, HeaderValue::from_bytes(&bytes(value)?).ok()?))
        })
        .collect()
}

/// A stored header block in the form [`encode`] writes now (a block in the
/// older form is decoded and encoded again).
pub fn upgrade(block: Bytes) -> Bytes {
    if block.first() == Some(&b'[') {
        return block;
    }
    let pairs = decode(&block);
    encode_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

/// Decodes into a map.
pub fn decode_map(block: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in decode(block) {
        map.append(name, value);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret-Hop".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn end_to_end_encoding_is_the_encoding_of_the_stripped_map() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, X-Secret-Hop".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("host", "shop.example".parse().unwrap());
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let also = [header::HOST];
        let mut stripped = h.clone();
        strip_hop_by_hop(&mut stripped);
        stripped.remove(header::HOST);
        assert_eq!(encode_end_to_end(&h, &also), encode(&stripped));
        assert_eq!(
            &encode_end_to_end(&h, &also)[..],
            br#"[["x-a","1"],["x-a","2"],["content-type","application/json"]]"#
        );
    }

    fn head(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for n in names {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn sanitize_drops_gateway_headers_and_underscores_by_default() {
        let mut h = head(&[
            "x-flashgate-ticket",
            "X-Flashgate-Attempt",
            "x_forwarded_for",
            "idempotency_key",
            "content-type",
            "x-flashgatex",
        ]);
        sanitize(&mut h, UnderscoreHeaders::Drop).unwrap();
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-flashgatex"]);
    }

    #[test]
    fn sanitize_refuses_or_keeps_underscores_as_configured() {
        let mut h = head(&["x-flashgate-ticket", "transfer_encoding", "accept"]);
        assert_eq!(
            sanitize(&mut h.clone(), UnderscoreHeaders::Reject),
            Err(Underscore(HeaderName::from_static("transfer_encoding")))
        );
        sanitize(&mut h, UnderscoreHeaders::Allow).unwrap();
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "transfer_encoding"]);
    }

    #[test]
    fn encoding_round_trips_repeated_and_binary_values() {
        let mut h = HeaderMap::new();
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        h.append(
            "x-bin",
            HeaderValue::from_bytes(b"caf\xe9 au lait \x80\xff").unwrap(),
        );
        h.append("x-quote", HeaderValue::from_static(r#"a "b" \c\	d"#));
        h.append("x-empty", HeaderValue::from_static(""));
        let block = encode(&h);
        assert_eq!(decode_map(&block), h);
        // Standard JSON; each byte one character (Latin-1).
        let json: Vec<(String, String)> = serde_json::from_slice(&block).unwrap();
        assert_eq!(
            json[2],
            ("x-bin".into(), "caf\u{e9} au lait \u{80}\u{ff}".into())
        );
        assert_eq!(json[3].1, "a \"b\" \\c\\\td");
        assert_eq!(&encode(&HeaderMap::new())[..], b"[]");
    }

    #[test]
    fn the_crlf_form_of_earlier_versions_still_decodes() {
        let old = b"content-type: application/json\r\nx-bin: caf\xe9\r\nx-a: 1\r\n";
        let mut h = HeaderMap::new();
        h.append("content-type", "application/json".parse().unwrap());
        h.append("x-bin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        h.append("x-a", "1".parse().unwrap());
        assert_eq!(decode_map(old), h);
        assert!(decode(b"").is_empty());
        let upgraded = upgrade(Bytes::from_static(old));
        assert_eq!(
            &upgraded[..],
            "[[\"content-type\",\"application/json\"],[\"x-bin\",\"caf\u{e9}\"],[\"x-a\",\"1\"]]"
                .as_bytes()
        );
        assert_eq!(upgrade(upgraded.clone()), upgraded);
    }

    #[test]
    fn malformed_json_blocks_decode_to_nothing_and_bad_pairs_are_skipped() {
        assert!(decode(b"[[\"x-a\"").is_empty());
        let block = "[[\"x a\",\"1\"],[\"x-b\",\"\u{100}\"],[\"x-c\",\"ok\"]]";
        let pairs = decode(block.as_bytes());
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].0, "x-c");
    }
}
