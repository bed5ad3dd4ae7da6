//! A minimal HTTP/1.1 client: one keep-alive connection per worker, so that
//! `--concurrency C` means exactly C sockets, as with wrk.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What can go wrong talking to a server; `kind()` names it in reports.
/// Messages leave the underlying cause to `source()`, so that a printed
/// chain says each thing once.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host:port[/path]`.
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    /// No TCP connection could be made.
    #[error("cannot connect to {addr}")]
    Connect { addr: String, source: io::Error },
    /// The connection broke or the server spoke something other than HTTP/1.
    #[error("HTTP exchange failed")]
    Http(#[from] hyper::Error),
    /// The request could not be built (bad header value, path).
    #[error("cannot build the request")]
    Build(#[from] hyper::http::Error),
    /// No complete answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// A short, bounded label for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::BadUrl { .. } | ClientError::Build(_) => "bad_request",
            ClientError::Connect { .. } => "connect",
            ClientError::Http(_) => "http",
            ClientError::Timeout(_) => "timeout",
        }
    }
}

/// Where requests go: `http://host:port` plus an optional base path.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`, used both to connect and as the `Host` header.
    pub authority: String,
    /// Path prefix without a trailing slash (usually empty).
    pub base_path: String,
}

impl Target {
    /// Parses `http://host[:port][/base]`; https is not supported.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |reason| ClientError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URI"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Target {
            authority: format!("{host}:{port}"),
            base_path,
        })
    }

    /// A request for `path` (which starts with `/`) on this target.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base_path, path))
            .header(HOST, &self.authority);
        if !body.is_empty() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Ok(builder.body(Full::new(body))?)
    }
}

/// A server's whole answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// `Retry-After` as whole seconds; HTTP dates are not used by flashgate.
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self
            .headers
            .get(hyper::header::RETRY_AFTER)?
            .to_str()
            .ok()?;
        value.trim().parse::<u64>().ok().map(Duration::from_secs)
    }
}

/// One keep-alive connection, opened on first use and reopened after it breaks.
pub struct Connection {
    target: Target,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `target`; every request must finish within `timeout`.
    pub fn new(target: Target, timeout: Duration) -> Self {
        Connection {
            target,
            timeout,
            sender: None,
        }
    }

    /// The target this connection talks to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends one request and reads the whole answer. Requests are never
    /// retried here: the caller decides whether a retry is safe.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, ClientError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.send_inner(req)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                // The connection may still carry the late answer: drop it.
                self.sender = None;
                Err(ClientError::Timeout(timeout))
            }
        }
    }

    async fn send_inner(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, ClientError> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => self.sender.insert(connect(&self.target.authority).await?),
        };
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    // Small requests on a keep-alive connection: Nagle would add 40 ms stalls.
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; either way
        // the next request on this worker opens a fresh connection.
        let _ = conn.await;
    });
    Ok(sender)
}

/// One GET on a fresh connection, for occasional reads such as `/stats`.
pub async fn get(url: &str, timeout: Duration) -> Result<Answer, ClientError> {
    let mut target = Target::parse(url)?;
    let path = std::mem::take(&mut target.base_path);
    let path = if path.is_empty() {
        "/".to_string()
    } else {
        path
    };
    let req = target.request(Method::GET, &path, Bytes::new())?;
    Connection::new(target, timeout).send(req).await
}
