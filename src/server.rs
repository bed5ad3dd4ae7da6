//! The HTTP edge: the public and admin listeners, their connection limits,
//! and the routers behind them.
//!
//! - [`exchange`]: every request's id, echoed, and its access log line;
//! - [`access_log`]: the lines' writer, which never holds a request up;
//! - [`public`]: admission, tickets, pages, passthrough, each request
//!   counted once;
//! - [`passthrough`]: non-queued paths straight to the upstream;
//! - [`admin`]: the admin and health listeners: metrics, health and the
//!   admin API, behind the token;
//! - [`framing`]: HTTP/1 request heads checked on the raw bytes before hyper;
//! - [`conn`]: HTTP/1 or HTTP/2 on a connection, and its idleness;
//! - [`tls`]: the public listener's certificate, swappable while serving;
//! - [`cors`]: grants for browsers on other origins.

pub mod access_log;
pub mod admin;
pub mod conn;
pub mod cors;
pub mod exchange;
pub mod framing;
pub mod passthrough;
pub mod public;
pub mod tls;

pub use admin::{serve_admin, serve_health};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use prometheus::{IntCounter, IntCounterVec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::api::App;
use crate::http::body::Body;
use crate::http::forwarded::Scheme;
use access_log::AccessLog;
use conn::{Activity, Watched};
use exchange::Edge;
use framing::Strict;
use tls::Tls;

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
/// their current requests; over TLS when `tls` is given. The limits,
/// cheapest first:
pub async fn serve_public(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    access_log: Option<Arc<AccessLog>>,
    shutdown: CancellationToken,
) {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // A client that does not finish its head in time is cut off. hyper
        // runs the same clock while a kept-alive connection waits for its
        // next request, so this is the keep-alive idle timeout as well: an
        // idle connection costs at most this long.
        .header_read_timeout(app.config().header_timeout)
        // The head must fit the buffer; hyper answers 431 beyond it. This
        // also bounds the memory an idle or slow connection can pin.
        .max_buf_size(max_head(&app));
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        // The same bound on a request's header block (name, value and 32
        // bytes each, RFC 9113 §6.5.2), answered with 431.
        .max_header_list_size(u32::try_from(max_head(&app)).unwrap_or(u32::MAX))
        // Streams one connection may have open at once; the one beyond is
        // refused (RST_STREAM REFUSED_STREAM) before it reaches a handler.
        .max_concurrent_streams(H2_MAX_STREAMS)
        // "Rapid reset" (CVE-2023-44487): streams a client opens and resets
        // before they are served cost work but count against no stream
        // limit. Beyond this many at once, or this many streams the
        // gateway had to reset for errors, the connection gets a GOAWAY.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_ERROR_RESETS);
    // No keep-alive PINGs: their answers would count as the client's
    // activity and keep an idle connection open forever. A connection
    // that sends nothing for `first_bytes` is sent away instead (below).
    // Open connections are capped: beyond the cap a new one gets a canned
    // 503 at once, and the ones already open keep their latency. An
    // HTTP/2 connection counts once, whatever its streams.
    let limit = Limits {
        connections: Arc::new(Semaphore::new(app.config().max_connections as usize)),
        lingering: Arc::new(Semaphore::new(SHED_LINGER_MAX)),
        shed: app.metrics.connections_shed.clone(),
    };
    let protocols = Protocols {
        http1,
        http2: Some(http2),
        tls,
        max_head: max_head(&app),
        // The TLS handshake and the first bytes must come as fast as a head.
        // On HTTP/2 it is also the idle timeout: a connection that sends
        // nothing this long is sent a GOAWAY (its open streams finish).
        first_bytes: app.config().header_timeout,
    };
    let answered = app.metrics.http_requests.clone();
    let edge = Edge {
        listener: "public",
        access_log,
    };
    accept_loop(
        listener,
        Arc::new(protocols),
        Some((limit, answered)),
        shutdown,
        move |peer, req| {
            let (app, edge) = (app.clone(), edge.clone());
            async move {
                let public = |req| public::public(app.clone(), peer, req);
                edge.serve(&app, peer, req, public).await
            }
        },
    )
    .await;
}

/// Streams open at once on one HTTP/2 connection (RFC 9113 suggests no
/// fewer than 100).
pub const H2_MAX_STREAMS: u32 = 100;
/// Streams reset by the client before they were served, pending at once.
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the gateway resets for a client's protocol errors, per
/// connection.
pub const H2_MAX_ERROR_RESETS: usize = 256;

/// How a listener speaks on its connections.
struct Protocols {
    http1: http1::Builder,
    /// `None`: HTTP/1 only, without looking for the HTTP/2 preface.
    http2: Option<http2::Builder<TokioExecutor>>,
    tls: Option<Arc<Tls>>,
    /// [`Strict`]'s head limit.
    max_head: usize,
    /// Time for the TLS handshake and the first bytes; the HTTP/2 idle
    /// timeout.
    first_bytes: Duration,
}

/// The longest request head the public listener reads: hyper answers 431
/// beyond it.
fn max_head(app: &App) -> usize {
    (app.config().max_header_size.0 as usize).max(8192)
}

/// The public listener's connection cap.
#[derive(Clone)]
struct Limits {
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    /// One permit per shed connection still lingering.
    lingering: Arc<Semaphore>,
    /// Counts the connections shed (`flashgate_connections_shed_total`).
    shed: IntCounter,
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

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    protocols: Arc<Protocols>,
    // The public listener's limits, and the counter of its answers
    // (`flashgate_http_requests_total`) for those given before routing.
    limits: Option<(Limits, IntCounterVec)>,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let connections = TaskTracker::new();
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
                    l.shed.inc();
                    shed(stream, &l.lingering);
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            protocols: protocols.clone(),
            answered: limits.as_ref().map(|(_, a)| a.clone()),
            shutdown: shutdown.clone(),
        };
        let handler = handler.clone();
        connections.spawn(async move {
            let _permit = permit;
            connection.serve(stream, handler).await;
        });
    }
    drop(listener);
    // Each connection finishes its requests in flight and closes.
    connections.close();
    connections.wait().await;
}

