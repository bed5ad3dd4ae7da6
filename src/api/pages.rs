//! Pages and documents for people and tools: the waiting room a shop links
//! its customers to (`GET /waiting-room/{ticket}`, and
//! `GET /waiting-room/join`, where the same page admits them first), the API
//! description (`GET /openapi.json`), and the browser's proof-of-work solver
//! (`GET /flashgate-pow.js`). All are built into the binary; the waiting
//! room carries the shop's branding from the configuration (`waiting_room_*`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{header, HeaderValue, Method, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::config::waiting_room::{logo_origin, parse_colour};
use crate::config::Config;
use crate::http::body::{full, Body};
use crate::http::problem::{Code, Problem};
use crate::ticket::TicketId;

/// The waiting room: one self-contained HTML file (inline CSS and JS, no
/// external resources).
const WAITING_ROOM: &str = include_str!("../../assets/waiting-room.html");

/// `docs/openapi.yaml` as JSON, converted by `build.rs`.
const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The browser's proof-of-work solver: a script that is also its own Web
/// Worker (README "Proof of work").
const POW_JS: &str = include_str!("../../assets/flashgate-pow.js");
const POW_JS_PATH: &str = "/flashgate-pow.js";

/// Path prefix of the waiting room.
const WAITING_ROOM_PREFIX: &str = "/waiting-room/";

/// `/waiting-room/join`: the page that admits the order itself (its
/// script reads what to send from the query and the fragment), then follows
/// the ticket. Never a ticket id, which has 48 characters.
const JOIN: &str = "join";

/// The waiting room as served with one branding: the page and its
/// Content-Security-Policy: only its own inline script and style (pinned by
/// hash, so an injected one would not run), requests to this origin only,
/// images from it or the configured logo's origin, no framing, no forms, no
/// plugins. Joining also needs the proof-of-work solver from this origin,
/// as a script and as its worker.
struct Rendered {
    /// Shared by every response: a load copies no page.
    page: bytes::Bytes,
    csp: HeaderValue,
    join_csp: HeaderValue,
}

/// The configuration's `waiting_room_*` values.
#[derive(Clone, PartialEq)]
struct Branding {
    shop: Option<String>,
    logo: Option<String>,
    return_url: Option<String>,
    accent: Option<String>,
    background: Option<String>,
    lang: String,
    text: BTreeMap<String, String>,
}

impl Branding {
    fn of(c: &Config) -> Self {
        Branding {
            shop: c.waiting_room_shop_name.clone(),
            logo: c.waiting_room_logo_url.clone(),
            return_url: c.waiting_room_return_url.clone(),
            accent: c.waiting_room_accent.clone(),
            background: c.waiting_room_background.clone(),
            lang: c.waiting_room_lang.clone(),
            text: c.waiting_room_text.clone(),
        }
    }
}

/// The page for the branding last served: a reload changes it, a page load
/// does not render it again.
fn rendered(config: &Config) -> Arc<Rendered> {
    static LAST: Mutex<Option<(Branding, Arc<Rendered>)>> = Mutex::new(None);
    let branding = Branding::of(config);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match &*last {
        Some((b, page)) if *b == branding => page.clone(),
        _ => {
            let page = Arc::new(render(&branding));
            *last = Some((branding, page.clone()));
            page
        }
    }
}

