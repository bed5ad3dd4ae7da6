//! `GET /tickets/{id}`: a ticket's state, from any instance.

use http::{header, HeaderValue, Response, StatusCode};
use tracing::warn;

use crate::admission::Place;
use crate::body::{json, Body};
use crate::gateway::App;
use crate::knobs::Phase;
use crate::problem::{Code, Problem};
use crate::ticket::{self, format_time_ms, ResponseView, TicketId, TicketView};

/// Answers a poll. Unknown, malformed, other queues' and expired tickets all
/// get the same 404, so an id reveals nothing about others.
pub async fn poll(app: &App, id: &str) -> Response<Body> {
    let not_found = || Problem::new(Code::TicketNotFound, "no such ticket").into_response();
    let Some((id, tag)) = TicketId::parse(id) else {
        return not_found();
    };
    let Some(queue) = app.queue_for_tag(tag) else {
        return not_found();
    };
    let (record, dispatched) = match queue.backend.ticket(&id).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(),
        Err(e) => {
            warn!(queue = %queue.config.name, error = %e, "ticket lookup failed");
            return Problem::new(Code::Unavailable, "ticket state cannot be read right now")
                .retry_after(1)
                .into_response();
        }
    };
    let queued = record.status == ticket::TicketStatus::Queued;
    let knobs = queue.knobs();
    let opens_in = match knobs.phase(&queue.config, std::time::SystemTime::now()) {
        Phase::PreQueue { opens_in } | Phase::NotOpen { opens_in } => Some(opens_in),
        _ => None,
    };
    let place = queued.then(|| Place::of(record.seq, dispatched, opens_in));
    let position = place.and_then(|p| p.position);
    let eta = place.map(|p| p.eta_seconds(knobs.drain_rate(&queue.config)));
    let view = TicketView {
        ticket: id.as_str(),
        queue: &queue.config.name,
        status: record.status,
        position,
        eta_seconds: eta,
        attempts: record.attempts,
        admitted_at: format_time_ms(record.admitted_at_ms),
        completed_at: record.completed_at_ms.map(format_time_ms),
        response: record.response.as_ref().map(ResponseView::new),
        error: record.error.as_ref(),
    };
    let mut resp = json(StatusCode::OK, &view);
    if !record.status.is_terminal() {
        // Poll again about when the ticket is due, or soon when in flight.
        let secs = ticket::retry_after(eta.unwrap_or(0.0));
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
