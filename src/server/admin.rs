//! The admin listener's router: metrics, health, and the admin API behind
//! the bearer token; and the health listener's (`health_listen`), which
//! serves only metrics and health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::api::admin::events::events;
use crate::api::admin::{patch_queue, queues};
use crate::api::App;
use crate::http::body::{full, json, Body};
use crate::http::problem::{Code, Problem};

/// The health listener's routes: `/healthz`, `/readyz` and `/metrics`, and
/// nothing of the admin API.
pub async fn health(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    match probe(&app, &req).await {
        Some(resp) => resp,
        None => Problem::new(Code::NotFound, "no such health endpoint").into_response(),
    }
}

/// `/healthz`, `/readyz` and `/metrics`, or `None` for any other request.
async fn probe(app: &App, req: &Request<Incoming>) -> Option<Response<Body>> {
    Some(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(full(app.metrics.encode()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(app).await,
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
                (Method::PATCH, Some(name)) if name.len() > 1 => {
                    let name = name[1..].to_string();
                    let actor = actor(&app, peer);
                    patch_queue(&app, &name, &actor, req).await
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
