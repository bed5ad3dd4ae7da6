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
use crate::api::admin::{patch_queue, queues};
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
    accept_loop(
        listener,
        private_protocols(),
        None,
        shutdown,
        move |peer, req| {
            let (app, edge) = (app.clone(), edge.clone());
            async move {
                let admin = |req| admin(app.clone(), peer, req);
                edge.serve(&app, peer, req, admin).await
            }
        },
    )
    .await;
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
    accept_loop(
        listener,
        private_protocols(),
        None,
        shutdown,
        move |peer, req| {
            let (app, edge) = (app.clone(), edge.clone());
            async move {
                let health = |req| health(app.clone(), req);
                edge.serve(&app, peer, req, health).await
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
    Some(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            exchange::note(|n| n.route = Some("metrics"));
            let mut resp = Response::new(full(app.metrics.encode()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/healthz") => {
            exchange::note(|n| n.route = Some("health"));
            json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        (&Method::GET, "/readyz") => {
            exchange::note(|n| n.route = Some("health"));
            readyz(app).await
        }
        _ => return None,
    })
}

/// The admin API's routes; `peer` is who connected.
pub async fn admin(app: Arc<App>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    if let Some(resp) = probe(&app, &req).await {
        return resp;
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (_, p) if p == "/admin" || p.starts_with("/admin/") => {
            exchange::note(|n| n.route = Some("admin"));
            if !authorized(&app, &req) {
                let mut resp = Problem::new(Code::Unauthorized, "a valid bearer token is required")
                    .into_response();
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return resp;
            }
            match (req.method().clone(), p.strip_prefix("/admin/queues")) {
                (Method::GET, Some("" | "/")) => queues(&app).await,
                (Method::GET, Some(rest)) if rest.len() > 8 && rest.ends_with("/events") => {
                    let name = &rest[1..rest.len() - "/events".len()];
                    events(&app, name, req.uri().query()).await
                }
                (method, Some(rest)) if rest.contains("/dead-letters") => {
                    let actor = actor(&app, peer);
                    dead_letters::route(&app, &method, rest, req.uri().query(), &actor).await
                }
                (Method::PATCH, Some(name)) if name.len() > 1 => {
                    let name = name[1..].to_string();
                    let actor = actor(&app, peer);
                    patch_queue(&app, &name, &actor, req).await
                }
                _ => Problem::new(Code::NotFound, "no such admin endpoint").into_response(),
            }
        }
        _ => not_found("no such admin endpoint"),
    }
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

/// Who makes an admin change: the admin token's holder, `admin` (there is
/// one token), or without a token the connection's peer.
fn actor(app: &App, peer: SocketAddr) -> String {
    match &app.config().admin_token {
        Some(_) => "admin".into(),
        None => format!("peer:{peer}"),
    }
}

fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let Some(token) = &app.config().admin_token else {
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
