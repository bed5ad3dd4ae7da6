//! One entry's delivery: its attempts, each one upstream call judged final
//! or to be retried, and the outcome recorded on the ticket.

use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, warn};

use super::pacer::Permit;
use super::request::build_request;
use super::retry::{is_overload, is_retryable, retry_after, retry_wait};
use super::Drain;
use crate::backend::{AttemptStart, Delivery, QueuedRequest};
use crate::http::headers;
use crate::http::trace::X_REQUEST_ID;
use crate::metrics::code_class;
use crate::ticket::{StoredResponse, TicketError};
use crate::upstream::{Answer, UpstreamError};

/// How an attempt ended.
enum Attempt {
    /// A final answer, whatever its status.
    Final(Answer),
    /// No answer, or one that asks to be retried; `after` from `Retry-After`.
    Retry {
        why: String,
        after: Option<std::time::Duration>,
    },
}

/// The `X-Request-Id` stored with a request (`-` for entries stored
/// before admission kept one), for the log lines that follow a delivery;
/// read only when a line is written.
fn request_id(request: &QueuedRequest) -> String {
    headers::decode(&request.headers)
        .into_iter()
        .find(|(name, _)| name == X_REQUEST_ID)
        .and_then(|(_, v)| v.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| "-".into())
}

impl Drain {
    /// Delivers one entry: attempts with backoff until a final answer or
    /// `max_attempts`, then records the outcome. On shutdown the entry is left
    /// pending, to be redelivered with the same Idempotency-Key.
    pub(super) async fn dispatch(
        &self,
        mut delivery: Delivery,
        slot: OwnedSemaphorePermit,
        permit: Permit,
    ) {
        let mut slot = Some(slot);
        let metrics = &self.metrics;
        let request = match &delivery.request {
            Ok(r) => r.clone(),
            Err(why) => {
                error!(queue = %self.name(), entry = %delivery.entry_id, %why,
                    "unreadable queue entry: dead-lettered, not forwarded");
                // Nothing is sent on its permit.
                self.pacer.give_back(permit);
                let err = TicketError {
                    code: "corrupt_entry".into(),
                    detail: why.clone(),
                };
                if self
                    .persist(|| self.queue.backend.fail(&delivery, &err, true))
                    .await
                {
                    metrics.dispatch(self.name(), "dead_lettered");
                }
                return;
            }
        };
        // Its product sold out upstream: failed unsent, its permit to the
        // next ticket.
        if self.fail_product_sold_out(&delivery).await {
            self.pacer.give_back(permit);
            return;
        }
        let max_attempts = self.queue.config().max_attempts;
        let mut local_attempt = 0u32;
        loop {
            local_attempt += 1;
            let fresh = delivery.fresh;
            let Some(started) = self
                .persist_value(|| self.queue.backend.start_attempt(&delivery))
                .await
            else {
                return;
            };
            delivery.fresh = false;
            let attempt = match started {
                AttemptStart::Counted(n) => n,
                AttemptStart::Untracked => local_attempt,
                AttemptStart::Cancelled => {
                    debug!(queue = %self.name(), ticket = %request.ticket,
                        "ticket cancelled while queued: skipped, not sent");
                    // Its permit goes to the next ticket, not to waste.
                    self.pacer.give_back(permit);
                    metrics
                        .drain_skipped
                        .with_label_values(&[self.name(), "cancelled"])
                        .inc();
                    return;
                }
            };
            // An entry that keeps coming back (its instances died mid-attempt)
            // stops here rather than being tried forever.
            if attempt > max_attempts {
                let why = format!("no final answer after {max_attempts} attempts");
                self.give_up(&delivery, &request, attempt, why).await;
                return;
            }
            // A replayed dead letter (no place in line at admission) was
            // dispatched before: its wait since admission is no queue wait.
            if fresh && delivery.ahead_at_admission.is_some() {
                self.observe_wait(&delivery, &request);
            }
            match self.attempt(&request, attempt).await {
                Attempt::Final(answer) => {
                    debug!(queue = %self.name(), ticket = %request.ticket, attempt,
                        status = answer.status.as_u16(), request_id = %request_id(&request),
                        "delivered: a final answer");
                    if self.says_sold_out(&answer) {
                        self.flip_sold_out(request.product.as_deref()).await;
                    }
                    let response = StoredResponse {
                        status: answer.status.as_u16(),
                        headers: headers::encode(&answer.headers),
                        body: answer.body,
                    };
                    if self
                        .persist(|| self.queue.backend.complete(&delivery, &response))
                        .await
                    {
                        metrics.dispatch(self.name(), "completed");
                    }
                    return;
                }
                Attempt::Retry { why, after } => {
                    if attempt >= max_attempts {
                        let why = format!("{why} (after {attempt} attempts)");
                        self.give_up(&delivery, &request, attempt, why).await;
                        return;
                    }
                    debug!(queue = %self.name(), ticket = %request.ticket, attempt, %why,
                        request_id = %request_id(&request), "retrying");
                    metrics.dispatch(self.name(), "retried");
                    drop(slot.take());
                    if !self.pause(retry_wait(attempt, after)).await {
                        return;
                    }
                    // A retry waits for a slot and spends a permit like any
                    // request: the upstream never sees more than either limit.
                    match self.slot().await {
                        Some(s) => _ = slot.replace(s),
                        None => return,
                    }
                    tokio::select! {
                        _ = self.pacer.ready() => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// The time a ticket waited in line, and how far its admission's ETA
    /// was off, on its first attempt.
    fn observe_wait(&self, delivery: &Delivery, request: &QueuedRequest) {
        let metrics = &self.metrics;
        let waited = self
            .queue
            .clock
            .now_ms()
            .saturating_sub(request.admitted_at_ms);
        let waited = waited as f64 / 1000.0;
        metrics
            .queue_wait
            .with_label_values(&[self.name()])
            .observe(waited);
        if let Some(ahead) = delivery.ahead_at_admission {
            let rate = self.queue.line_rate(&self.queue.knobs());
            let promised = ahead as f64 / rate;
            metrics
                .eta_error
                .with_label_values(&[self.name()])
                .observe(waited - promised);
        }
    }

    /// Attempts exhausted: the ticket fails and the entry is dead-lettered.
    async fn give_up(
        &self,
        delivery: &Delivery,
        request: &QueuedRequest,
        attempt: u32,
        why: String,
    ) {
        warn!(queue = %self.name(), ticket = %request.ticket, attempt, %why,
            request_id = %request_id(request),
            "attempts exhausted: ticket failed and dead-lettered");
        let err = TicketError {
            code: "upstream_unavailable".into(),
            detail: why,
        };
        if self
            .persist(|| self.queue.backend.fail(delivery, &err, true))
            .await
        {
            self.metrics.dispatch(self.name(), "failed");
            self.metrics.dispatch(self.name(), "dead_lettered");
        }
    }

    /// One upstream attempt.
    async fn attempt(&self, request: &QueuedRequest, attempt: u32) -> Attempt {
        let metrics = &self.metrics;
        let req = match build_request(&self.queue.config().upstream, request, attempt) {
            Ok(req) => req,
            Err(why) => {
                // Cannot happen for entries this version wrote; a final
                // answer keeps it from being retried forever.
                error!(queue = %self.name(), ticket = %request.ticket, %why, "cannot build upstream request");
                return Attempt::Final(Answer {
                    status: http::StatusCode::BAD_GATEWAY,
                    headers: Default::default(),
                    body: why.into(),
                });
            }
        };
        let started = tokio::time::Instant::now();
        let result = self
            .upstream
            .call(req, self.queue.config().upstream_timeout)
            .await;
        let took = started.elapsed();
        metrics
            .upstream_duration
            .with_label_values(&[self.name()])
            .observe(took.as_secs_f64());
        if let Some(adaptive) = &self.adaptive {
            adaptive.record(took, is_overload(&result));
        }
        let class = match &result {
            Ok(answer) => code_class(answer.status.as_u16()),
            Err(_) => "error",
        };
        metrics
            .upstream_responses
            .with_label_values(&[self.name(), class])
            .inc();
        match result {
            Ok(answer) if is_retryable(answer.status) => Attempt::Retry {
                why: format!("upstream answered {}", answer.status.as_u16()),
                after: retry_after(&answer.headers),
            },
            Ok(answer) => Attempt::Final(answer),
            Err(
                e
                @ (UpstreamError::Connect(_) | UpstreamError::Timeout(_) | UpstreamError::Body(_)),
            ) => Attempt::Retry {
                why: e.to_string(),
                after: None,
            },
        }
    }
}
