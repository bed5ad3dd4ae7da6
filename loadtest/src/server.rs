//! The server stack shared by the mock upstream and the ceiling: hyper 1.x
//! HTTP/1 on a tokio multi-thread runtime, set up as the gateway sets up its
//! public listener, so that the ceiling measures the same stack doing no work.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound (in use, bad address).
    #[error("cannot listen on {addr}")]
    Bind { addr: String, source: io::Error },
}

/// A running server; dropping it (or calling `stop`) stops it.
pub struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// The bound address (the real port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base URL clients use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and closes open connections.
    pub fn stop(self) {
        // Drop does the work.
    }

    /// Serves until the process is told to stop (Ctrl-C or SIGTERM).
    pub async fn until_signal(self) {
        shutdown_signal().await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Binds `addr` (port 0 picks a free port) with a backlog of 4096, as the
/// gateway does: `TcpListener::bind` asks for 128, and when a burst's
/// connections overflow it their SYNs are dropped and retried after 1 s,
/// which caps a burst's measured throughput at its size per second.
pub async fn bind(addr: &str) -> Result<TcpListener, ServerError> {
    let bind = || async {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
        for a in tokio::net::lookup_host(addr).await? {
            let socket = if a.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            match socket.bind(a) {
                Ok(()) => return socket.listen(4096),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    bind().await.map_err(|source| ServerError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// Serves `handler` on `listener` in the background.
pub fn spawn<F, Fut>(listener: TcpListener, handler: F) -> Result<Running, ServerError>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: "the listener".to_string(),
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, handler, stopped));
    Ok(Running { addr, stop, task })
}

async fn accept_loop<F, Fut>(listener: TcpListener, handler: F, stopped: watch::Receiver<bool>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // As the gateway: a client that does not finish its head in time is cut off.
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: back off, keep serving.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small answers on keep-alive connections: Nagle would add stalls.
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            // A stopped server must not keep answering on old keep-alive
            // connections, or a test's "upstream is gone" would not be.
            tokio::select! {
                _ = conn => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        });
    }
}

/// A JSON answer with `status`.
pub fn json(status: hyper::StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // No SIGTERM handler: Ctrl-C alone stops the server.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
