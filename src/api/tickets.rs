//! The ticket API, answered by any instance for any ticket:
//!
//! - `GET /tickets/{id}`: the ticket's state; `?wait=N` holds the answer
//!   until the status changes (a long-poll); `Accept: text/event-stream`
//!   streams the state as server-sent events until it is final.
//! - `DELETE /tickets/{id}`: cancels a queued ticket.
//! - `GET /tickets/{id}/response`: the upstream's answer, as stored (its
//!   body decoded, see [`crate::upstream`]).
//!
//! Waiting clients cost no backend call until their ticket changes: they
//! wait on the instance's change feed ([`crate::queue::feed`]), and event streams
//! compute positions from the queue's dispatched count, read once a second
//! for the whole instance.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use tokio::time::Instant;
use tracing::warn;

use crate::api::App;
use crate::backend::knobs::Phase;
use crate::backend::{Cancel, QueueError};
use crate::http::body::{full, json, Body};
use crate::http::exchange;
use crate::http::headers::strip_hop_by_hop;
use crate::http::problem::{Code, Problem};
use crate::queue::Queue;
use crate::ticket::{
    self, format_time_ms, Place, ResponseView, StoredResponse, TicketId, TicketRecord,
    TicketStatus, TicketView,
};

/// Longest long-poll (`?wait=`).
pub const MAX_LONG_POLL: Duration = Duration::from_secs(60);

mod events;

use events::{accepts_event_stream, events};

static X_FLASHGATE_TICKET: header::HeaderName =
    header::HeaderName::from_static("x-flashgate-ticket");

/// Routes `/tickets/{rest}`.
pub async fn route(
    app: &App,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    rest: &str,
) -> Response<Body> {
    let (id, sub) = match rest.split_once('/') {
        Some((id, sub)) => (id, Some(sub)),
        None => (rest, None),
    };
    // An id that cannot be a ticket is no route at all, whatever the method:
    // the same 404 as an unknown ticket's.
    if TicketId::parse(id).is_none() {
        return not_found();
    }
    match (sub, method) {
        (None, &Method::GET | &Method::HEAD) => {
            if accepts_event_stream(headers) && method == Method::GET {
                return events(app, id, headers).await;
            }
            match long_poll_wait(query) {
                Ok(wait) => poll(app, id, wait).await,
                Err(problem) => problem.into_response(),
            }
        }
        (None, &Method::DELETE) => cancel(app, id).await,
        (None, _) => Problem::new(Code::MethodNotAllowed, "tickets accept GET and DELETE")
            .allow("GET, HEAD, DELETE, OPTIONS".into())
            .into_response(),
        (Some("response"), &Method::GET | &Method::HEAD) => response(app, id).await,
        (Some("response"), _) => {
            Problem::new(Code::MethodNotAllowed, "a ticket's response accepts GET")
                .allow("GET, HEAD, OPTIONS".into())
                .into_response()
        }
        (Some(_), _) => not_found(),
    }
}

fn not_found() -> Response<Body> {
    Problem::new(Code::TicketNotFound, "no such ticket").into_response()
}

fn unavailable(queue: &Queue, e: &QueueError) -> Response<Body> {
    warn!(queue = %queue.name, error = %e, "ticket lookup failed");
    Problem::new(Code::Unavailable, "ticket state cannot be read right now")
        .retry_after(1)
        .into_response()
}

/// The queue of a presented id. Unknown, malformed, other queues' and
/// forged tickets are all `None`, before any backend call, so an id reveals
/// nothing about others.
fn find<'a>(app: &'a App, id: &str) -> Option<(&'a Arc<Queue>, TicketId)> {
    let (id, tag) = TicketId::parse(id)?;
    let queue = app.queue_for_tag(tag)?;
    exchange::note(|n| {
        n.queue = Some(queue.name.clone());
        n.ticket = Some(id.as_str().to_string());
    });
    Some((queue, id))
}

/// Reads a ticket — from the feed's cache while it is queued and unchanged,
/// else from the backend, remembering the dispatched count it came with.
async fn read(queue: &Queue, id: &TicketId) -> Result<Option<TicketRecord>, QueueError> {
    if let Some(record) = queue.feed.cached(id.as_str()) {
        return Ok(Some(record));
    }
    let token = queue.feed.reading(id.as_str());
    let read = queue.backend.ticket(id).await;
    if let Some(token) = token {
        let record = read.as_ref().ok().and_then(|r| r.as_ref()).map(|(r, _)| r);
        queue.feed.read_done(id.as_str(), token, record);
    }
    Ok(read?.map(|(record, dispatched)| {
        queue.saw_dispatched(id, dispatched);
        record
    }))
}

