//! The admin listener: metrics, health, and the admin API behind the
//! bearer token; and the health listener (`health_listen`), which serves
//! only metrics and health. Their HTTP and their routers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::access_log::AccessLog;
use super::exchange::Edge;
use super::{accept_loop, Protocols};

use crate::api::admin::dead_letters;
use crate::api::admin::events::events;
use crate::api::admin::{self, patch_queue, queues};
use crate::api::App;
use crate::http::body::{full, json, Body};
use crate::http::exchange;
use crate::http::problem::{Code, Problem};

/// The longest request head the admin listener reads.
const ADMIN_MAX_HEAD: usize = 64 * 1024;
/// Time the admin listener gives a client for its request head.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin API until `shutdown`.
pub async fn serve_admin(
    app: Arc<App>,
    listener: TcpListener,
    access_log: Option<Arc<AccessLog>>,
    shutdown: CancellationToken,
) {
    let edge = Edge {
        listener: "admin",
        access_log,
    };
    serve_private(app, listener, edge, shutdown, admin).await;
}

/// Serves the health listener (`health_listen`: health and metrics only)
/// until `shutdown`.
pub async fn serve_health(
    app: Arc<App>,
    listener: TcpListener,
    access_log: Option<Arc<AccessLog>>,
    shutdown: CancellationToken,
) {
    let edge = Edge {
        listener: "health",
        access_log,
    };
    let health = |app, _peer, req| health(app, req);
    serve_private(app, listener, edge, shutdown, health).await;
}

/// One private listener: its connections, each request through `edge` to
/// `route`, until `shutdown`.
async fn serve_private<R, Fut>(
    app: Arc<App>,
    listener: TcpListener,
    edge: Edge,
    shutdown: CancellationToken,
    route: R,
) where
    R: Fn(Arc<App>, SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    accept_loop(
        listener,
        private_protocols(),
        None,
        shutdown,
        move |peer, req| {
            let (app, edge, route) = (app.clone(), edge.clone(), route.clone());
            async move {
                let handler = |req| route(app.clone(), peer, req);
                edge.serve(&app, peer, req, handler).await
            }
        },
    )
    .await;
}

/// The admin and health listeners' HTTP: plaintext HTTP/1.1 for operators'
/// tools and probes, with their own head limits.
fn private_protocols() -> Arc<Protocols> {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(ADMIN_MAX_HEAD);
    Arc::new(Protocols {
        http1,
        http2: None,
        tls: None,
        max_head: ADMIN_MAX_HEAD,
        first_bytes: ADMIN_HEADER_TIMEOUT,
    })
}

/// The health listener's routes: `/healthz`, `/readyz` and `/metrics`, and
/// nothing of the admin API.
pub async fn health(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    match probe(&app, &req).await {
        Some(resp) => resp,
        None => not_found("no such health endpoint"),
    }
}

/// `/healthz`, `/readyz` and `/metrics`, or `None` for any other request.
async fn probe(app: &App, req: &Request<Incoming>) -> Option<Response<Body>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return None;
    }
    if req.method() != Method::GET {
        exchange::note(|n| n.route = Some("health"));
        return Some(method_not_allowed(path, "GET"));
    }
    Some(match path {
        "/metrics" => {
            exchange::note(|n| n.route = Some("metrics"));
            let mut resp = Response::new(full(app.metrics.encode()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => {
            exchange::note(|n| n.route = Some("health"));
            json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        _ => {
            exchange::note(|n| n.route = Some("health"));
            readyz(app).await
        }
    })
}

/// The admin API's routes; `peer` is who connected.
pub async fn admin(app: Arc<App>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    if let Some(resp) = probe(&app, &req).await {
        return resp;
    }
    let path = req.uri().path().to_string();
    if path != "/admin" && !path.starts_with("/admin/") {
        return not_found("no such admin endpoint");
    }
    exchange::note(|n| n.route = Some("admin"));
    // Who asks: the actor of any change this request makes.
    let Some(actor) = caller(&app, peer, &req) else {
        let mut resp =
            Problem::new(Code::Unauthorized, "a valid bearer token is required").into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    let method = req.method().clone();
    let rest = (path.strip_prefix("/admin/queues")).filter(|r| r.is_empty() || r.starts_with('/'));
    let Some(rest) = rest else {
        return Problem::new(Code::NotFound, "no such admin endpoint").into_response();
    };
    // `rest` is `""`, `/{queue}` or `/{queue}/...`.
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match (method, segments.as_slice()) {
        (Method::GET, [] | [""]) => queues(&app).await,
        (_, [] | [""]) => method_not_allowed(&path, "GET"),
        (Method::PATCH, [name]) if !name.is_empty() => patch_queue(&app, name, &actor, req).await,
        (_, [name]) if !name.is_empty() => method_not_allowed(&path, "PATCH"),
        (Method::GET, [name, "events"]) => events(&app, name, req.uri().query()).await,
        (_, [_, "events"]) => method_not_allowed(&path, "GET"),
        (method, [name, "stock"]) => {
            admin::stock::route(&app, &method, name, None, &actor, req).await
        }
        (method, [name, "stock", product]) => {
            admin::stock::route(&app, &method, name, Some(product), &actor, req).await
        }
        (method, [_, "dead-letters", ..]) => {
            dead_letters::route(&app, &method, rest, req.uri().query(), &actor).await
        }
        _ => Problem::new(Code::NotFound, "no such admin endpoint").into_response(),
    }
}

/// A known path asked with a method it does not take.
fn method_not_allowed(path: &str, allow: &str) -> Response<Body> {
    Problem::new(Code::MethodNotAllowed, format!("{path} accepts {allow}"))
        .allow(allow.to_string())
        .into_response()
}

/// A path the listener does not serve.
fn not_found(detail: &str) -> Response<Body> {
    exchange::note(|n| n.route = Some("not_found"));
    Problem::new(Code::NotFound, detail).into_response()
}

async fn readyz(app: &App) -> Response<Body> {
    let mut failing = Vec::new();
    for q in &app.queues {
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(1), q.backend.ping()).await,
            Ok(Ok(()))
        );
        if !ok {
            failing.push(q.name.clone());
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

/// Who asks, when they may: the name of the admin token presented (SPEC
/// §5: the actor of a change), or `peer:<ip:port>` when no token is
/// configured; `None` when a token is configured and none of them was
/// presented.
fn caller(app: &App, peer: SocketAddr, req: &Request<Incoming>) -> Option<String> {
    let config = app.config();
    if config.admin_token.is_empty() {
        return Some(format!("peer:{peer}"));
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Every token is compared, matched or not, so timing does not tell
    // which one (or how many) came close.
    let mut name = None;
    for token in &config.admin_token {
        if constant_time_eq(presented.as_bytes(), token.secret.as_bytes()) {
            name = Some(token.name.clone());
        }
    }
    name
}

/// Compares in constant time (`subtle`), so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
