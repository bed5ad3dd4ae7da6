//! The upstream request the drain sends for a stored one (SPEC §4).

use http::{header, HeaderName, HeaderValue, Request};

use crate::backend::QueuedRequest;
use crate::http::body::full;
use crate::http::headers;

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
            idempotency_key: None,
            client: "c".into(),
            forwarded_for: "127.0.0.1".into(),
            forwarded_proto: "http".into(),
            admitted_at_ms: 0,
            product: None,
        };
        let req = build_request("http://upstream", &request, 1).unwrap();
        let asked: Vec<_> = req.headers().get_all("accept-encoding").iter().collect();
        assert_eq!(asked, ["identity"]);
        assert_eq!(req.headers()["content-type"], "application/json");
    }
}
