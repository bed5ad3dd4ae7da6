use http_body_util::BodyExt;

use super::*;

async fn text(resp: Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn header<'a>(resp: &'a Response<Body>, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn a_ticket() -> String {
    TicketId::generate(crate::ticket::QueueTag::of("checkout")).to_string()
}

#[tokio::test]
async fn the_waiting_room_is_served_with_strict_headers() {
    let resp = waiting_room(&a_ticket(), &Config::default());
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&resp, "cache-control"), "no-store");
    assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
    assert_eq!(header(&resp, "referrer-policy"), "no-referrer");
    let csp = header(&resp, "content-security-policy").to_string();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(text(resp).await.contains("Leave the queue"));
}

#[tokio::test]
async fn the_csp_pins_exactly_the_page_s_inline_script_and_style() {
    let csp = waiting_room(&a_ticket(), &Config::default())
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let script = inline(WAITING_ROOM, "script");
    let style = inline(WAITING_ROOM, "style");
    assert!(script.contains("EventSource"));
    assert!(style.contains("prefers-reduced-motion"));
    assert!(csp.contains(&format!("script-src '{}'", csp_hash(script))));
    assert!(csp.contains(&format!("style-src '{}'", csp_hash(style))));
    // One of each: a second inline element would be blocked by the policy.
    assert_eq!(WAITING_ROOM.matches("<script").count(), 1);
    assert_eq!(WAITING_ROOM.matches("<style").count(), 1);
    // No inline handlers or style attributes, which the policy also blocks.
    assert!(!WAITING_ROOM.contains(" style=\""));
    assert!(!WAITING_ROOM.contains(" onclick="));
    // Known vector: the hash is base64 of SHA-256.
    assert_eq!(
        csp_hash("abc"),
        "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
    );
}

#[tokio::test]
async fn the_page_loads_nothing_from_elsewhere_and_never_writes_markup() {
    for outside in ["http://", "https://", "//fonts", "@import", "url("] {
        assert!(
            !WAITING_ROOM.contains(outside),
            "the page refers to {outside}"
        );
    }
    // SVG namespaces aside there is no URL at all; upstream data only ever
    // reaches the page through textContent.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!WAITING_ROOM.contains(sink), "the page uses {sink}");
    }
}

#[tokio::test]
async fn the_ticket_in_the_path_is_never_reflected() {
    let hostile = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let resp = route(
        &Method::GET,
        &format!("/waiting-room/{hostile}"),
        &Config::default(),
    )
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8");
    let page = text(resp).await;
    assert!(!page.contains(hostile));
    assert!(!page.contains("alert(1)"));
    let id = a_ticket();
    let page = text(waiting_room(&id, &Config::default())).await;
    assert!(!page.contains(&id));
    assert_eq!(page, WAITING_ROOM);
}

#[tokio::test]
async fn routes_cover_the_two_paths_and_nothing_else() {
    let id = a_ticket();
    let ok = route(
        &Method::GET,
        &format!("/waiting-room/{id}"),
        &Config::default(),
    )
    .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let head = route(&Method::HEAD, "/openapi.json", &Config::default()).unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let post = route(
        &Method::POST,
        &format!("/waiting-room/{id}"),
        &Config::default(),
    )
    .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&post, "allow"), "GET, HEAD, OPTIONS");
    assert_eq!(header(&post, "content-type"), "application/problem+json");
    let join = route(&Method::GET, "/waiting-room/join", &Config::default()).unwrap();
    assert_eq!(join.status(), StatusCode::OK);
    assert!(serves("/waiting-room/join"));
    assert!(route(&Method::GET, "/waiting-room/", &Config::default()).is_none());
    assert!(route(&Method::GET, "/waiting-room/a/b", &Config::default()).is_none());
    assert!(route(&Method::GET, "/waiting-room", &Config::default()).is_none());
    assert!(route(&Method::GET, "/openapi.yaml", &Config::default()).is_none());
    assert!(route(&Method::GET, "/tickets/x", &Config::default()).is_none());
}

