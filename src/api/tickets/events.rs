//! `GET /tickets/{id}` with `Accept: text/event-stream`: the ticket's
//! state as server-sent events until it is final.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{find, not_found, read, unavailable, view};
use crate::api::App;
use crate::http::body::Body;
use crate::queue::feed::Subscription;
use crate::queue::Queue;
use crate::ticket::{TicketId, TicketRecord, TicketStatus};

/// How often an event stream repeats a queued ticket's position and ETA.
const EVENT_EVERY: Duration = Duration::from_secs(2);
/// Comment lines that keep proxies from closing a quiet event stream.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
/// An event stream ends after this long; the browser's `EventSource`
/// reconnects by itself, so no connection is held forever.
const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// How long a client's `EventSource` waits before reconnecting.
const RECONNECT_MS: u64 = 2000;

pub(super) fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// `GET /tickets/{id}` with `Accept: text/event-stream`: a `status` event at
/// once, at every change, and every few seconds while queued; the stream
/// ends after the final one. Each event's id is the status, so a browser
/// that reconnects after the end (sending `Last-Event-ID`) is told 204:
/// stop.
pub(super) async fn events(app: &App, id: &str, headers: &HeaderMap) -> Response<Body> {
    let Some((queue, id)) = find(app, id) else {
        return not_found();
    };
    let changes = queue.feed.subscribe(id.as_str());
    let record = match read(queue, &id).await {
        Ok(Some(record)) => record,
        Ok(None) => return not_found(),
        Err(e) => return unavailable(queue, &e),
    };
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(TicketStatus::parse);
    if record.status.is_terminal() && last_seen == Some(record.status) {
        let mut resp = Response::new(crate::http::body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        return resp;
    }
    let now = Instant::now();
    // A queued ticket's hash lives `ticket_ttl` past its admission (its
    // last change); no change is published when it is purged.
    let age = Duration::from_millis(crate::ticket::now_ms().saturating_sub(record.admitted_at_ms));
    let expires_at = now + app.config().ticket_ttl.saturating_sub(age);
    let stream = EventStream {
        queue: queue.clone(),
        id,
        changes,
        record,
        first: true,
        finished: false,
        next_event: now + EVENT_EVERY,
        next_heartbeat: now + HEARTBEAT_EVERY,
        ends_at: now + STREAM_LIFETIME,
        expires_at,
    };
    // The stream runs in its own task, which ends when the stream does or
    // the client goes away.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(stream.run(tx));
    let mut resp = Response::new(ChannelBody { rx }.boxed());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx and similar proxies buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// A response body fed chunk by chunk from a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = crate::http::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// One client's event stream: what it has been sent and when it is due more.
struct EventStream {
    queue: Arc<Queue>,
    id: TicketId,
    changes: Subscription,
    record: TicketRecord,
    first: bool,
    finished: bool,
    next_event: Instant,
    next_heartbeat: Instant,
    ends_at: Instant,
    /// When the queued ticket's record is due to expire: past it, the
    /// stream reads the record again rather than wait for a change.
    expires_at: Instant,
}

impl EventStream {
    /// The record read again after a change (or past its expiry): the
    /// event to send when its status moved, or `expired` when it is gone.
    async fn reread(&mut self) -> Option<Bytes> {
        match read(&self.queue, &self.id).await {
            Ok(Some(record)) => {
                let changed = record.status != self.record.status;
                self.record = record;
                changed.then(|| self.event(false))
            }
            Ok(None) => {
                // Purged while followed: expired, as a poll would say.
                self.record.status = TicketStatus::Expired;
                Some(self.event(false))
            }
            // The next change or tick tries again.
            Err(_) => None,
        }
    }

    async fn run(mut self, tx: mpsc::Sender<Bytes>) {
        loop {
            let chunk = tokio::select! {
                chunk = self.next() => chunk,
                _ = tx.closed() => return,
            };
            let Some(chunk) = chunk else { return };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    }

    /// The next chunk to send, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if self.first {
            self.first = false;
            return Some(self.event(true));
        }
        loop {
            let queued = self.record.status == TicketStatus::Queued;
            tokio::select! {
                _ = self.changes.changed() => {
                    if let Some(event) = self.reread().await {
                        return Some(event);
                    }
                }
                _ = tokio::time::sleep_until(self.expires_at), if queued => {
                    // Checked again a tick later if the record is still there.
                    self.expires_at = Instant::now() + EVENT_EVERY;
                    if let Some(event) = self.reread().await {
                        return Some(event);
                    }
                }
                _ = tokio::time::sleep_until(self.next_event), if queued => {
                    return Some(self.event(false));
                }
                _ = tokio::time::sleep_until(self.next_heartbeat) => {
                    self.next_heartbeat = Instant::now() + HEARTBEAT_EVERY;
                    return Some(Bytes::from_static(b": keep-alive\n\n"));
                }
                _ = tokio::time::sleep_until(self.ends_at) => {
                    self.finished = true;
                    return None;
                }
            }
        }
    }

    /// A `status` event with the ticket's view; the stream finishes after a
    /// final one.
    fn event(&mut self, first: bool) -> Bytes {
        let now = Instant::now();
        self.next_event = now + EVENT_EVERY;
        self.next_heartbeat = now + HEARTBEAT_EVERY;
        self.finished = self.record.status.is_terminal();
        let data =
            serde_json::to_string(&view(&self.queue, &self.id, &self.record)).unwrap_or_default();
        let retry = if first {
            format!("retry: {RECONNECT_MS}\n")
        } else {
            String::new()
        };
        Bytes::from(format!(
            "{retry}id: {}\nevent: status\ndata: {data}\n\n",
            self.record.status.as_str()
        ))
    }
}
