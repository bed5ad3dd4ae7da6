//! Calls to the order service through one pooled hyper client.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::Body;
use crate::headers::strip_hop_by_hop;

/// Largest upstream answer kept on a ticket.
pub const MAX_RESPONSE_BODY: usize = 1 << 20;

/// Why an upstream call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, reset or closed early.
    #[error("upstream connection failed: {0}")]
    Connect(String),
    /// No full answer within the attempt's deadline.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer's body was over [`MAX_RESPONSE_BODY`] or broke off.
    #[error("upstream answer body unreadable: {0}")]
    Body(String),
}

/// A buffered upstream answer with hop-by-hop headers removed.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A pooled HTTP/1.1 client for all queues and passthrough.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Upstream { client }
    }

    /// Sends a request and reads the whole answer, all within `timeout`.
    pub async fn call(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Answer, UpstreamError> {
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
            strip_hop_by_hop(&mut parts.headers);
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
