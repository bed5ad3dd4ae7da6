//! Each request at the edge, on every listener: its id taken from a
//! trusted proxy or made ([`trace::adopt`]), echoed as `X-Request-Id` on
//! the answer; its handler run inside its [`exchange`]; and, with the
//! access log on, its line written when the answer's body has been sent
//! (or dropped), or as a `499` when the client leaves before the answer.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::Instant;

use super::access_log::{AccessLog, Entry};
use crate::api::App;
use crate::http::body::{Body, BoxError};
use crate::http::client::trusted_proxy;
use crate::http::exchange::{self, Exchange, Record};
use crate::http::trace::{self, X_REQUEST_ID};

/// What a listener knows of every request it serves.
#[derive(Clone)]
pub struct Edge {
    /// `public`, `admin` or `health`, in the access log.
    pub listener: &'static str,
    pub access_log: Option<Arc<AccessLog>>,
}

impl Edge {
    /// Serves `req` from `peer` with `handler`: the request id first, the
    /// access log line last. `X-Request-Id` is believed from the
    /// configured `trusted_proxies` only.
    pub async fn serve<F, Fut>(
        &self,
        app: &App,
        peer: SocketAddr,
        mut req: Request<Incoming>,
        handler: F,
    ) -> Response<Body>
    where
        F: FnOnce(Request<Incoming>) -> Fut,
        Fut: Future<Output = Response<Body>>,
    {
        let trusted = trusted_proxy(&app.config().trusted_proxies, peer.ip());
        let id = trace::adopt(req.headers_mut(), trusted);
        let Some(log) = &self.access_log else {
            // The hot path without an access log: no record, no note.
            let exchange = Exchange::new(id.clone(), None);
            let mut resp = exchange::scope(exchange, handler(req)).await;
            resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
            return resp;
        };
        let record = Arc::new(Record::default());
        let line = Line::begin(
            log.clone(),
            (self.listener, peer, id.clone()),
            &req,
            &record,
        );
        let exchange = Exchange::new(id.clone(), Some(record));
        let mut resp = exchange::scope(exchange, handler(req)).await;
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
        let status = resp.status().as_u16();
        resp.map(|body| {
            Logged {
                body,
                sent: 0,
                status,
                line,
            }
            .boxed()
        })
    }
}

/// A request's line until it is written.
struct Line {
    log: Arc<AccessLog>,
    entry: Option<Box<Entry>>,
    started: Instant,
    record: Arc<Record>,
}

impl Line {
    /// A line for `req`, which came to `listener` from `peer` and got
    /// `request_id`.
    fn begin(
        log: Arc<AccessLog>,
        (listener, peer, request_id): (&'static str, SocketAddr, HeaderValue),
        req: &Request<Incoming>,
        record: &Arc<Record>,
    ) -> Line {
        let h = req.headers();
        let entry = Entry {
            time: SystemTime::now(),
            request_id,
            listener,
            peer,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            referer: h.get(header::REFERER).cloned(),
            user_agent: h.get(header::USER_AGENT).cloned(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration: Default::default(),
            note: Default::default(),
        };
        Line {
            log,
            entry: Some(Box::new(entry)),
            started: Instant::now(),
            record: record.clone(),
        }
    }

    /// Writes the line, once.
    fn end(&mut self, status: u16, bytes_out: u64) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        entry.status = status;
        entry.bytes_out = bytes_out;
        entry.bytes_in = self.record.bytes_in();
        entry.duration = self.started.elapsed();
        entry.note = self.record.note();
        self.log.log(entry);
    }
}

impl Drop for Line {
    /// The handler was dropped before it answered: the client left
    /// (nginx's 499, as `flashgate_http_requests_total` counts it).
    fn drop(&mut self) {
        self.end(499, 0);
    }
}

/// An answer's body that counts the bytes sent and writes the request's
/// line when it is done with (sent whole, failed, or dropped unsent).
struct Logged {
    body: Body,
    sent: u64,
    status: u16,
    line: Line,
}

impl hyper::body::Body for Logged {
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
                this.sent += data.len() as u64;
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

impl Drop for Logged {
    fn drop(&mut self) {
        self.line.end(self.status, self.sent);
    }
}
