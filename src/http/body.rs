//! The body type of every response, and small constructors.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Errors inside bodies (client, upstream or limit errors).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response or upstream-request body: buffered or streamed.
pub type Body = BoxBody<Bytes, BoxError>;

/// A buffered body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response with the given status.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    // Room for a ticket answer (~200 bytes) without growing.
    let mut bytes = Vec::with_capacity(256);
    if serde_json::to_writer(&mut bytes, value).is_err() {
        bytes.clear();
    }
    json_bytes(status, bytes)
}

/// A response with the given status and JSON `bytes` as its body.
pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Most of an unread request body that is read and dropped after an answer
/// given before the handler read it, so a keep-alive connection can carry the
/// client's next request (nginx's lingering close, bounded). hyper would
/// otherwise close the connection without saying so, and the client's next
/// request on it fails with a broken pipe.
const DISCARD_MAX: u64 = 64 * 1024;
/// How long that read may take.
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Settles the unread request `body` of an answer given early (a refusal, a
/// 404, a ticket): reads and drops a small body that arrives promptly, and
/// otherwise (too large, too slow, broken, or held back by
/// `Expect: 100-continue`) marks the answer `Connection: close`, so the
/// client knows not to reuse the connection.
pub async fn settle(
    resp: &mut Response<Body>,
    expects_continue: bool,
    body: hyper::body::Incoming,
) {
    use hyper::body::Body as _;
    if body.is_end_stream() {
        return;
    }
    let fits = body.size_hint().upper().is_none_or(|n| n <= DISCARD_MAX);
    let drained = !expects_continue
        && fits
        && tokio::time::timeout(DISCARD_TIME, discard(body))
            .await
            .unwrap_or(false);
    if !drained {
        close(resp);
    }
}

/// Reads a body to its end, at most [`DISCARD_MAX`] bytes; whether it ended.
async fn discard(mut body: hyper::body::Incoming) -> bool {
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            super::exchange::read(data.len() as u64);
            if read > DISCARD_MAX {
                return false;
            }
        }
    }
    true
}

/// Marks an answer as the connection's last.
pub fn close(resp: &mut Response<Body>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// Whether a request asks for `100 Continue` before sending its body.
pub fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}