#[tokio::test]
async fn the_served_openapi_document_parses_and_has_every_path() {
    let resp = openapi();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), "application/json");
    let doc: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/checkout",
        "/tickets/{ticket}",
        "/tickets/{ticket}/response",
        "/waiting-room/{ticket}",
        "/waiting-room/join",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "no {path} in {:?}", paths.keys());
    }
    // Status codes are keys, and arrive as strings.
    assert!(doc["paths"]["/checkout"]["post"]["responses"]["202"].is_object());
    assert_eq!(
        doc["paths"]["/tickets/{ticket}"]["get"]["parameters"][0]["schema"]["maximum"],
        60
    );
}

/// Every code the public listener can answer with. The match below stops
/// compiling when a variant is added, so that list is revisited with it.
const PUBLIC_CODES: &[Code] = &[
    Code::BadRequest,
    Code::TicketNotFound,
    Code::NotFound,
    Code::MethodNotAllowed,
    Code::BodyTooLarge,
    Code::IdempotencyKeyReused,
    Code::QueueFull,
    Code::Unavailable,
    Code::SoldOut,
    Code::SaleClosed,
    Code::SaleNotOpen,
    Code::RateLimited,
    Code::BadGateway,
    Code::GatewayTimeout,
    Code::RequestTimeout,
    Code::UriTooLong,
    Code::TicketNotCancellable,
    Code::TicketCancelled,
    Code::TicketHasNoResponse,
    Code::InvalidProduct,
    Code::UnknownProduct,
    Code::ClientQuotaExceeded,
    Code::PowRequired,
    Code::PowInvalid,
    Code::PowExpired,
    Code::PowInsufficient,
    Code::PowReused,
];

fn is_public(code: Code) -> bool {
    match code {
        // The admin listener's only.
        Code::Unauthorized | Code::DeadLetterNotFound | Code::DeadLetterNotReplayable => false,
        Code::BadRequest
        | Code::TicketNotFound
        | Code::NotFound
        | Code::MethodNotAllowed
        | Code::BodyTooLarge
        | Code::IdempotencyKeyReused
        | Code::QueueFull
        | Code::Unavailable
        | Code::SoldOut
        | Code::SaleClosed
        | Code::SaleNotOpen
        | Code::RateLimited
        | Code::BadGateway
        | Code::GatewayTimeout
        | Code::RequestTimeout
        | Code::UriTooLong
        | Code::TicketNotCancellable
        | Code::TicketCancelled
        | Code::TicketHasNoResponse
        | Code::InvalidProduct
        | Code::UnknownProduct
        | Code::ClientQuotaExceeded
        | Code::PowRequired
        | Code::PowInvalid
        | Code::PowExpired
        | Code::PowInsufficient
        | Code::PowReused => PUBLIC_CODES.contains(&code),
    }
}

#[test]
fn every_problem_code_of_the_public_api_is_documented() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let documented: Vec<&str> = doc["components"]["schemas"]["Problem"]["properties"]["code"]
        ["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for &code in PUBLIC_CODES {
        assert!(is_public(code));
        assert!(
            documented.contains(&code.as_str()),
            "{} is not in docs/openapi.yaml",
            code.as_str()
        );
    }
    assert!(!is_public(Code::Unauthorized));
}

fn branded() -> Config {
    Config {
        waiting_room_shop_name: Some("Ada's <script>alert(1)</script> & Co".into()),
        waiting_room_logo_url: Some("https://cdn.example.com/logo.svg".into()),
        waiting_room_return_url: Some("https://shop.example/done?x=\"1\"".into()),
        waiting_room_accent: Some("#1a4d2e".into()),
        waiting_room_background: Some("#fed".into()),
        waiting_room_lang: "de".into(),
        waiting_room_text: [(
            "queued_title".to_string(),
            "</main><script>x()</script>".to_string(),
        )]
        .into(),
        ..Config::default()
    }
}

