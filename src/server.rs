//! The two listeners: the public API (admission, tickets, passthrough) and
//! the admin API (metrics, health, queues).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntCounterVec;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::body::{self, full, json, Body, BoxError};
use crate::client::Client;
use crate::config::AdaptiveBounds;
use crate::framing::Strict;
use crate::gateway::{App, Queue};
use crate::headers::strip_hop_by_hop;
use crate::knobs::{KnobsPatch, Phase};
use crate::problem::{Code, Problem};
use crate::ticket::TicketId;
use crate::upstream::UpstreamError;
use crate::{admission, cors, headers, path, poll, web};

/// Deadline for a passthrough request when no queue sets one.
const PASSTHROUGH_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest request target (path and query) routed; 414 beyond. Browsers and
/// CDNs cap URLs near here, and no route of this API needs more.
pub const MAX_URI_LENGTH: usize = 8 * 1024;

/// Connections over `--max-connections` that may linger after their 503
/// (so the client reads it before the close); more are dropped at once.
const SHED_LINGER_MAX: usize = 1024;
/// How long a shed connection lingers at most.
const SHED_LINGER: Duration = Duration::from_secs(1);

/// The whole answer to a connection over the limit, written without reading
/// a byte of its request.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 164\r\n\
\r\n\
{\"type\":\"urn:flashgate:problem:unavailable\",\"title\":\"Temporarily unavailable\",\"status\":503,\"detail\":\"too many open connections; retry shortly\",\"code\":\"unavailable\"}";

/// Serves the public API until `shutdown`, then lets open connections finish
/// their current request. The limits, cheapest first:
pub async fn serve_public(app: Arc<App>, listener: TcpListener, shutdown: CancellationToken) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // A client that does not finish its head in time is cut off. hyper
        // runs the same clock while a kept-alive connection waits for its
        // next request, so this is the keep-alive idle timeout as well: an
        // idle connection costs at most this long.
        .header_read_timeout(app.config.header_timeout)
        // The head must fit the buffer; hyper answers 431 beyond it. This
        // also bounds the memory an idle or slow connection can pin.
        .max_buf_size(max_head(&app));
    // Open connections are capped: beyond the cap a new one gets a canned
    // 503 at once, and the ones already open keep their latency.
    let limit = Limits {
        connections: Arc::new(Semaphore::new(app.config.max_connections as usize)),
        lingering: Arc::new(Semaphore::new(SHED_LINGER_MAX)),
    };
    let max_head = max_head(&app);
    let answered = app.metrics.http_requests.clone();
    accept_loop(
        listener,
        http,
        max_head,
        Some((limit, answered)),
        shutdown,
        move |peer, req| {
            let app = app.clone();
            async move { public(app, peer, req).await }
        },
    )
    .await;
}

/// The longest request head the public listener reads: hyper answers 431
/// beyond it.
fn max_head(app: &App) -> usize {
    (app.config.max_header_size.0 as usize).max(8192)
}

/// The longest request head the admin listener reads.
const ADMIN_MAX_HEAD: usize = 64 * 1024;

/// The public listener's connection cap.
#[derive(Clone)]
struct Limits {
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    /// One permit per shed connection still lingering.
    lingering: Arc<Semaphore>,
}

/// Answers a connection over the limit with [`OVERLOADED`] and closes it.
/// The answer fits an empty socket buffer, so one non-blocking write sends
/// it; a short linger then reads and drops what the client sent, so the close
/// is a FIN rather than a reset that could destroy the answer unread.
fn shed(mut stream: TcpStream, lingering: &Arc<Semaphore>) {
    let _ = stream.try_write(OVERLOADED);
    let Ok(permit) = lingering.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(SHED_LINGER, async {
            while let Ok(1..) = stream.read(&mut sink).await {}
        })
        .await;
    });
}