/// Writes the branding into the page: every value HTML-escaped (they were
/// validated by the configuration too: colours are hex, URLs http(s) or
/// same-origin without quotes), the JavaScript's part as JSON in an
/// attribute. The script is never changed, so its hash is fixed.
fn render(b: &Branding) -> Rendered {
    let mut page = WAITING_ROOM.replace(
        "<html lang=\"en\">",
        &format!("<html lang=\"{}\">", escape(&b.lang)),
    );
    let colours: String = [
        ("--accent", b.accent.as_deref()),
        ("--page", b.background.as_deref()),
    ]
    .iter()
    .filter_map(|(var, value)| Some(format!("{var}:{};", parse_colour(value.as_ref()?)?.hex())))
    .chain(b.accent.as_deref().and_then(parse_colour).map(|rgb| {
        // The accent's light tint, for badges and the bar's track.
        let tint = rgb.map(|c| (f64::from(c) * 0.12 + 255.0 * 0.88).round() as u8);
        format!("--accent-soft:{};", tint.hex())
    }))
    .collect();
    if !colours.is_empty() {
        // The contrast was checked against the light card: a branded page
        // is light-only.
        if let (Some(start), Some(end)) = (page.find("/*DARK*/"), page.find("/*END DARK*/")) {
            page.replace_range(start..end + "/*END DARK*/".len(), "");
        }
        page = page
            .replace(
                "<meta name=\"color-scheme\" content=\"light dark\">",
                "<meta name=\"color-scheme\" content=\"light\">",
            )
            .replace("/*BRAND*/", &format!(":root{{{colours}}}"));
    }
    if b.shop.is_some() || b.logo.is_some() {
        let logo = b.logo.as_deref().map_or(String::new(), |url| {
            // Beside the name the logo is decoration; alone it names the shop.
            let alt = if b.shop.is_some() { "" } else { "Shop logo" };
            format!("<img id=\"logo\" src=\"{}\" alt=\"{alt}\">", escape(url))
        });
        let name = b.shop.as_deref().map_or(String::new(), |name| {
            format!("<span id=\"shop-name\">{}</span>", escape(name))
        });
        page = page.replace(
            "<header class=\"brand\" id=\"brand\" hidden><!--BRAND--></header>",
            &format!("<header class=\"brand\" id=\"brand\">{logo}{name}</header>"),
        );
    }
    let data = serde_json::json!({
        "shop": b.shop,
        "returnUrl": b.return_url,
        "text": b.text,
    });
    if b.shop.is_some() || b.return_url.is_some() || !b.text.is_empty() {
        page = page.replace(
            "data-config=\"{}\"",
            &format!("data-config=\"{}\"", escape(&data.to_string())),
        );
    }
    let script = csp_hash(inline(&page, "script"));
    let style = csp_hash(inline(&page, "style"));
    let logo = b.logo.as_deref().and_then(logo_origin).unwrap_or_default();
    let policy = |script_src: &str, worker_src: &str| {
        let policy = format!(
            "default-src 'none'; script-src {script_src}; {worker_src}style-src '{style}'; \
             connect-src 'self'; img-src 'self' data: {logo}; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        )
        .replace(" ;", ";");
        HeaderValue::from_str(&policy).unwrap_or_else(|_| {
            // Unreachable with a validated logo URL; a page without the
            // logo's origin is still a safe page.
            HeaderValue::from_static("default-src 'none'")
        })
    };
    let csp = policy(&format!("'{script}'"), "");
    let join_csp = policy(&format!("'{script}' 'self'"), "worker-src 'self'; ");
    Rendered {
        page: page.into(),
        csp,
        join_csp,
    }
}

/// `&`, `<`, `>`, `"` and `'` as character references: safe in text and in
/// quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `#rrggbb`.
trait Hex {
    fn hex(&self) -> String;
}

impl Hex for [u8; 3] {
    fn hex(&self) -> String {
        format!("#{:02x}{:02x}{:02x}", self[0], self[1], self[2])
    }
}

/// Whether [`route`] serves `path`.
pub fn serves(path: &str) -> bool {
    match path.strip_prefix(WAITING_ROOM_PREFIX) {
        Some(t) => !t.is_empty() && !t.contains('/'),
        None => path == "/openapi.json" || path == POW_JS_PATH,
    }
}

/// Answers the paths this module serves, or `None` for any other path.
pub fn route(method: &Method, path: &str, config: &Config) -> Option<Response<Body>> {
    let ticket = match path.strip_prefix(WAITING_ROOM_PREFIX) {
        Some(t) if !t.is_empty() && !t.contains('/') => Some(t),
        Some(_) => return None,
        None if path == "/openapi.json" || path == POW_JS_PATH => None,
        None => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        let problem = Problem::new(Code::MethodNotAllowed, format!("{path} accepts GET"))
            .allow("GET, HEAD, OPTIONS".into());
        return Some(problem.into_response());
    }
    Some(match ticket {
        Some(JOIN) => join(config),
        Some(t) => waiting_room(t, config),
        None if path == POW_JS_PATH => pow_script(),
        None => openapi(),
    })
}

/// `GET /flashgate-pow.js`: the proof-of-work solver for browsers.
pub fn pow_script() -> Response<Body> {
    built_in(POW_JS, "text/javascript; charset=utf-8")
}

/// `GET /waiting-room/{ticket}`: the page that follows a ticket for a person.
/// The ticket is never written into the page (its script reads the address
/// bar, also for the return link), so nothing a client puts in the path can
/// end up as markup. An id
/// that cannot be a ticket gets the same page with 404; the page then shows
/// its not-found state.
pub fn waiting_room(ticket: &str, config: &Config) -> Response<Body> {
    let rendered = rendered(config);
    let found = TicketId::parse(ticket).is_some();
    page(&rendered, rendered.csp.clone(), found)
}

/// `GET /waiting-room/join?queue=…&path=…[&method=…]#body=…&type=…`: the
/// same page, which admits the order itself (solving the queue's proof of
/// work in a worker when it asks for one) and then follows the ticket. The
/// query and the fragment are read by its script only, never by the server
/// (the fragment, with the order's body, never even reaches it).
pub fn join(config: &Config) -> Response<Body> {
    let rendered = rendered(config);
    page(&rendered, rendered.join_csp.clone(), true)
}

/// The waiting room's page with its headers; 404 when it shows a path that
/// cannot be a ticket.
fn page(rendered: &Rendered, csp: HeaderValue, found: bool) -> Response<Body> {
    let mut resp = Response::new(full(rendered.page.clone()));
    if !found {
        *resp.status_mut() = StatusCode::NOT_FOUND;
    }
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Each load must show the ticket's state now, never a cached page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
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
    built_in(OPENAPI_JSON, "application/json")
}

/// A file built into the binary, of `content_type`: it changes only with a
/// new build, so it may be cached for a while.
fn built_in(content: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(content));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
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