/// One accepted connection.
struct Connection {
    peer: SocketAddr,
    protocols: Arc<Protocols>,
    answered: Option<IntCounterVec>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve<F, Fut>(self, stream: TcpStream, handler: F)
    where
        F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        let Some(tls) = &self.protocols.tls else {
            return self.speak(stream, Scheme::Http, handler).await;
        };
        let handshake = tls.acceptor().accept(stream);
        match tokio::time::timeout(self.protocols.first_bytes, handshake).await {
            Ok(Ok(stream)) => self.speak(stream, Scheme::Https, handler).await,
            Ok(Err(e)) => debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    /// Serves HTTP/2 or HTTP/1 on `io`, whichever the client speaks.
    async fn speak<S, F, Fut>(self, io: S, scheme: Scheme, handler: F)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        let peer = self.peer;
        let service = service_fn(move |mut req: Request<Incoming>| {
            // What `X-Forwarded-Proto` says when no trusted proxy does.
            req.extensions_mut().insert(scheme);
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(peer, req).await) }
        });
        let p = &self.protocols;
        let Some(http2) = &p.http2 else {
            let conn = p
                .http1
                .serve_connection(TokioIo::new(Strict::new(io, p.max_head)), service);
            return self.finish(conn, None).await;
        };
        let (io, is_h2) = match tokio::time::timeout(p.first_bytes, conn::sniff(io)).await {
            Ok(Ok(sniffed)) => sniffed,
            Ok(Err(e)) => return debug!(%peer, error = %e, "connection failed before a request"),
            Err(_) => return debug!(%peer, "no request before the header timeout"),
        };
        if is_h2 {
            let activity = Activity::from_now();
            let io = TokioIo::new(Watched::new(io, activity.clone()));
            let conn = http2.serve_connection(io, service);
            self.finish(conn, Some(activity)).await
        } else {
            let io = TokioIo::new(Strict::new(io, p.max_head));
            let conn = p.http1.serve_connection(io, service);
            self.finish(conn, None).await
        }
    }

    /// Drives `conn` to its end. On shutdown, or on HTTP/2 after
    /// `first_bytes` without a byte from the client, it finishes the requests
    /// in flight and closes.
    async fn finish<C>(self, conn: C, activity: Option<Activity>)
    where
        C: GracefulConnection<Error = hyper::Error>,
    {
        let peer = self.peer;
        let idle = self.protocols.first_bytes;
        let mut conn = std::pin::pin!(conn);
        let mut closing = false;
        let ended = loop {
            let idle_at = activity.as_ref().map(|a| a.idle_at(idle));
            tokio::select! {
                ended = conn.as_mut() => break ended,
                _ = self.shutdown.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = sleep_until_some(idle_at), if !closing => {
                    if activity.as_ref().is_some_and(|a| a.idle_at(idle) <= Instant::now()) {
                        debug!(%peer, "HTTP/2 connection idle: GOAWAY");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        };
        if let Err(e) = ended {
            debug!(%peer, error = %e, "connection ended with an error");
            if let (Some(answered), Some(code)) = (&self.answered, parse_error_status(&e)) {
                answered.with_label_values(&["other", code]).inc();
            }
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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