/// Serves the admin API until `shutdown`.
pub async fn serve_admin(app: Arc<App>, listener: TcpListener, shutdown: CancellationToken) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(ADMIN_MAX_HEAD);
    accept_loop(
        listener,
        http,
        ADMIN_MAX_HEAD,
        None,
        shutdown,
        move |_peer, req| {
            let app = app.clone();
            async move { admin(app, req).await }
        },
    )
    .await;
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    http: http1::Builder,
    max_head: usize,
    // The public listener's limits, and the counter of its answers
    // (`flashgate_http_requests_total`) for those given before routing.
    limits: Option<(Limits, IntCounterVec)>,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let permit = match &limits {
            Some((l, answered)) => match l.connections.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    debug!(%peer, "connection limit reached: answered 503");
                    answered.with_label_values(&["other", "503"]).inc();
                    shed(stream, &l.lingering);
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(peer, req).await) }
        });
        let conn = graceful
            .watch(http.serve_connection(TokioIo::new(Strict::new(stream, max_head)), service));
        let answered = limits.as_ref().map(|(_, a)| a.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
                if let (Some(answered), Some(code)) = (&answered, parse_error_status(&e)) {
                    answered.with_label_values(&["other", code]).inc();
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The status hyper answered a request with when it could not parse it
/// (`proto::h1::role::Server::on_error`), a head refused by [`Strict`]
/// included; `None` when it answered nothing.
fn parse_error_status(e: &hyper::Error) -> Option<&'static str> {
    if e.is_parse_too_large() {
        Some("431")
    } else if e.is_parse() && !e.is_parse_version_h2() {
        Some("400")
    } else {
        None
    }
}

/// The public API: every request is counted once in
/// `flashgate_http_requests_total` — when answered, or as `499` (nginx's
/// "client closed request") when the client leaves first and its handler is
/// dropped, so a passthrough request that reached the upstream is counted
/// even then.
async fn public(app: Arc<App>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let mut count = Count {
        app: &app,
        started: Instant::now(),
        route: "other",
        done: false,
    };
    let origin = cors::allowed_origin(&app.config, req.headers());
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
            cors::options(&app.config, req.headers(), SERVER_METHODS)
        } else {
            Problem::new(Code::BadRequest, "only OPTIONS may ask for `*`").into_response()
        };
        return early(resp, req).await;
    }
    // 3. Header hygiene, before anything reads a header: the gateway's own
    //    X-Flashgate-* and (by default) names with `_` go.
    if let Err(e) = headers::sanitize(req.headers_mut(), app.config.underscore_headers) {
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
            let resp = cors::options(&app.config, req.headers(), &allow);
            return early(resp, req).await;
        }
    }
    if let Some(queue) = app.queue_for_path(path) {
        if let Some(route) = queue.routes_at(path).find(|r| r.method == req.method()) {
            // Stored (and later sent) under the route's own path: what was
            // matched is what the upstream receives.
            count.route = "admission";
            let (queue, route_path) = (queue.clone(), route.path.clone());
            return admission::admit(app, &queue, &route_path, peer, req).await;
        }
        let allow = allowed_methods(app, path).unwrap_or_default();
        let problem =
            Problem::new(Code::MethodNotAllowed, format!("{path} accepts {allow}")).allow(allow);
        return early(problem.into_response(), req).await;
    }
    if let Some(resp) = web::route(req.method(), path) {
        // The waiting room page and the API description.
        return early(resp, req).await;
    }
    if let Some(rest) = path.strip_prefix("/tickets/") {
        count.route = "ticket";
        let (method, headers, query) = (req.method(), req.headers(), req.uri().query());
        let resp = poll::route(app, method, headers, query, rest).await;
        return early(resp, req).await;
    }
    if app.config.passthrough && app.config.upstream.is_some() {
        count.route = "passthrough";
        let path = path.to_string();
        return passthrough(app, peer, req, &path).await;
    }
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
        for r in queue.routes_at(path) {
            if !allow.contains(&r.method.as_str()) {
                allow.push(r.method.as_str());
            }
        }
        allow.push("OPTIONS");
        return Some(allow.join(", "));
    }
    if web::serves(path) {
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

/// Proxies a non-queued request straight to the upstream, streaming both
/// ways, at its normalized `path` (the one routing saw) and its own query.
async fn passthrough(
    app: &App,
    peer: SocketAddr,
    req: Request<Incoming>,
    path: &str,
) -> Response<Body> {
    let base = app.config.upstream.as_deref().unwrap_or_default();
    let (mut parts, body) = req.into_parts();
    let target = match parts.uri.query() {
        Some(query) => format!("{base}{path}?{query}"),
        None => format!("{base}{path}"),
    };
    // Only the path is taken from the client: `Host` and absolute-form
    // targets never choose the upstream.
    parts.uri = match target.parse() {
        Ok(uri) => uri,
        Err(_) => {
            return Problem::new(Code::BadRequest, "request target is not a valid path")
                .into_response()
        }
    };
    // Forwarding headers are computed before hop-by-hop stripping, which
    // may remove some; a client's own X-Forwarded-For counts only from a
    // trusted proxy.
    let client = Client::identify(&app.config, &parts.headers, peer);
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.headers.remove("forwarded");
    match HeaderValue::from_str(&client.forwarded_for) {
        Ok(v) => parts.headers.insert("x-forwarded-for", v),
        Err(_) => parts.headers.remove("x-forwarded-for"),
    };
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    let limit = usize::try_from(app.config.max_body.0).unwrap_or(usize::MAX);
    let body: Body = Limited::new(body, limit).boxed();
    let timeout = app
        .queues
        .first()
        .map_or(PASSTHROUGH_TIMEOUT, |q| q.config.upstream_timeout);
    match app
        .upstream
        .stream(Request::from_parts(parts, body), timeout)
        .await
    {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            // The gateway speaks its own HTTP/1.1 to the client, whatever
            // version the upstream answered in.
            parts.version = http::Version::HTTP_11;
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.map_err(BoxError::from).boxed())
        }
        Err(UpstreamError::Timeout(_)) => {
            Problem::new(Code::GatewayTimeout, "the upstream did not answer in time")
                .into_response()
        }
        Err(e) => {
            debug!(error = %e, "passthrough failed");
            Problem::new(Code::BadGateway, "the upstream could not be reached").into_response()
        }
    }
}

