//! The answers to an admission: the ticket (202, or 200 for a replay), the
//! upstream's own answer within a `Prefer: wait`, or a problem saying why a
//! waited-for ticket ended without one.

use std::time::Duration;

use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use crate::api::tickets;
use crate::http::body::{json_bytes, Body};
use crate::http::problem::{Code, Problem};
use crate::queue::Queue;
use crate::ticket::{self, AdmissionView, Place, TicketId, TicketRecord, TicketStatus};

pub(super) static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

pub(super) static X_FLASHGATE_TICKET: HeaderName = HeaderName::from_static("x-flashgate-ticket");

/// Holds an admission up to `wait` for its ticket to end: the upstream's
/// own answer if it completes (the gateway is invisible at low load), a
/// problem that says why if it fails or is cancelled, else the usual 202
/// with the ticket as it stands.
pub(super) async fn answer_within(queue: &Queue, id: &TicketId, wait: Duration) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + wait;
    let rate = queue.line_rate(&queue.knobs());
    match tickets::wait_until(queue, id, deadline, |r| r.status.is_terminal()).await {
        Ok(Some(record)) => match (&record.response, record.status) {
            (Some(stored), TicketStatus::Completed) => tickets::upstream_answer(id, stored),
            (_, status) if status.is_terminal() => ended(id, &record),
            (_, status) => {
                let place = (status == TicketStatus::Queued)
                    .then(|| Place::of(record.seq, queue.dispatched(id), None));
                ticket_answer(StatusCode::ACCEPTED, queue, id, status, place, rate)
            }
        },
        Ok(None) => ticket_answer(
            StatusCode::ACCEPTED,
            queue,
            id,
            TicketStatus::Expired,
            None,
            rate,
        ),
        // Stored, but its state cannot be read now: the ticket is the answer.
        Err(_) => ticket_answer(
            StatusCode::ACCEPTED,
            queue,
            id,
            TicketStatus::Queued,
            None,
            rate,
        ),
    }
}

/// The answer for a ticket that ended without an upstream answer while the
/// client waited: a problem saying why (sold out: 410; not delivered: 502;
/// cancelled: 410; expired: 404), with the ticket in `Location` and
/// `X-Flashgate-Ticket` for the record.
pub(super) fn ended(id: &TicketId, record: &TicketRecord) -> Response<Body> {
    let problem = match (&record.error, record.status) {
        (Some(e), _) if e.code == "sold_out" => Problem::new(Code::SoldOut, e.detail.clone()),
        (Some(e), _) => Problem::new(
            Code::BadGateway,
            format!("the order could not be delivered: {}", e.detail),
        ),
        (None, TicketStatus::Cancelled) => {
            Problem::new(Code::TicketCancelled, "the ticket was cancelled")
        }
        (None, TicketStatus::Expired) => Problem::new(Code::TicketNotFound, "the ticket expired"),
        (None, status) => Problem::new(
            Code::BadGateway,
            format!("the ticket ended {}", status.as_str()),
        ),
    };
    let mut resp = problem.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/tickets/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(X_FLASHGATE_TICKET.clone(), v);
    }
    resp
}

/// A ticket's path, before its id.
const TICKETS_PREFIX: &str = "/tickets/";

/// The 202/200 answer: ticket JSON, `Location` and `Retry-After`.
pub(super) fn ticket_answer(
    status: StatusCode,
    queue: &Queue,
    ticket: &TicketId,
    state: TicketStatus,
    place: Option<Place>,
    rate: f64,
) -> Response<Body> {
    let position = place.and_then(|p| p.position);
    // As for polls: a paused line has no estimate (`null`, `paused: true`).
    let paused = place.is_some() && queue.knobs().paused;
    let eta = place.map(|p| (!paused).then(|| p.eta_seconds(rate)));
    // One string for the body and `Location`, which takes it without a copy.
    let mut poll_url = String::with_capacity(TICKETS_PREFIX.len() + ticket.as_str().len());
    poll_url.push_str(TICKETS_PREFIX);
    poll_url.push_str(ticket.as_str());
    let view = AdmissionView {
        ticket: ticket.as_str(),
        queue: &queue.name,
        status: state,
        position,
        eta_seconds: eta,
        paused,
        poll_url: &poll_url,
    };
    let mut resp = json_bytes(status, view.to_json());
    let location = HeaderValue::try_from(poll_url);
    let h = resp.headers_mut();
    if let Ok(location) = location {
        h.insert(header::LOCATION, location);
    }
    if !state.is_terminal() {
        h.insert(
            header::RETRY_AFTER,
            ticket::retry_after_value(if paused {
                ticket::PAUSED_RETRY_AFTER
            } else {
                ticket::retry_after(eta.flatten().unwrap_or(0.0))
            }),
        );
    }
    resp
}

pub(super) fn sold_out() -> Problem {
    Problem::new(Code::SoldOut, "the stock of this sale is exhausted")
}
