//! Admission: a request on a queued route becomes a stored entry and a ticket.
//!
//! The checks run cheapest first, each one step; everything that needs shared
//! state (idempotency, capacity, enqueue) is one atomic backend call.

mod answer;
mod product;
mod proof;
mod request;

use std::net::SocketAddr;
use std::time::Duration;

use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use crate::api::App;
use crate::backend::knobs::Phase;
use crate::backend::{
    partition_of_claim, partition_of_client, Admit, AdmitLimits, FairLimits, IdempotencyClaim,
    Prequeue, QueuedRequest,
};
use crate::config::QueueConfig;
use crate::http::body::{self, Body};
use crate::http::client::Client;
use crate::http::exchange;
use crate::http::forwarded::Scheme;
use crate::http::headers;
use crate::http::problem::{Code, Problem};
use crate::queue::Queue;
use crate::ticket::{self, Place, TicketId, TicketStatus};
use answer::{answer_within, sold_out, ticket_answer, IDEMPOTENT_REPLAYED};
use proof::PowRefusal;
use request::{
    content_length, hex_digest, idempotency_key, preferred_wait, read_body, too_large, Leftover,
    Refusal,
};

/// Headers the gateway sets itself towards the upstream, never taken from
/// the client. `Accept-Encoding`: the delivery asks for `identity`, since
/// the answer is stored, not streamed to this client.
static GATEWAY_HEADERS: [HeaderName; 11] = [
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
    HeaderName::from_static(crate::ticket::pow::HEADER),
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
    let name = queue.name.as_str();
    let expects_continue = body::expects_continue(req.headers());
    match try_admit(app, queue, path, peer, req).await {
        Ok((outcome, resp)) => {
            app.metrics.admission(name, outcome);
            // A problem given while the client waited (`Prefer: wait`)
            // says more than the admission did.
            let code = if outcome == "duplicate" {
                "replayed"
            } else {
                outcome
            };
            exchange::note(|n| _ = n.code.get_or_insert(code));
            resp
        }
        Err(Refusal { problem, body }) => {
            let outcome = match problem.code {
                Code::QueueFull => "queue_full",
                Code::SoldOut | Code::SaleClosed => "sold_out",
                Code::SaleNotOpen => "not_open",
                Code::RateLimited => "rate_limited",
                Code::ClientQuotaExceeded => "quota_exceeded",
                Code::UnknownProduct => "unknown_product",
                // Not confirmed stored (the queue backend failed): the
                // client retries with the same key.
                Code::Unavailable => "unavailable",
                code if proof::failure_reason(code).is_some() => "pow_failed",
                _ => "rejected",
            };
            app.metrics.admission(name, outcome);
            if let Some(reason) = proof::failure_reason(problem.code) {
                app.metrics
                    .pow_failures
                    .with_label_values(&[name, reason])
                    .inc();
            }
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

async fn try_admit(
    app: &App,
    queue: &Queue,
    path: &str,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<(&'static str, Response<Body>), Refusal> {
    let max_body = app.config().max_body.0;
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
    let phase = knobs.phase(&queue.config(), queue.clock.now());
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
    let client = Client::identify(
        &app.config(),
        &parts.headers,
        peer,
        Scheme::of(&parts.extensions),
    );
    exchange::note(|n| n.client = Some(client.key.clone()));
    if let (None, Some(limiter)) = (&refused, &*app.clients.load()) {
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

    // 3b. Proof of work, when the queue asks for it: one HMAC and one hash,
    //     no I/O. A missing or forged one is refused now; a genuine seed
    //     that expired or fell below a raised difficulty waits for 5b like
    //     the refusals above. Whether the seed was spent before is decided
    //     in the atomic step (6), after the idempotency check: a retry of
    //     an admitted request with the same header gets its ticket.
    let difficulty = knobs.pow_difficulty(&queue.config());
    let pow = match difficulty {
        0 => None,
        d => match proof::check(queue, &parts.headers, &client.key, d) {
            Ok(solved) => Some(solved),
            Err(PowRefusal::Now(problem)) => return Err(Refusal::unread(problem, body)),
            Err(PowRefusal::Unless(problem)) => {
                refused.get_or_insert(problem);
                None
            }
        },
    };

    // 4. Idempotency-Key shape: no I/O needed to refuse a bad one.
    let key = match idempotency_key(&parts.headers) {
        Ok(key) => key,
        Err(problem) => return Err(Refusal::unread(problem, body)),
    };
    let wait = preferred_wait(&parts.headers).min(app.config().max_wait);
    if let (Some(problem), None) = (&refused, &key) {
        return Err(Refusal::unread(problem.clone(), body));
    }

    // 5. The body, read whole but never past the limit (chunked bodies
    //    declare no length).
    let body = read_body(body, max_body, app.config().body_timeout).await?;
    exchange::read(body.len() as u64);

    // Every spelling of the route is one request: the fingerprint and the
    // upstream see the route's path, with the client's query.
    let route = path;
    let path = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    // 5a. A fair sale's product, from the route, query, headers or body:
    //     400 when the request names none, 404 when the sale has no such.
    let config = queue.config();
    let product = match &config.product_from {
        Some(from) => Some(product::product_of(
            &config,
            &knobs,
            from,
            route,
            parts.uri.query(),
            &parts.headers,
            &body,
        )?),
        None => None,
    };
    let partitions = queue.backend.partitions();
    // With proof of work on too: a seed is recorded where its every use goes.
    let routed = partition_for(&config, partitions, &client.key, difficulty > 0);
    let claim = key.as_ref().map(|k| IdempotencyClaim {
        key: hex_digest(&[client.key.as_bytes(), k.as_bytes()]),
        fingerprint: hex_digest(&[parts.method.as_str().as_bytes(), path.as_bytes(), &body]),
        partition: routed,
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
    // Idempotency-Key must be drawn into the partition that saw the first,
    // and a client's admissions all into one when a per-client rule counts
    // them (`partition_for`).
    let ticket = match (&claim, routed) {
        (Some(c), _) if partitions > 1 => {
            TicketId::generate_in(queue.tag, partition_of_claim(c, partitions), partitions)
        }
        (None, Some(p)) => TicketId::generate_in(queue.tag, p, partitions),
        _ => TicketId::generate(queue.tag),
    };
    let request = QueuedRequest {
        ticket,
        method: parts.method.to_string(),
        path,
        headers: headers::encode_end_to_end(&parts.headers, &GATEWAY_HEADERS),
        body,
        idempotency_key: key,
        client: client.key,
        forwarded_for: client.forwarded_for,
        forwarded_proto: client.proto.as_str().into(),
        admitted_at_ms: queue.clock.now_ms(),
        product: product.clone(),
    };
    let ticket = request.ticket.clone();
    let outcome = queue
        .backend
        .admit(
            request,
            claim,
            AdmitLimits {
                max_queue: config.max_queue,
                stock: config.stock,
                prequeue: match (prequeue, config.prequeue_from) {
                    (Some(_), _) => Prequeue::Now,
                    (None, Some(_)) => Prequeue::Configured,
                    (None, None) => Prequeue::None,
                },
                fair: fair_limits(&config, product.as_deref()),
                pow,
            },
        )
        .await
        .map_err(|e| {
            // Outages are logged once by the gauge refresher, not per request.
            debug!(queue = %queue.name, error = %e, "admission not stored");
            Problem::new(
                Code::Unavailable,
                "the queue cannot take requests right now; retry with the same Idempotency-Key",
            )
            .retry_after(1)
        })?;
    match outcome {
        Admit::Admitted { seq, dispatched } => {
            exchange::note(|n| n.ticket = Some(ticket.as_str().to_string()));
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
        Admit::ProductSoldOut => {
            let product = product.unwrap_or_default();
            Err(Problem::new(
                Code::SoldOut,
                format!("the stock of `{product}` is exhausted"),
            )
            .product(&product)
            .into())
        }
        // No Retry-After: the client's limit does not pass with time
        // (until its window of `per_client_window` ends).
        Admit::QuotaExceeded => Err(Problem::new(
            Code::ClientQuotaExceeded,
            "this client holds as many admissions as the sale allows one customer",
        )
        .into()),
        Admit::PowReused => Err(Problem::new(
            Code::PowReused,
            "this proof of work was used by an earlier admission; solve a new challenge",
        )
        .challenge(proof::challenge_url(&queue.name))
        .into()),
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

/// The partition every admission of `client` goes to, on a queue whose
/// per-client rules need its count in one place (`None`: no such rule, or
/// one partition). Admission and the replay lookup of a keyed request
/// both follow it, so a client's quota is exact across partitions.
pub(crate) fn partition_for(
    config: &QueueConfig,
    partitions: u32,
    client: &str,
    pow: bool,
) -> Option<u32> {
    (partitions > 1 && (config.per_client_rules() || pow))
        .then(|| partition_of_client(client, partitions))
}

/// The fair sale's limits of one admission to `product`.
fn fair_limits(config: &QueueConfig, product: Option<&str>) -> FairLimits {
    FairLimits {
        product_stock: product.and_then(|p| config.product_stock.get(p).copied()),
        per_client: config.per_client_max,
        per_client_product: config.per_client_max_per_product,
        window_secs: config.per_client_window.as_secs(),
        cancel_returns: config.cancel_returns_stock,
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
    exchange::note(|n| n.ticket = Some(ticket.as_str().to_string()));
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
