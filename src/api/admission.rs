//! Admission: a request on a queued route becomes a stored entry and a ticket.
//!
//! The checks run cheapest first, each one step; everything that needs shared
//! state (idempotency, capacity, enqueue) is one atomic backend call.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::api::tickets;
use crate::api::App;
use crate::backend::knobs::Phase;
use crate::backend::{
    partition_of_claim, Admit, AdmitLimits, IdempotencyClaim, Prequeue, QueuedRequest,
};
use crate::http::body::{self, json, Body};
use crate::http::client::Client;
use crate::http::headers;
use crate::http::problem::{Code, Problem};
use crate::queue::Queue;
use crate::ticket::{self, AdmissionView, Place, TicketId, TicketRecord, TicketStatus};

/// Longest `Idempotency-Key` accepted (SPEC §3.1).
const MAX_IDEMPOTENCY_KEY: usize = 255;

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
static X_FLASHGATE_TICKET: HeaderName = HeaderName::from_static("x-flashgate-ticket");

/// Headers the gateway sets itself towards the upstream, never taken from
/// the client. `Accept-Encoding`: the delivery asks for `identity`, since
/// the answer is stored, not streamed to this client.
static GATEWAY_HEADERS: [HeaderName; 10] = [
    header::ACCEPT_ENCODING,
    header::HOST,
    header::FORWARDED,
    header::CONTENT_LENGTH,
    header::EXPECT,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-flashgate-ticket"),
    HeaderName::from_static("x-flashgate-attempt"),
];

/// Answers a request on one of `queue`'s routes; `path` is the matched
/// route's own path, which the stored request carries with the query.
pub async fn admit(
    app: &App,
    queue: &Queue,
    path: &str,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let name = queue.config.name.as_str();
    let expects_continue = body::expects_continue(req.headers());
    match try_admit(app, queue, path, peer, req).await {
        Ok((outcome, resp)) => {
            app.metrics.admission(name, outcome);
            resp
        }
        Err(Refusal { problem, body }) => {
            let outcome = match problem.code {
                Code::QueueFull => "queue_full",
                Code::SoldOut | Code::SaleClosed => "sold_out",
                Code::SaleNotOpen => "not_open",
                Code::RateLimited => "rate_limited",
                _ => "rejected",
            };
            app.metrics.admission(name, outcome);
            let mut resp = problem.into_response();
            match body {
                Leftover::Unread(body) => body::settle(&mut resp, expects_continue, body).await,
                Leftover::Read => {}
                Leftover::Cut => body::close(&mut resp),
            }
            resp
        }
    }
}

/// A refused admission, and what is left of its request body: the
/// connection stays usable only once the body is read to its end.
struct Refusal {
    problem: Problem,
    body: Leftover,
}

enum Leftover {
    /// Refused before a byte of the body was read.
    Unread(Incoming),
    /// Read whole.
    Read,
    /// Read in part (too large, too slow, broken): the connection must close.
    Cut,
}

impl Refusal {
    fn unread(problem: Problem, body: Incoming) -> Self {
        Refusal {
            problem,
            body: Leftover::Unread(body),
        }
    }
}

impl From<Problem> for Refusal {
    /// A refusal after the body was read whole.
    fn from(problem: Problem) -> Self {
        Refusal {
            problem,
            body: Leftover::Read,
        }
    }
}

