//! CORS for browsers on another origin (a shop's pages calling the gateway):
//! only the configured origins, preflights answered here, and the headers a
//! client needs (`Location`, `Retry-After`, …) exposed to its scripts.

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::body::{empty, Body};
use crate::config::Config;

/// How long a browser may reuse a preflight answer.
const MAX_AGE_SECS: u32 = 600;
/// Methods the public API answers.
const METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
/// Response headers a page's script may read.
const EXPOSED: &str = "Location, Retry-After, X-Flashgate-Ticket, Idempotent-Replayed";

/// The `Access-Control-Allow-Origin` value for a request, when its `Origin`
/// is allowed.
pub fn allowed_origin(config: &Config, headers: &HeaderMap) -> Option<HeaderValue> {
    if config.cors_origins.is_empty() {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?;
    if config.cors_origins.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    let text = origin.to_str().ok()?;
    config
        .cors_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

/// The answer to a CORS preflight (`OPTIONS` with
/// `Access-Control-Request-Method`), when CORS is configured: 204, with the
/// grant only for an allowed origin.
pub fn preflight(config: &Config, method: &Method, headers: &HeaderMap) -> Option<Response<Body>> {
    if config.cors_origins.is_empty()
        || method != Method::OPTIONS
        || !headers.contains_key(header::ORIGIN)
        || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    if let Some(origin) = allowed_origin(config, headers) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        // Request headers are the client's own business (Idempotency-Key,
        // Prefer, Content-Type, a client key…): whatever it asks for.
        if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(MAX_AGE_SECS),
        );
    }
    vary_origin(resp.headers_mut());
    Some(resp)
}

/// Adds the CORS grant to an answer for an allowed origin.
pub fn grant(resp: &mut Response<Body>, origin: Option<HeaderValue>) {
    let h = resp.headers_mut();
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        vary_origin(h);
    }
}

fn vary_origin(h: &mut HeaderMap) {
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origins: &[&str]) -> Config {
        let text = format!("upstream = \"http://127.0.0.1:9\"\ncors_origins = {origins:?}\n");
        Config::from_toml(&text).unwrap()
    }

    #[test]
    fn origins_must_be_origins() {
        let text = "upstream = \"http://127.0.0.1:9\"\ncors_origins = [\"shop.example\"]\n";
        let err = Config::from_toml(text).unwrap_err();
        assert!(err.to_string().contains("shop.example"), "{err}");
    }

    fn with_origin(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h
    }

    #[test]
    fn only_listed_origins_are_granted() {
        let c = config(&["https://shop.example"]);
        assert_eq!(
            allowed_origin(&c, &with_origin("https://shop.example")).unwrap(),
            "https://shop.example"
        );
        assert!(allowed_origin(&c, &with_origin("https://evil.example")).is_none());
        assert!(allowed_origin(&c, &HeaderMap::new()).is_none());
        assert!(allowed_origin(&config(&[]), &with_origin("https://shop.example")).is_none());
        assert_eq!(
            allowed_origin(&config(&["*"]), &with_origin("https://any.example")).unwrap(),
            "*"
        );
    }

    #[test]
    fn preflights_are_answered_only_when_cors_is_on() {
        let mut h = with_origin("https://shop.example");
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("idempotency-key, prefer"),
        );
        assert!(preflight(&config(&[]), &Method::OPTIONS, &h).is_none());
        let c = config(&["https://shop.example"]);
        assert!(preflight(&c, &Method::POST, &h).is_none());
        let resp = preflight(&c, &Method::OPTIONS, &h).unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let rh = resp.headers();
        assert_eq!(rh["access-control-allow-origin"], "https://shop.example");
        assert_eq!(
            rh["access-control-allow-headers"],
            "idempotency-key, prefer"
        );
        assert!(rh["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("DELETE"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        let resp = preflight(&c, &Method::OPTIONS, &h).unwrap();
        assert!(resp.headers().get("access-control-allow-origin").is_none());
    }
}
