//! Passthrough (`--passthrough`): a non-queued request proxied straight to
//! the upstream, streaming both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use tracing::debug;

use crate::api::App;
use crate::http::body::{Body, BoxError};
use crate::http::client::Client;
use crate::http::exchange::{self, Record};
use crate::http::forwarded::Scheme;
use crate::http::headers::strip_hop_by_hop;
use crate::http::problem::{Code, Problem};
use crate::upstream::UpstreamError;

/// Deadline for a passthrough request when no queue sets one.
const PASSTHROUGH_TIMEOUT: Duration = Duration::from_secs(10);

/// Proxies a non-queued request straight to the upstream, streaming both
/// ways, at its normalized `path` (the one routing saw) and its own query.
pub async fn passthrough(
    app: &App,
    peer: SocketAddr,
    req: Request<Incoming>,
    path: &str,
) -> Response<Body> {
    let config = app.config();
    let base = config.upstream.as_deref().unwrap_or_default();
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
    let scheme = Scheme::of(&parts.extensions);
    let client = Client::identify(&app.config(), &parts.headers, peer, scheme);
    exchange::note(|n| n.client = Some(client.key.clone()));
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    // The upstream client speaks HTTP/1.1, whichever HTTP the client used.
    let client_version = parts.version;
    parts.version = http::Version::HTTP_11;
    parts.headers.remove("forwarded");
    match HeaderValue::from_str(&client.forwarded_for) {
        Ok(v) => parts.headers.insert("x-forwarded-for", v),
        Err(_) => parts.headers.remove("x-forwarded-for"),
    };
    parts.headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(client.proto.as_str()),
    );
    let limit = usize::try_from(app.config().max_body.0).unwrap_or(usize::MAX);
    let body: Body = match exchange::record() {
        // The upstream client reads the body on its own task: counted there.
        Some(record) => Counted {
            body: Limited::new(body, limit),
            record,
        }
        .boxed(),
        None => Limited::new(body, limit).boxed(),
    };
    let timeout = app
        .queues
        .first()
        .map_or(PASSTHROUGH_TIMEOUT, |q| q.config().upstream_timeout);
    match app
        .upstream
        .stream(Request::from_parts(parts, body), timeout)
        .await
    {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            exchange::note(|n| {
                n.upstream_status = Some(parts.status.as_u16());
                n.attempt = Some(1);
            });
            // The gateway answers in the client's own HTTP (its HTTP/1.1
            // for HTTP/1.x), whatever version the upstream answered in.
            parts.version = match client_version {
                http::Version::HTTP_2 => http::Version::HTTP_2,
                _ => http::Version::HTTP_11,
            };
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.map_err(BoxError::from).boxed())
        }
        Err(UpstreamError::Timeout(_)) => {
            exchange::note(|n| n.attempt = Some(1));
            Problem::new(Code::GatewayTimeout, "the upstream did not answer in time")
                .into_response()
        }
        Err(e) => {
            exchange::note(|n| n.attempt = Some(1));
            debug!(error = %e, "passthrough failed");
            Problem::new(Code::BadGateway, "the upstream could not be reached").into_response()
        }
    }
}

/// A request body that counts the bytes the upstream client reads of it
/// into the request's access log record.
struct Counted {
    body: Limited<Incoming>,
    record: Arc<Record>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.record.read(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
