//! Following a request across services: its `X-Request-Id` (taken from a
//! trusted proxy, else made here) and its W3C Trace Context
//! (`traceparent`/`tracestate`), which travel on to the upstream with the
//! request's other end-to-end headers, queued or passed through.

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `X-Request-Id` taken from a proxy.
pub const MAX_REQUEST_ID: usize = 200;

/// Gives a request its id and checks its trace context, in its own
/// headers, so that whatever forwards or stores them carries both:
///
/// - `X-Request-Id` is kept when `trusted` (the peer is a trusted proxy)
///   and it is one header of 1–[`MAX_REQUEST_ID`] visible ASCII
///   characters; otherwise it is replaced by a fresh one. A client's own
///   would let it pass its requests off as another's in every log.
/// - `traceparent` is kept when it is one well-formed W3C header
///   ([`valid_traceparent`]); otherwise it is removed, and `tracestate`
///   with it (W3C Trace Context §3.3: no trace state without a parent).
///
/// Returns the id.
pub fn adopt(headers: &mut HeaderMap, trusted: bool) -> HeaderValue {
    let given = single(headers, &X_REQUEST_ID).filter(|v| trusted && valid_request_id(v));
    let id = match given {
        Some(id) => id.clone(),
        None => {
            let id = generate();
            headers.insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    };
    let parent_ok = single(headers, &TRACEPARENT).is_some_and(|v| valid_traceparent(v.as_bytes()));
    if !parent_ok && (headers.contains_key(&TRACEPARENT) || headers.contains_key(&TRACESTATE)) {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
    }
    id
}

/// The value of `name` when the request has exactly one.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// 1–[`MAX_REQUEST_ID`] visible ASCII characters (no spaces), so the id
/// is one token in a log line and safe in any header.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=MAX_REQUEST_ID).contains(&b.len()) && b.iter().all(|c| c.is_ascii_graphic())
}

/// A `traceparent` as W3C Trace Context level 1 defines it:
/// `version-traceid-parentid-flags`, lower-case hex of 2, 32, 16 and 2
/// digits; the version not `ff`, neither id all zeros. A version above
/// `00` may carry more after a `-` (§3.2.4: parse what this version
/// knows); `00` may not.
pub fn valid_traceparent(v: &[u8]) -> bool {
    const LEN: usize = 55;
    if v.len() < LEN {
        return false;
    }
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zeros = |s: &[u8]| s.iter().all(|&c| c == b'0');
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    let dashes = v[2] == b'-' && v[35] == b'-' && v[52] == b'-';
    let tail_ok = match version {
        b"00" => v.len() == LEN,
        _ => v.len() == LEN || v[LEN] == b'-',
    };
    dashes
        && tail_ok
        && hex(version)
        && version != b"ff"
        && hex(trace)
        && !zeros(trace)
        && hex(parent)
        && !zeros(parent)
        && hex(flags)
}

thread_local! {
    /// Each thread's request id generator: two random keys and a counter.
    static IDS: ([u64; 2], Cell<u64>) = (
        [getrandom::u64().unwrap_or(1), getrandom::u64().unwrap_or(2)],
        Cell::new(0),
    );
}

/// A fresh request id: 128 bits in 32 lower-case hex digits, without a
/// system call. Ids need to be unique, not secret: each half mixes one of
/// the thread's random keys with the thread's counter (SplitMix64), so a
/// thread never repeats itself, and two threads meet only if both pairs of
/// keys lie the same distance apart (a 2^-64 chance).
pub fn generate() -> HeaderValue {
    let (a, b) = IDS.with(|([k1, k2], n)| {
        let i = n.get();
        n.set(i.wrapping_add(1));
        (mix(k1.wrapping_add(i)), mix(k2.wrapping_add(i)))
    });
    let mut out = [0u8; 32];
    let digits = b"0123456789abcdef";
    for (i, byte) in a.to_be_bytes().iter().chain(&b.to_be_bytes()).enumerate() {
        out[2 * i] = digits[usize::from(byte >> 4)];
        out[2 * i + 1] = digits[usize::from(byte & 0xf)];
    }
    // One allocation, shared by every clone of the value (the request's
    // header, the answer's, the exchange's): a copied slice would be
    // copied again on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .expect("hex digits are a valid header value")
}

/// SplitMix64's output function over a Weyl sequence step.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn traceparent_follows_the_w3c_grammar() {
        assert!(valid_traceparent(PARENT.as_bytes()));
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next";
        assert!(valid_traceparent(future.as_bytes()));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
        ] {
            assert!(!valid_traceparent(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn a_trusted_proxys_id_is_kept_and_anyone_elses_replaced() {
        let mut h = head(&[("x-request-id", "edge-42")]);
        assert_eq!(adopt(&mut h, true), "edge-42");
        assert_eq!(h["x-request-id"], "edge-42");

        let mut h = head(&[("x-request-id", "edge-42")]);
        let id = adopt(&mut h, false);
        assert_ne!(id, "edge-42");
        assert_eq!(h.get_all("x-request-id").iter().collect::<Vec<_>>(), [&id]);

        let long = "x".repeat(MAX_REQUEST_ID + 1);
        for bad in ["has space", long.as_str()] {
            let mut h = head(&[("x-request-id", bad)]);
            assert_ne!(adopt(&mut h, true), bad);
        }
        let mut two = head(&[("x-request-id", "a"), ("x-request-id", "b")]);
        let id = adopt(&mut two, true);
        assert_eq!(
            two.get_all("x-request-id").iter().collect::<Vec<_>>(),
            [&id]
        );
        assert_eq!(id.len(), 32);
    }

    #[test]
    fn a_malformed_traceparent_goes_with_its_tracestate() {
        let mut h = head(&[("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")]);
        adopt(&mut h, false);
        assert_eq!(h["traceparent"], PARENT);
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");

        let mut h = head(&[
            ("traceparent", "00-xyz-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        adopt(&mut h, false);
        assert!(!h.contains_key("traceparent") && !h.contains_key("tracestate"));

        let mut h = head(&[("tracestate", "congo=t61rcWkgMzE")]);
        adopt(&mut h, false);
        assert!(
            !h.contains_key("tracestate"),
            "no trace state without a parent"
        );

        let mut h = head(&[("traceparent", PARENT), ("traceparent", PARENT)]);
        adopt(&mut h, false);
        assert!(!h.contains_key("traceparent"), "two parents are none");
    }

    #[test]
    fn generated_ids_are_distinct_hex() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
        let one = generate();
        assert_eq!(one.len(), 32);
        assert!(one
            .as_bytes()
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(valid_request_id(&one));
    }
}