async fn try_admit(
    app: &App,
    queue: &Queue,
    path: &str,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<(&'static str, Response<Body>), Refusal> {
    let max_body = app.config.max_body.0;
    let (parts, body) = req.into_parts();

    // 1. Body size, from Content-Length, before reading a byte of the body.
    let declared = match content_length(&parts.headers) {
        Ok(len) => len,
        Err(problem) => return Err(Refusal::unread(problem, body)),
    };
    if declared.is_some_and(|len| len > max_body) {
        return Err(Refusal::unread(too_large(max_body), body));
    }

    // 2. The sale window, and the sold-out flag as this instance last saw it.
    //    Like 3., a refusal here waits for step 5 when the request carries an
    //    Idempotency-Key: a retry of an admitted request gets its ticket
    //    (its first attempt will still be sent), not the refusal.
    let knobs = queue.knobs();
    let phase = knobs.phase(&queue.config, queue.clock.now());
    let mut refused = match phase {
        Phase::NotOpen { opens_in } => Some(
            Problem::new(Code::SaleNotOpen, "the sale has not opened yet")
                .retry_after(opens_in.as_secs_f64().ceil() as u64),
        ),
        Phase::Closed => Some(Problem::new(Code::SaleClosed, "the sale is closed")),
        _ if knobs.sold_out => Some(sold_out()),
        Phase::Open | Phase::PreQueue { .. } => None,
    };
    let prequeue = match phase {
        Phase::PreQueue { opens_in } => Some(opens_in),
        _ => None,
    };

    // 3. Per-client rate, in this instance's memory.
    let client = Client::identify(&app.config, &parts.headers, peer);
    if let (None, Some(limiter)) = (&refused, &app.clients) {
        if let Err(wait) = limiter.check(&client.key) {
            refused = Some(
                Problem::new(
                    Code::RateLimited,
                    "too many admissions from this client; retry after the given time",
                )
                .retry_after(wait.as_secs_f64().ceil() as u64),
            );
        }
    }

    // 4. Idempotency-Key shape: no I/O needed to refuse a bad one.
    let key = match idempotency_key(&parts.headers) {
        Ok(key) => key,
        Err(problem) => return Err(Refusal::unread(problem, body)),
    };
    let wait = preferred_wait(&parts.headers).min(app.config.max_wait);
    if let (Some(problem), None) = (&refused, &key) {
        return Err(Refusal::unread(problem.clone(), body));
    }

    // 5. The body, read whole but never past the limit (chunked bodies
    //    declare no length).
    let body = read_body(body, max_body, app.config.body_timeout).await?;

    // Every spelling of the route is one request: the fingerprint and the
    // upstream see the route's path, with the client's query.
    let path = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let claim = key.map(|k| IdempotencyClaim {
        key: hex_digest(&[client.key.as_bytes(), k.as_bytes()]),
        fingerprint: hex_digest(&[parts.method.as_str().as_bytes(), path.as_bytes(), &body]),
    });
    let rate = queue.line_rate(&knobs);

    // 5b. A refused request with an Idempotency-Key: its ticket, if this is
    //     a retry of an admitted one; else the refusal. Nothing is stored.
    if let Some(problem) = refused {
        let replay = match &claim {
            Some(claim) => queue.backend.replay(claim).await.ok().flatten(),
            None => None,
        };
        return match replay {
            Some(Admit::Replayed { ticket, .. }) => {
                Ok(replayed(queue, &ticket, wait, prequeue, rate).await)
            }
            _ => Err(problem.into()),
        };
    }

    // 6. Store: idempotency, sold-out, stock, capacity and enqueue in one
    //    atomic round trip.
    // A partitioned queue finds a ticket by its id: a retry with the same
    // Idempotency-Key must be drawn into the partition that saw the first.
    let partitions = queue.backend.partitions();
    let ticket = match &claim {
        Some(c) if partitions > 1 => {
            TicketId::generate_in(queue.tag, partition_of_claim(c, partitions), partitions)
        }
        _ => TicketId::generate(queue.tag),
    };
    let request = QueuedRequest {
        ticket,
        method: parts.method.to_string(),
        path,
        headers: headers::encode_end_to_end(&parts.headers, &GATEWAY_HEADERS),
        body,
        client: client.key,
        forwarded_for: client.forwarded_for,
        forwarded_proto: "http".into(),
        admitted_at_ms: queue.clock.now_ms(),
    };
    let ticket = request.ticket.clone();
    let outcome = queue
        .backend
        .admit(
            request,
            claim,
            AdmitLimits {
                max_queue: queue.config.max_queue,
                stock: queue.config.stock,
                prequeue: match (prequeue, queue.config.prequeue_from) {
                    (Some(_), _) => Prequeue::Now,
                    (None, Some(_)) => Prequeue::Configured,
                    (None, None) => Prequeue::None,
                },
            },
        )
        .await
        .map_err(|e| {
            // Outages are logged once by the gauge refresher, not per request.
            debug!(queue = %queue.config.name, error = %e, "admission not stored");
            Problem::new(
                Code::Unavailable,
                "the queue cannot take requests right now; retry with the same Idempotency-Key",
            )
            .retry_after(1)
        })?;
    match outcome {
        Admit::Admitted { seq, dispatched } => {
            if !wait.is_zero() {
                return Ok(("admitted", answer_within(queue, &ticket, wait).await));
            }
            let place = Place::of(seq, dispatched, prequeue);
            let resp = ticket_answer(
                StatusCode::ACCEPTED,
                queue,
                &ticket,
                TicketStatus::Queued,
                Some(place),
                rate,
            );
            Ok(("admitted", resp))
        }
        Admit::Replayed { ticket, .. } => Ok(replayed(queue, &ticket, wait, prequeue, rate).await),
        Admit::SoldOut => Err(sold_out().into()),
        Admit::KeyReused => Err(Problem::new(
            Code::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request",
        )
        .into()),
        Admit::QueueFull { depth } => {
            let wait = ticket::eta_seconds(depth, rate);
            Err(Problem::new(
                Code::QueueFull,
                format!("the queue holds {depth} requests, its capacity"),
            )
            .retry_after(ticket::retry_after(wait))
            .into())
        }
    }
}

/// The answer to a replay of an admitted request: its ticket as it stands
/// (`200`, `Idempotent-Replayed: true`), or with `Prefer: wait` what
/// [`answer_within`] gives.
async fn replayed(
    queue: &Queue,
    ticket: &TicketId,
    wait: Duration,
    prequeue: Option<Duration>,
    rate: f64,
) -> (&'static str, Response<Body>) {
    let mut resp = if !wait.is_zero() {
        let mut resp = answer_within(queue, ticket, wait).await;
        if resp.status() == StatusCode::ACCEPTED {
            *resp.status_mut() = StatusCode::OK;
        }
        resp
    } else {
        let (status, place) = match queue.backend.ticket(ticket).await {
            Ok(Some((record, dispatched))) => (
                record.status,
                (record.status == TicketStatus::Queued)
                    .then(|| Place::of(record.seq, dispatched, prequeue)),
            ),
            Ok(None) => (TicketStatus::Expired, None),
            Err(_) => (TicketStatus::Queued, None),
        };
        ticket_answer(StatusCode::OK, queue, ticket, status, place, rate)
    };
    resp.headers_mut().insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    ("duplicate", resp)
}

/// `Prefer: wait=N` (RFC 7240): how long the client would rather wait for
/// the upstream's own answer than get a ticket; zero with `respond-async`,
/// without a preference, or with a malformed one.
fn preferred_wait(headers: &HeaderMap) -> Duration {
    let mut wait = Duration::ZERO;
    for pref in headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let token = pref.split(';').next().unwrap_or_default().trim();
        if token.eq_ignore_ascii_case("respond-async") {
            return Duration::ZERO;
        }
        if let Some((name, value)) = token.split_once('=') {
            if name.trim().eq_ignore_ascii_case("wait") {
                if let Ok(secs) = value.trim().trim_matches('"').parse::<u64>() {
                    wait = Duration::from_secs(secs);
                }
            }
        }
    }
    wait
}

