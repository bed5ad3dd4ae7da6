//! Pages and documents for people and tools: the waiting room a shop links
//! its customers to (`GET /waiting-room/{ticket}`) and the API description
//! (`GET /openapi.json`). Both are static, built into the binary.

use std::sync::LazyLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{header, HeaderValue, Method, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::http::body::{full, Body};
use crate::http::problem::{Code, Problem};
use crate::ticket::TicketId;

/// The waiting room: one self-contained HTML file (inline CSS and JS, no
/// external resources).
const WAITING_ROOM: &str = include_str!("../../assets/waiting-room.html");

/// `docs/openapi.yaml` as JSON, converted by `build.rs`.
const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// Path prefix of the waiting room.
const WAITING_ROOM_PREFIX: &str = "/waiting-room/";

/// The page's Content-Security-Policy: only its own inline script and style
/// (pinned by hash, so an injected one would not run), requests to this
/// origin only, no framing, no forms, no plugins.
static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    let script = csp_hash(inline(WAITING_ROOM, "script"));
    let style = csp_hash(inline(WAITING_ROOM, "style"));
    let policy = format!(
        "default-src 'none'; script-src '{script}'; style-src '{style}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).expect("a CSP of ASCII tokens is a valid header")
});

/// Answers the paths this module serves, or `None` for any other path.
/// Whether [`route`] serves `path`.
pub fn serves(path: &str) -> bool {
    match path.strip_prefix(WAITING_ROOM_PREFIX) {
        Some(t) => !t.is_empty() && !t.contains('/'),
        None => path == "/openapi.json",
    }
}

pub fn route(method: &Method, path: &str) -> Option<Response<Body>> {
    let ticket = match path.strip_prefix(WAITING_ROOM_PREFIX) {
        Some(t) if !t.is_empty() && !t.contains('/') => Some(t),
        Some(_) => return None,
        None if path == "/openapi.json" => None,
        None => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        let problem = Problem::new(Code::MethodNotAllowed, format!("{path} accepts GET"))
            .allow("GET, HEAD, OPTIONS".into());
        return Some(problem.into_response());
    }
    Some(ticket.map_or_else(openapi, waiting_room))
}

/// `GET /waiting-room/{ticket}`: the page that follows a ticket for a person.
/// The ticket is never written into the page (its script reads the address
/// bar), so nothing a client puts in the path can end up as markup. An id
/// that cannot be a ticket gets the same page with 404; the page then shows
/// its not-found state.
pub fn waiting_room(ticket: &str) -> Response<Body> {
    let mut resp = Response::new(full(WAITING_ROOM));
    if TicketId::parse(ticket).is_none() {
        *resp.status_mut() = StatusCode::NOT_FOUND;
    }
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Each load must show the ticket's state now, never a cached page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, CSP.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The ticket is in the URL: it must not leak to any other site.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// `GET /openapi.json`: the OpenAPI 3.1 description of the public API.
pub fn openapi() -> Response<Body> {
    let mut resp = Response::new(full(OPENAPI_JSON));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // It changes only with a new build.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The text of the first `<tag>…</tag>` element of `page`: what a CSP hash
/// covers (everything between the tags, byte for byte).
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = page
        .find(&open)
        .map(|i| i + open.len())
        .unwrap_or_else(|| panic!("the waiting room has a <{tag}> element"));
    let len = page[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("the waiting room closes its <{tag}> element"));
    &page[start..start + len]
}

/// A CSP source expression for an inline element's text.
fn csp_hash(text: &str) -> String {
    format!(
        "sha256-{}",
        STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

#[cfg(test)]
mod tests;
