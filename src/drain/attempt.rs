//! One upstream attempt's pieces: which answers are retried, how long to
//! wait, and the request built from a stored one (SPEC §4).

use std::time::Duration;

use http::{header, HeaderName, HeaderValue, Request};

use crate::backend::QueuedRequest;
use crate::http::body::full;
use crate::http::headers;
use crate::upstream::{Answer, UpstreamError};

/// First retry delay; doubled per attempt, with full jitter.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest wait between attempts, whatever the upstream's Retry-After says.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(30);

/// 429, 502, 503 and 504 ask to be retried (SPEC §4); any other status is final.
pub(super) fn is_retryable(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// Whether an attempt's outcome says the upstream is overloaded: the
/// retryable statuses, a timeout or a failed connection.
pub(super) fn is_overload(result: &Result<Answer, UpstreamError>) -> bool {
    match result {
        Ok(answer) => is_retryable(answer.status),
        Err(UpstreamError::Timeout(_) | UpstreamError::Connect(_)) => true,
        Err(UpstreamError::Body(_)) => false,
    }
}

/// `Retry-After` in seconds (HTTP dates are rare from APIs and ignored).
pub(super) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Exponential backoff with full jitter: uniform in [base·2ⁿ⁻¹/2, base·2ⁿ⁻¹].
pub(super) fn backoff(attempt: u32, max: Duration) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(max);
    let jitter = getrandom::u64().unwrap_or(u64::MAX / 2) as f64 / u64::MAX as f64;
    ceiling.mul_f64(0.5 + jitter / 2.0)
}

/// The upstream request for a stored one (SPEC §4).
pub(super) fn build_request(
    base: &str,
    request: &QueuedRequest,
    attempt: u32,
) -> Result<Request<crate::http::body::Body>, String> {
    let mut req = Request::builder()
        .method(request.method.as_str())
        .uri(format!("{base}{}", request.path))
        .body(full(request.body.clone()))
        .map_err(|e| format!("stored request is not valid HTTP: {e}"))?;
    let h = req.headers_mut();
    for (name, value) in headers::decode(&request.headers) {
        h.append(name, value);
    }
    let ticket = HeaderValue::from_str(request.ticket.as_str()).map_err(|e| e.to_string())?;
    h.insert(HeaderName::from_static("idempotency-key"), ticket.clone());
    h.insert(HeaderName::from_static("x-flashgate-ticket"), ticket);
    h.insert(
        HeaderName::from_static("x-flashgate-attempt"),
        HeaderValue::from(attempt),
    );
    if let Ok(v) = HeaderValue::from_str(&request.forwarded_for) {
        h.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&request.forwarded_proto) {
        h.insert(HeaderName::from_static("x-forwarded-proto"), v);
    }
    // The answer is stored for the ticket, not streamed to the client that
    // negotiated: ask for it uncompressed, so it is stored readable with no
    // work on either side (an upstream that compresses anyway is decoded,
    // see upstream::coding). Also overrides what entries stored before the
    // gateway stopped keeping the client's Accept-Encoding still carry.
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..20 {
            let d = backoff(attempt, RETRY_MAX);
            assert!(d <= RETRY_MAX, "{attempt}: {d:?}");
            let exp = RETRY_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(RETRY_MAX);
            assert!(d >= exp / 2, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn deliveries_ask_for_an_uncompressed_answer() {
        // As an entry stored before admission dropped Accept-Encoding holds it.
        let request = QueuedRequest {
            ticket: crate::ticket::TicketId::generate(crate::ticket::QueueTag::of("q")),
            method: "POST".into(),
            path: "/checkout".into(),
            headers: headers::encode_pairs([
                ("accept-encoding", &b"gzip, br"[..]),
                ("content-type", b"application/json"),
            ]),
            body: bytes::Bytes::from_static(b"{}"),
            client: "c".into(),
            forwarded_for: "127.0.0.1".into(),
            forwarded_proto: "http".into(),
            admitted_at_ms: 0,
        };
        let req = build_request("http://upstream", &request, 1).unwrap();
        let asked: Vec<_> = req.headers().get_all("accept-encoding").iter().collect();
        assert_eq!(asked, ["identity"]);
        assert_eq!(req.headers()["content-type"], "application/json");
    }

    #[test]
    fn only_overload_statuses_are_retried() {
        for code in [429, 502, 503, 504] {
            assert!(is_retryable(http::StatusCode::from_u16(code).unwrap()));
        }
        for code in [200, 201, 400, 409, 410, 422, 500] {
            assert!(!is_retryable(http::StatusCode::from_u16(code).unwrap()));
        }
    }
}