/// The admin API's routes.
async fn admin(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(full(app.metrics.encode()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(&app).await,
        (_, p) if p == "/admin" || p.starts_with("/admin/") => {
            if !authorized(&app, &req) {
                let mut resp = Problem::new(Code::Unauthorized, "a valid bearer token is required")
                    .into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return resp;
            }
            match (req.method().clone(), p.strip_prefix("/admin/queues")) {
                (Method::GET, Some("" | "/")) => queues(&app).await,
                (Method::PATCH, Some(name)) if name.len() > 1 => {
                    let name = name[1..].to_string();
                    patch_queue(&app, &name, req).await
                }
                _ => Problem::new(Code::NotFound, "no such admin endpoint").into_response(),
            }
        }
        _ => Problem::new(Code::NotFound, "no such admin endpoint").into_response(),
    }
}

async fn readyz(app: &App) -> Response<Body> {
    let mut failing = Vec::new();
    for q in &app.queues {
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(1), q.backend.ping()).await,
            Ok(Ok(()))
        );
        if !ok {
            failing.push(q.config.name.clone());
        }
    }
    if failing.is_empty() {
        json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "unavailable", "queues": failing}),
        )
    }
}

#[derive(Serialize)]
struct QueueInfo<'a> {
    name: &'a str,
    backend: &'static str,
    depth: Option<u64>,
    in_flight: Option<u64>,
    oldest_age_seconds: Option<f64>,
    /// The governed rate now, across all instances (the adaptive drain's
    /// current rate when it is on).
    drain_rate: f64,
    /// The adaptive drain's bounds, `null` when it is off.
    adaptive: Option<AdaptiveBounds>,
    /// Streams the queue is spread over.
    partitions: u32,
    paused: bool,
    /// The stock limit in force (`null` = unlimited).
    stock: Option<u64>,
    /// Stock not yet admitted.
    stock_left: Option<u64>,
    sold_out: bool,
    /// `open`, `not_open` or `closed`.
    sale: &'static str,
}

async fn queue_info(q: &Queue) -> QueueInfo<'_> {
    let stats = q.backend.stats().await.ok();
    let knobs = q.knobs();
    let stock = knobs.stock(&q.config);
    QueueInfo {
        name: &q.config.name,
        backend: q.backend.kind(),
        depth: stats.map(|s| s.depth),
        in_flight: stats.map(|s| s.in_flight),
        oldest_age_seconds: stats.and_then(|s| s.oldest_age).map(|d| d.as_secs_f64()),
        drain_rate: knobs.drain_rate(&q.config),
        adaptive: q.config.adaptive,
        partitions: q.config.partitions,
        paused: knobs.paused,
        stock,
        stock_left: stock
            .zip(stats)
            .map(|(s, st)| s.saturating_sub(st.admitted)),
        sold_out: knobs.sold_out,
        sale: match knobs.phase(&q.config, std::time::SystemTime::now()) {
            Phase::Open => "open",
            Phase::NotOpen { .. } => "not_open",
            Phase::PreQueue { .. } => "prequeue",
            Phase::Closed => "closed",
        },
    }
}

async fn queues(app: &App) -> Response<Body> {
    let mut out = Vec::new();
    for q in &app.queues {
        out.push(queue_info(q).await);
    }
    json(StatusCode::OK, &serde_json::json!({ "queues": out }))
}

/// `PATCH /admin/queues/{name}`: changes the shared knobs; every instance
/// follows within a second.
async fn patch_queue(app: &App, name: &str, req: Request<Incoming>) -> Response<Body> {
    let Some(queue) = app.queues.iter().find(|q| q.config.name == name) else {
        return Problem::new(Code::NotFound, format!("no queue named `{name}`")).into_response();
    };
    let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Problem::new(Code::BadRequest, format!("cannot read the body: {e}"))
                .into_response()
        }
    };
    let patch = match KnobsPatch::from_json(&body) {
        Ok(p) => p,
        Err(why) => return Problem::new(Code::BadRequest, why).into_response(),
    };
    match queue.backend.set_knobs(&patch).await {
        Ok(knobs) => {
            info!(queue = name, change = ?patch, now = ?knobs, "queue knobs changed by the admin API");
            queue.update_knobs(knobs);
            json(StatusCode::OK, &queue_info(queue).await)
        }
        Err(e) => Problem::new(Code::Unavailable, format!("the change was not stored: {e}"))
            .retry_after(1)
            .into_response(),
    }
}

fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let Some(token) = &app.config.admin_token else {
        return true;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    constant_time_eq(presented.as_bytes(), token.as_bytes())
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canned_overload_answer_is_well_formed() {
        let text = std::str::from_utf8(OVERLOADED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let head = format!("{head}\r\n");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        let doc: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(doc["code"], "unavailable");
        assert_eq!(doc["status"], 503);
    }

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
