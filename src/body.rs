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
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