/// Holds an admission up to `wait` for its ticket to end: the upstream's
/// own answer if it completes (the gateway is invisible at low load), a
/// problem that says why if it fails or is cancelled, else the usual 202
/// with the ticket as it stands.
async fn answer_within(queue: &Queue, id: &TicketId, wait: Duration) -> Response<Body> {
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
fn ended(id: &TicketId, record: &TicketRecord) -> Response<Body> {
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

/// The 202/200 answer: ticket JSON, `Location` and `Retry-After`.
fn ticket_answer(
    status: StatusCode,
    queue: &Queue,
    ticket: &TicketId,
    state: TicketStatus,
    place: Option<Place>,
    rate: f64,
) -> Response<Body> {
    let position = place.and_then(|p| p.position);
    let eta = place.map(|p| p.eta_seconds(rate));
    let poll_url = format!("/tickets/{ticket}");
    let view = AdmissionView {
        ticket: ticket.as_str(),
        queue: &queue.config.name,
        status: state,
        position,
        eta_seconds: eta,
        poll_url: poll_url.clone(),
    };
    let mut resp = json(status, &view);
    let h = resp.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&poll_url) {
        h.insert(header::LOCATION, location);
    }
    if !state.is_terminal() {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(ticket::retry_after(eta.unwrap_or(0.0))),
        );
    }
    resp
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| Problem::new(Code::BadRequest, "Content-Length is not a number"))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Problem::new(
            Code::BadRequest,
            "more than one Idempotency-Key header",
        ));
    }
    match value.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(k.to_string())),
        _ => Err(Problem::new(
            Code::BadRequest,
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )),
    }
}

async fn read_body(body: Incoming, max: u64, timeout: Duration) -> Result<Bytes, Refusal> {
    read_whole(body, max, timeout)
        .await
        .map_err(|problem| Refusal {
            problem,
            body: Leftover::Cut,
        })
}

async fn read_whole(body: Incoming, max: u64, timeout: Duration) -> Result<Bytes, Problem> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    // A client that trickles its body holds a connection and a buffer: it
    // gets `timeout` for all of it, then 408.
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(Problem::new(
            Code::RequestTimeout,
            format!("the request body did not arrive within {timeout:?}"),
        ));
    };
    match read {
        // A copy: the collected bytes are a slice of hyper's read buffer,
        // and an entry that waits in the embedded queue would keep that
        // whole buffer alive (5.5 KiB per queued admission, measured).
        Ok(collected) => Ok(Bytes::copy_from_slice(&collected.to_bytes())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Err(e) => Err(Problem::new(
            Code::BadRequest,
            format!("could not read the request body: {e}"),
        )),
    }
}

fn sold_out() -> Problem {
    Problem::new(Code::SoldOut, "the stock of this sale is exhausted")
}

fn too_large(max: u64) -> Problem {
    Problem::new(
        Code::BodyTooLarge,
        format!("the request body is larger than {max} bytes"),
    )
}

fn hex_digest(parts: &[&[u8]]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}
