//! What an admission request says, read cheaply and safely: its declared
//! size, its Idempotency-Key, its `Prefer: wait`, its body (bounded in size
//! and time), and what is left of the body when it is refused.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use crate::http::problem::{Code, Problem};

/// Longest `Idempotency-Key` accepted (SPEC §3.1).
pub(super) const MAX_IDEMPOTENCY_KEY: usize = 255;

pub(super) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A static name: looking up a `&str` parses and lower-cases it first.
static PREFER: HeaderName = HeaderName::from_static("prefer");

/// A refused admission, and what is left of its request body: the
/// connection stays usable only once the body is read to its end.
pub(super) struct Refusal {
    pub(super) problem: Problem,
    pub(super) body: Leftover,
}

pub(super) enum Leftover {
    /// Refused before a byte of the body was read.
    Unread(Incoming),
    /// Read whole.
    Read,
    /// Read in part (too large, too slow, broken): the connection must close.
    Cut,
}

impl Refusal {
    pub(super) fn unread(problem: Problem, body: Incoming) -> Self {
        Refusal {
            problem,
            body: Leftover::Unread(body),
        }
    }
}

impl From<Problem> for Refusal {
    /// A refusal after the body was read whole.
    fn from(problem: Problem) -> Self {
        Refusal {
            problem,
            body: Leftover::Read,
        }
    }
}

/// `Prefer: wait=N` (RFC 7240): how long the client would rather wait for
/// the upstream's own answer than get a ticket; zero with `respond-async`,
/// without a preference, or with a malformed one.
pub(super) fn preferred_wait(headers: &HeaderMap) -> Duration {
    let mut wait = Duration::ZERO;
    for pref in headers
        .get_all(&PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let token = pref.split(';').next().unwrap_or_default().trim();
        if token.eq_ignore_ascii_case("respond-async") {
            return Duration::ZERO;
        }
        if let Some((name, value)) = token.split_once('=') {
            if name.trim().eq_ignore_ascii_case("wait") {
                if let Ok(secs) = value.trim().trim_matches('"').parse::<u64>() {
                    wait = Duration::from_secs(secs);
                }
            }
        }
    }
    wait
}

pub(super) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| Problem::new(Code::BadRequest, "Content-Length is not a number"))
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Problem::new(
            Code::BadRequest,
            "more than one Idempotency-Key header",
        ));
    }
    match value.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(k.to_string())),
        _ => Err(Problem::new(
            Code::BadRequest,
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )),
    }
}

pub(super) async fn read_body(
    body: Incoming,
    max: u64,
    timeout: Duration,
) -> Result<Bytes, Refusal> {
    read_whole(body, max, timeout)
        .await
        .map_err(|problem| Refusal {
            problem,
            body: Leftover::Cut,
        })
}

pub(super) async fn read_whole(
    body: Incoming,
    max: u64,
    timeout: Duration,
) -> Result<Bytes, Problem> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    // A client that trickles its body holds a connection and a buffer: it
    // gets `timeout` for all of it, then 408.
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(Problem::new(
            Code::RequestTimeout,
            format!("the request body did not arrive within {timeout:?}"),
        ));
    };
    match read {
        // A copy: the collected bytes are a slice of hyper's read buffer,
        // and an entry that waits in the embedded queue would keep that
        // whole buffer alive (5.5 KiB per queued admission, measured).
        Ok(collected) => Ok(Bytes::copy_from_slice(&collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Err(e) => Err(Problem::new(
            Code::BadRequest,
            format!("could not read the request body: {e}"),
        )),
    }
}

pub(super) fn too_large(max: u64) -> Problem {
    Problem::new(
        Code::BodyTooLarge,
        format!("the request body is larger than {max} bytes"),
    )
}

pub(super) fn hex_digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    // Into a buffer of its own: `hex::encode` builds its string one
    // `char` at a time, ~2,000 instructions a digest.
    let mut out = [0u8; 64];
    hex::encode_to_slice(h.finalize(), &mut out).expect("32 bytes are 64 hex digits");
    std::str::from_utf8(&out)
        .expect("hex digits are ASCII")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digest_is_the_lower_hex_of_the_length_prefixed_sha256() {
        let parts: [&[u8]; 3] = [b"POST", b"/checkout?x=1", b"{\"sku\":\"a\"}"];
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        assert_eq!(hex_digest(&parts), hex::encode(h.finalize()));
        assert_eq!(
            hex_digest(&[]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
