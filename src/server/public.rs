//! The public API's router: limits and hygiene first, then the one route
//! a request's normalized path names.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::cors;
use super::passthrough::passthrough;
use crate::api::{admission, challenge, pages, tickets, App};
use crate::http::body::{self, Body};
use crate::http::exchange;
use crate::http::headers;
use crate::http::path;
use crate::http::problem::{Code, Problem};
use crate::ticket::TicketId;

/// Longest request target (path and query) routed; 414 beyond. Browsers and
/// CDNs cap URLs near here, and no route of this API needs more.
pub const MAX_URI_LENGTH: usize = 8 * 1024;

/// The public API: every request is counted once in
/// `flashgate_http_requests_total` — when answered, or as `499` (nginx's
/// "client closed request") when the client leaves first and its handler is
/// dropped, so a passthrough request that reached the upstream is counted
/// even then.
pub async fn public(app: Arc<App>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let mut count = Count {
        app: &app,
        started: Instant::now(),
        route: "other",
        done: false,
    };
    let origin = cors::allowed_origin(&app.config(), req.headers());
    let mut resp = route(&app, peer, req, &mut count).await;
    if !resp
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        cors::grant(&mut resp, origin);
    }
    count.answered(resp.status());
    resp
}

/// One request's entry in the HTTP metrics.
struct Count<'a> {
    app: &'a App,
    started: Instant,
    /// The `route` label, set as soon as the request is routed.
    route: &'static str,
    done: bool,
}

impl Count<'_> {
    fn answered(&mut self, status: StatusCode) {
        self.record(status.as_str());
        self.done = true;
    }

    fn record(&self, code: &str) {
        let m = &self.app.metrics;
        m.http_requests.with_label_values(&[self.route, code]).inc();
        m.http_duration
            .with_label_values(&[self.route])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Count<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record("499");
        }
    }
}

/// The public API's routes, cheapest checks first.
async fn route(
    app: &App,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    count: &mut Count<'_>,
) -> Response<Body> {
    // Until routed: refused before routing.
    exchange::note(|n| n.route = Some("refused"));
    // 1. Target length: refused before routing or any I/O looks at it.
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_URI_LENGTH {
        let problem = Problem::new(
            Code::UriTooLong,
            format!("the request target is longer than {MAX_URI_LENGTH} bytes"),
        );
        return early(problem.into_response(), req).await;
    }
    // 2. Asterisk-form (`OPTIONS *`) asks about the server, not a resource.
    if req.uri().path() == "*" {
        let resp = if req.method() == Method::OPTIONS {
            exchange::note(|n| n.route = Some("options"));
            cors::options(&app.config(), req.headers(), SERVER_METHODS)
        } else {
            Problem::new(Code::BadRequest, "only OPTIONS may ask for `*`").into_response()
        };
        return early(resp, req).await;
    }
    // 3. Header hygiene, before anything reads a header: the gateway's own
    //    X-Flashgate-* and (by default) names with `_` go.
    if let Err(e) = headers::sanitize(req.headers_mut(), app.config().underscore_headers) {
        let problem = Problem::new(Code::BadRequest, e.to_string());
        return early(problem.into_response(), req).await;
    }
    // 4. One normal form of the path, routed and forwarded alike; a path
    //    that servers would read differently is refused: no route could be
    //    trusted to match it, nor the upstream to read it as matched.
    //    The request moves on, so its (shared, cheap to clone) target is
    //    kept aside.
    let uri = req.uri().clone();
    let normal = match path::normalize(uri.path()) {
        Ok(normal) => normal,
        Err(why) => {
            let problem = Problem::new(Code::BadRequest, format!("ambiguous request path: {why}"));
            return early(problem.into_response(), req).await;
        }
    };
    let path = normal.as_ref();
    // 5. OPTIONS on a path the gateway serves: what it allows, and the CORS
    //    preflight's grant. Other paths' OPTIONS go the way of their path.
    if req.method() == Method::OPTIONS {
        if let Some(allow) = allowed_methods(app, path) {
            exchange::note(|n| n.route = Some("options"));
            let resp = cors::options(&app.config(), req.headers(), &allow);
            return early(resp, req).await;
        }
    }
    if let Some(queue) = app.queue_for_path(path) {
        exchange::note(|n| {
            n.route = Some("admission");
            n.queue = Some(queue.name.clone());
        });
        if let Some(route_path) = queue.route(path, req.method()) {
            // Stored (and later sent) under the route's own path: what was
            // matched is what the upstream receives.
            count.route = "admission";
            let queue = queue.clone();
            return admission::admit(app, &queue, &route_path, peer, req).await;
        }
        let allow = allowed_methods(app, path).unwrap_or_default();
        let problem =
            Problem::new(Code::MethodNotAllowed, format!("{path} accepts {allow}")).allow(allow);
        return early(problem.into_response(), req).await;
    }
    if path == challenge::PATH {
        exchange::note(|n| n.route = Some("challenge"));
        let resp = challenge::challenge(app, peer, &req);
        return early(resp, req).await;
    }
    if let Some(resp) = pages::route(req.method(), path, &app.config()) {
        // The waiting room page and the API description.
        exchange::note(|n| n.route = Some("page"));
        return early(resp, req).await;
    }
    if let Some(rest) = path.strip_prefix("/tickets/") {
        count.route = "ticket";
        exchange::note(|n| n.route = Some("ticket"));
        let (method, headers, query) = (req.method(), req.headers(), req.uri().query());
        let resp = tickets::route(app, method, headers, query, rest).await;
        return early(resp, req).await;
    }
    if app.config().passthrough && app.config().upstream.is_some() {
        count.route = "passthrough";
        exchange::note(|n| n.route = Some("passthrough"));
        let path = path.to_string();
        return passthrough(app, peer, req, &path).await;
    }
    exchange::note(|n| n.route = Some("not_found"));
    let problem = Problem::new(Code::NotFound, "nothing is served at this path");
    early(problem.into_response(), req).await
}

/// Methods of `OPTIONS *`: what the public API answers anywhere.
const SERVER_METHODS: &str = "GET, HEAD, POST, DELETE, OPTIONS";

/// The methods the gateway itself answers at `path` (for `Allow` and CORS
/// preflights), or `None` when the path is not one of its routes.
fn allowed_methods(app: &App, path: &str) -> Option<String> {
    if let Some(queue) = app.queue_for_path(path) {
        let mut allow: Vec<&str> = Vec::new();
        let routes = queue.routes_at(path);
        for r in &routes {
            if !allow.contains(&r.method.as_str()) {
                allow.push(r.method.as_str());
            }
        }
        allow.push("OPTIONS");
        return Some(allow.join(", "));
    }
    if pages::serves(path) || path == challenge::PATH {
        return Some("GET, HEAD, OPTIONS".into());
    }
    // A ticket path is a route when the id has a ticket's shape (its MAC is
    // checked only by the routes themselves: a preflight reveals nothing).
    let rest = path.strip_prefix("/tickets/")?;
    let ticket = |id: &str| TicketId::parse(id).is_some();
    match rest.split_once('/') {
        None if ticket(rest) => Some("GET, HEAD, DELETE, OPTIONS".into()),
        Some((id, "response")) if ticket(id) => Some("GET, HEAD, OPTIONS".into()),
        _ => None,
    }
}

/// An answer given without reading the request's body: the body is read
/// and dropped when small and prompt, so the connection stays usable.
async fn early(mut resp: Response<Body>, req: Request<Incoming>) -> Response<Body> {
    let expects_continue = body::expects_continue(req.headers());
    body::settle(&mut resp, expects_continue, req.into_body()).await;
    resp
}