/// Reads the ticket now and again at each change until `done` holds or
/// `deadline` passes; the last state read (`None`: gone).
pub async fn wait_until(
    queue: &Queue,
    id: &TicketId,
    deadline: Instant,
    mut done: impl FnMut(&TicketRecord) -> bool,
) -> Result<Option<TicketRecord>, QueueError> {
    // Subscribed before the first read: a change in between is not missed.
    let mut changes = queue.feed.subscribe(id.as_str());
    let mut record = read(queue, id).await?;
    while let Some(r) = &record {
        if done(r) {
            break;
        }
        tokio::select! {
            _ = changes.changed() => record = read(queue, id).await?,
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(record)
}

/// The ticket's JSON view now, with the position and ETA of a queued one.
fn view<'a>(queue: &'a Queue, id: &'a TicketId, record: &'a TicketRecord) -> TicketView<'a> {
    let knobs = queue.knobs();
    let now = queue.clock.now();
    let opens_in = match knobs.phase(&queue.config(), now) {
        Phase::PreQueue { opens_in } | Phase::NotOpen { opens_in } => Some(opens_in),
        _ => None,
    };
    let place = (record.status == TicketStatus::Queued)
        .then(|| Place::of(record.seq, queue.dispatched(id), opens_in));
    // A paused line does not move: any estimate would be a guess (a rate
    // over a line standing still gave near-zero waits).
    let paused = place.is_some() && knobs.paused;
    TicketView {
        ticket: id.as_str(),
        queue: &queue.name,
        status: record.status,
        position: place.and_then(|p| p.position),
        eta_seconds: place.map(|p| (!paused).then(|| p.eta_seconds(queue.line_rate(&knobs)))),
        paused,
        opens_at: place.and_then(|p| p.opens_in).map(|d| {
            let at = (now + d).duration_since(std::time::UNIX_EPOCH);
            format_time_ms(at.map_or(0, |t| t.as_millis() as u64))
        }),
        attempts: record.attempts,
        admitted_at: format_time_ms(record.admitted_at_ms),
        completed_at: record.completed_at_ms.map(format_time_ms),
        response: record.response.as_ref().map(ResponseView::new),
        error: record.error.as_ref(),
    }
}