#[tokio::test]
async fn branding_is_escaped_into_the_page_and_never_runs() {
    let resp = waiting_room(&a_ticket(), &branded());
    let csp = header(&resp, "content-security-policy").to_string();
    let page = text(resp).await;
    assert!(page.contains("<html lang=\"de\">"));
    assert!(page.contains(
        "<span id=\"shop-name\">Ada&#39;s &lt;script&gt;alert(1)&lt;/script&gt; &amp; Co</span>"
    ));
    assert!(page.contains("<img id=\"logo\" src=\"https://cdn.example.com/logo.svg\" alt=\"\">"));
    // Still one script and one style: nothing configured became an element.
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert_eq!(page.matches("<style").count(), 1);
    assert!(!page.contains("alert(1)</script>"));
    // The JavaScript's part: JSON, escaped as an attribute value.
    let start = page.find("data-config=\"").unwrap() + "data-config=\"".len();
    let attr = &page[start..start + page[start..].find('"').unwrap()];
    assert!(!attr.contains('<') && !attr.contains('\''));
    let unescaped = attr
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let data: serde_json::Value = serde_json::from_str(&unescaped).unwrap();
    assert_eq!(data["returnUrl"], "https://shop.example/done?x=\"1\"");
    assert_eq!(data["text"]["queued_title"], "</main><script>x()</script>");
    // Colours as hex only, light-only, and the CSP pins the branded style
    // and lets the logo's origin in, nothing more.
    assert!(page.contains(":root{--accent:#1a4d2e;--page:#ffeedd;--accent-soft:"));
    assert!(!page.contains("prefers-color-scheme: dark"));
    assert!(page.contains("<meta name=\"color-scheme\" content=\"light\">"));
    assert!(csp.contains(&format!("style-src '{}'", csp_hash(inline(&page, "style")))));
    assert!(csp.contains(&format!(
        "script-src '{}'",
        csp_hash(inline(WAITING_ROOM, "script"))
    )));
    assert!(
        csp.contains("img-src 'self' data: https://cdn.example.com;"),
        "{csp}"
    );
}

#[test]
fn escape_covers_markup_and_both_quotes() {
    assert_eq!(
        escape("<a href='x' title=\"y\">&</a>"),
        "&lt;a href=&#39;x&#39; title=&quot;y&quot;&gt;&amp;&lt;/a&gt;"
    );
    assert_eq!(escape("plain text"), "plain text");
}

/// The page's texts and the keys the configuration accepts are the same
/// set: an override is never refused for a text the page has, nor accepted
/// for one it lacks.
#[test]
fn every_text_key_is_a_text_of_the_page() {
    let script = inline(WAITING_ROOM, "script");
    let table = &script[script.find("var TEXT = {").unwrap()..];
    let table = &table[..table.find("};").unwrap()];
    let in_page: Vec<&str> = table
        .lines()
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .collect();
    let mut configured = crate::config::waiting_room::TEXT_KEYS.to_vec();
    let mut page_keys = in_page.clone();
    configured.sort();
    page_keys.sort();
    assert_eq!(page_keys, configured);
}

/// The join page is the waiting room itself, with a policy that lets in
/// exactly the proof-of-work solver from this origin, as a script and as
/// its worker; the ticket page keeps the stricter one.
#[tokio::test]
async fn the_join_page_is_the_waiting_room_with_the_solver_allowed() {
    let resp = route(&Method::GET, "/waiting-room/join", &branded()).unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&resp, "cache-control"), "no-store");
    assert_eq!(header(&resp, "referrer-policy"), "no-referrer");
    let csp = header(&resp, "content-security-policy").to_string();
    let page = text(resp).await;
    let ticket_page = waiting_room(&a_ticket(), &branded());
    let ticket_csp = header(&ticket_page, "content-security-policy").to_string();
    assert_eq!(page, text(ticket_page).await, "one page, one branding");
    let script = csp_hash(inline(&page, "script"));
    let style = csp_hash(inline(&page, "style"));
    assert_eq!(
        csp,
        format!(
            "default-src 'none'; script-src '{script}' 'self'; worker-src 'self'; \
             style-src '{style}'; connect-src 'self'; \
             img-src 'self' data: https://cdn.example.com; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        )
    );
    assert_eq!(
        ticket_csp,
        format!(
            "default-src 'none'; script-src '{script}'; style-src '{style}'; \
             connect-src 'self'; img-src 'self' data: https://cdn.example.com; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    );
    // What the join page loads: the solver, from this origin only.
    assert!(page.contains("s.src = '/flashgate-pow.js';"));
    let post = route(&Method::POST, "/waiting-room/join", &Config::default()).unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
}
