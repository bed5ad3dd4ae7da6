//! Calls to the order service: the [`Upstream`] seam the drain sends
//! through, and [`HttpUpstream`], the one pooled hyper client behind it.

mod coding;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http::body::Body;
use crate::http::headers::strip_hop_by_hop;
use coding::Decoder;
use tracing::warn;

/// Largest upstream answer kept on a ticket, as sent and once decoded.
pub const MAX_RESPONSE_BODY: usize = 1 << 20;

/// Where the drain sends its requests: the order service, or a fake in
/// tests.
#[async_trait]
pub trait Upstream: Send + Sync {
    /// Sends `req` and reads the whole answer, decoded, all within
    /// `timeout`. An answer of any status is `Ok`; `Err` means none came,
    /// and says why (which decides whether the attempt is retried).
    async fn call(&self, req: Request<Body>, timeout: Duration) -> Result<Answer, UpstreamError>;
}

/// Why an upstream call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, reset or closed early.
    #[error("upstream connection failed: {0}")]
    Connect(String),
    /// No full answer within the attempt's deadline.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer's body was over [`MAX_RESPONSE_BODY`], as sent or once
    /// decoded (a zip bomb ends here), or broke off.
    #[error("upstream answer body unreadable: {0}")]
    Body(String),
}

/// A buffered upstream answer with hop-by-hop headers removed, its body
/// decoded from the content codings the gateway knows.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A pooled HTTP/1.1 client for all queues and passthrough; `https://`
/// upstreams through rustls, verified against the system's roots (or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` when set).
#[derive(Clone)]
pub struct HttpUpstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    decoder: Decoder,
}

impl Default for HttpUpstream {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpUpstream {
    /// A client with no connection open yet.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        // The TLS layer below decides per URL; plain http stays plain.
        connector.enforce_http(false);
        let connector = match HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b.https_or_http().enable_http1().wrap_connector(connector),
            Err(e) => {
                // No trusted roots: http upstreams still work, https ones fail
                // verification (never fall back to no verification).
                warn!(error = %e, "no system CA certificates found: https upstreams will be refused");
                let tls = rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(connector)
            }
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        HttpUpstream {
            client,
            decoder: Decoder::new(MAX_RESPONSE_BODY),
        }
    }

    /// Sends a request and returns the answer as it streams (passthrough).
    pub async fn stream(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))
    }
}

#[async_trait]
impl Upstream for HttpUpstream {
    async fn call(&self, req: Request<Body>, timeout: Duration) -> Result<Answer, UpstreamError> {
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
            let (mut parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BODY)
                .collect()
                .await
                .map_err(|e| UpstreamError::Body(e.to_string()))?
                .to_bytes();
            // A copy, as admission copies a request's body: the body read
            // whole is a slice of the connection's read buffer, and a
            // ticket that keeps its answer (the embedded queue, until the
            // ticket TTL) would keep that buffer alive — 4.5 KiB of resident
            // memory per delivered ticket, measured. Copied before decoding,
            // so a compressed answer is copied at its smaller size and its
            // decoded form is new memory anyway.
            let body = Bytes::copy_from_slice(&body);
            strip_hop_by_hop(&mut parts.headers);
            let body = self
                .decoder
                .decode(&mut parts.headers, body)
                .await
                .map_err(|e| UpstreamError::Body(e.to_string()))?;
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
    }
}

/// hyper's errors hide their cause behind `source()`; logs need all of it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An answer's body owns its bytes: it holds no part of the kept-alive
    /// connection's read buffer, which would stay allocated for as long as
    /// the ticket keeps the answer.
    #[tokio::test]
    async fn an_answer_body_owns_its_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            // Two requests on one connection, each answered in one write.
            for _ in 0..2 {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client closed the connection");
                    head.extend_from_slice(&buf[..n]);
                }
                let answer = "HTTP/1.1 201 Created\r\ncontent-length: 13\r\n\r\n{\"order\":\"1\"}";
                sock.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let upstream = HttpUpstream::new();
        for _ in 0..2 {
            let req = Request::post(format!("http://{addr}/orders"))
                .body(crate::http::body::full(Bytes::from_static(b"{}")))
                .unwrap();
            let answer = upstream.call(req, Duration::from_secs(5)).await.unwrap();
            assert_eq!(answer.status, StatusCode::CREATED);
            assert_eq!(&answer.body[..], b"{\"order\":\"1\"}");
            let owned = answer.body.try_into_mut().expect("a body of its own");
            assert!(owned.capacity() < 64, "{} bytes held", owned.capacity());
        }
    }
}
