//! The HTTP edge: the public and admin listeners, their connection limits,
//! and the routers behind them.
//!
//! - [`public`]: admission, tickets, pages, passthrough, each request
//!   counted once;
//! - [`passthrough`]: non-queued paths straight to the upstream;
//! - [`admin`]: metrics, health and the admin API, behind the token;
//! - [`framing`]: request heads checked on the raw bytes before hyper;
//! - [`cors`]: grants for browsers on other origins.

pub mod admin;
pub mod cors;
pub mod framing;
pub mod passthrough;
pub mod public;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntCounterVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::api::App;
use crate::http::body::Body;
use framing::Strict;

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
            async move { public::public(app, peer, req).await }
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
            async move { admin::admin(app, req).await }
        },
    )
    .await;
}

/// Serves the health listener (`health_listen`: health and metrics only)
/// until `shutdown`.
pub async fn serve_health(app: Arc<App>, listener: TcpListener, shutdown: CancellationToken) {
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
            async move { admin::health(app, req).await }
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
}
