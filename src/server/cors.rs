//! CORS for browsers on another origin (a shop's pages calling the gateway):
//! only the configured origins, preflights answered here, and the headers a
//! client needs (`Location`, `Retry-After`, …) exposed to its scripts.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::config::Config;
use crate::http::body::{empty, Body};

/// How long a browser may reuse a preflight answer.
const MAX_AGE_SECS: u32 = 600;
/// Response headers a page's script may read.
const EXPOSED: &str =
    "Location, Retry-After, X-Flashgate-Ticket, Idempotent-Replayed, X-Request-Id";

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

/// The answer to `OPTIONS` on a path that accepts `allow` (e.g.
/// `"GET, HEAD, DELETE, OPTIONS"`): `204` with `Allow`, and for a CORS
/// preflight (`Origin` and `Access-Control-Request-Method`) from an allowed
/// origin the grant: exactly the path's methods, the request headers asked
/// for when each is a valid header name, and how long to keep it.
pub fn options(config: &Config, headers: &HeaderMap, allow: &str) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    let Ok(allow) = HeaderValue::from_str(allow) else {
        return resp;
    };
    h.insert(header::ALLOW, allow.clone());
    let preflight = headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight && !config.cors_origins.is_empty() {
        if let Some(origin) = allowed_origin(config, headers) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, allow);
            // Request headers are the client's own business (Idempotency-Key,
            // Prefer, Content-Type, a client key…): whatever it asks for, as
            // long as each is a header name at all.
            if let Some(asked) = headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .filter(|v| header_names(v))
            {
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(MAX_AGE_SECS),
            );
        }
        vary_origin(h);
    }
    resp
}

/// Whether a value is a comma-separated list of header names (RFC 9110
/// tokens), the only thing `Access-Control-Request-Headers` may hold.
fn header_names(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|list| {
        list.split(',')
            .map(str::trim)
            .all(|name| !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok())
    })
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

    fn preflight_headers(origin: &str, asked: &str) -> HeaderMap {
        let mut h = with_origin(origin);
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_str(asked).unwrap(),
        );
        h
    }

    #[test]
    fn preflights_grant_exactly_the_paths_methods_to_allowed_origins() {
        let h = preflight_headers("https://shop.example", "idempotency-key, prefer");
        let resp = options(&config(&[]), &h, "POST, OPTIONS");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()["allow"], "POST, OPTIONS");
        assert!(resp.headers().get("access-control-allow-origin").is_none());
        let c = config(&["https://shop.example"]);
        let resp = options(&c, &h, "POST, OPTIONS");
        let rh = resp.headers();
        assert_eq!(rh["access-control-allow-origin"], "https://shop.example");
        assert_eq!(
            rh["access-control-allow-headers"],
            "idempotency-key, prefer"
        );
        assert_eq!(rh["access-control-allow-methods"], "POST, OPTIONS");
        let h = preflight_headers("https://evil.example", "prefer");
        let resp = options(&c, &h, "POST, OPTIONS");
        assert!(resp.headers().get("access-control-allow-origin").is_none());
    }

    #[test]
    fn invalid_request_header_names_are_never_echoed() {
        let c = config(&["https://shop.example"]);
        for asked in [">m", "a b", "prefer,", "ok, (x)"] {
            let h = preflight_headers("https://shop.example", asked);
            let resp = options(&c, &h, "GET, OPTIONS");
            assert!(
                resp.headers().get("access-control-allow-headers").is_none(),
                "{asked}"
            );
        }
    }

    #[test]
    fn a_plain_options_says_what_the_path_allows() {
        let c = config(&["https://shop.example"]);
        let resp = options(&c, &HeaderMap::new(), "GET, HEAD, OPTIONS");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()["allow"], "GET, HEAD, OPTIONS");
        assert!(resp.headers().get("vary").is_none());
    }
}