/// `200` with the ticket's JSON, and `Retry-After` while it is not final.
fn ticket_answer(queue: &Queue, id: &TicketId, record: &TicketRecord) -> Response<Body> {
    let view = view(queue, id, record);
    let mut resp = json(StatusCode::OK, &view);
    if !record.status.is_terminal() {
        // Poll again about when the ticket is due, or soon when in flight;
        // while paused, at the longest interval.
        let secs = if view.paused {
            ticket::PAUSED_RETRY_AFTER
        } else {
            ticket::retry_after(view.eta_seconds.flatten().unwrap_or(0.0))
        };
        resp.headers_mut()
            .insert(header::RETRY_AFTER, ticket::retry_after_value(secs));
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `?wait=N`: seconds, 0 to 60, fractions allowed.
fn long_poll_wait(query: Option<&str>) -> Result<Option<Duration>, Problem> {
    let Some(value) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("wait="))
    else {
        return Ok(None);
    };
    match value.parse::<f64>() {
        Ok(secs) if (0.0..=MAX_LONG_POLL.as_secs_f64()).contains(&secs) => {
            Ok(Some(Duration::from_secs_f64(secs)))
        }
        _ => Err(Problem::new(
            Code::BadRequest,
            format!(
                "wait must be a number of seconds from 0 to {}",
                MAX_LONG_POLL.as_secs()
            ),
        )),
    }
}

/// `GET /tickets/{id}`, answered at once or, with `wait`, when the status
/// changes from what it is now (or at the deadline, unchanged).
pub async fn poll(app: &App, id: &str, wait: Option<Duration>) -> Response<Body> {
    let Some((queue, id)) = find(app, id) else {
        return not_found();
    };
    let result = match wait.filter(|w| !w.is_zero()) {
        None => read(queue, &id).await,
        Some(wait) => {
            let deadline = Instant::now() + wait;
            let mut first = None;
            wait_until(queue, &id, deadline, |r| {
                let start = *first.get_or_insert(r.status);
                r.status != start || r.status.is_terminal()
            })
            .await
        }
    };
    match result {
        Ok(Some(record)) => ticket_answer(queue, &id, &record),
        Ok(None) => not_found(),
        Err(e) => unavailable(queue, &e),
    }
}

/// `DELETE /tickets/{id}`: `cancelled` while queued (the drain skips it and
/// it never reaches the upstream); 409 once in flight or final.
pub async fn cancel(app: &App, id: &str) -> Response<Body> {
    let Some((queue, id)) = find(app, id) else {
        return not_found();
    };
    let cancelled = queue.backend.cancel(&id).await;
    // Read your writes: the feed reports the change a moment later.
    queue.feed.forget(id.as_str());
    match cancelled {
        Ok(Cancel::Cancelled(record, dispatched)) => {
            queue.saw_dispatched(&id, dispatched);
            app.metrics
                .cancelled
                .with_label_values(&[&queue.name])
                .inc();
            ticket_answer(queue, &id, &record)
        }
        // DELETE is idempotent: the same answer, counted once.
        Ok(Cancel::AlreadyCancelled(record, dispatched)) => {
            queue.saw_dispatched(&id, dispatched);
            ticket_answer(queue, &id, &record)
        }
        Ok(Cancel::Refused(status)) => Problem::new(
            Code::TicketNotCancellable,
            format!(
                "the ticket is {}: only a queued ticket can be cancelled",
                status.as_str()
            ),
        )
        .into_response(),
        Ok(Cancel::NotFound) => not_found(),
        Err(e) => unavailable(queue, &e),
    }
}

/// `GET /tickets/{id}/response`: the upstream's answer once there is one.
pub async fn response(app: &App, id: &str) -> Response<Body> {
    let Some((queue, id)) = find(app, id) else {
        return not_found();
    };
    let record = match read(queue, &id).await {
        Ok(Some(record)) => record,
        Ok(None) => return not_found(),
        Err(e) => return unavailable(queue, &e),
    };
    match (&record.response, record.status) {
        (Some(stored), TicketStatus::Completed) => upstream_answer(&id, stored),
        // No answer yet: the asynchronous request-reply pattern's 202, the
        // ticket as it stands, where to follow it and when to come back.
        (_, TicketStatus::Queued | TicketStatus::InFlight) => {
            let mut resp = ticket_answer(queue, &id, &record);
            *resp.status_mut() = StatusCode::ACCEPTED;
            if let Ok(location) = HeaderValue::from_str(&format!("/tickets/{id}")) {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            resp
        }
        (_, status) => Problem::new(
            Code::TicketHasNoResponse,
            format!(
                "the ticket ended {} without an upstream answer",
                status.as_str()
            ),
        )
        .into_response(),
    }
}

/// The upstream's stored answer as an HTTP response: its status, end-to-end
/// headers and body, and `X-Flashgate-Ticket`. The body is stored decoded
/// (`Content-Encoding` only names a coding the gateway does not know, sent
/// as stored) and is the same bytes for every client: it does not vary with
/// `Accept-Encoding`, whatever the upstream's `Vary` said.
pub fn upstream_answer(id: &TicketId, stored: &StoredResponse) -> Response<Body> {
    let mut resp = Response::new(full(stored.body.clone()));
    *resp.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = resp.headers_mut();
    *headers = crate::http::headers::decode_map(&stored.headers);
    strip_hop_by_hop(headers);
    // The body is sent whole from the store: hyper frames it.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    drop_vary_on_accept_encoding(headers);
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        headers.insert(X_FLASHGATE_TICKET.clone(), v);
    }
    resp
}

/// Removes `Accept-Encoding` from `Vary`, keeping any other names as sent.
fn drop_vary_on_accept_encoding(headers: &mut HeaderMap) {
    let names: Vec<&str> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if !names
        .iter()
        .any(|n| n.eq_ignore_ascii_case("accept-encoding"))
    {
        return;
    }
    let kept: Vec<&str> = names
        .into_iter()
        .filter(|n| !n.eq_ignore_ascii_case("accept-encoding"))
        .collect();
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(v) if !kept.is_empty() => _ = headers.insert(header::VARY, v),
        _ => _ = headers.remove(header::VARY),
    }
}

#[cfg(test)]
mod tests;
