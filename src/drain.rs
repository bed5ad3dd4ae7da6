//! The drain: replays stored requests to the upstream at the governed rate.
//!
//! Per queue, one loop takes, in order: an in-flight slot, a rate permit, and
//! only then an entry, so entries never age in memory while waiting for a
//! permit. Each entry is dispatched in its own task that owns the slot.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::backend::knobs::{KnobsPatch, Phase};
use crate::drain::pacer::{Pacer, Permit};
use crate::http::headers;
use crate::metrics::code_class;
use crate::metrics::Metrics;
use crate::queue::Queue;

mod adaptive;
mod attempt;
pub mod pacer;

use crate::backend::{AttemptStart, Delivery, QueueError, QueuedRequest};
use crate::ticket::{StoredResponse, TicketError};
use crate::upstream::{Answer, Upstream, UpstreamError};
use adaptive::Adaptive;
use attempt::{backoff, build_request, is_overload, is_retryable, retry_after, RETRY_MAX};

/// Longest wait between tries of a failed queue-backend call.
const BACKEND_RETRY_MAX: Duration = Duration::from_secs(5);

/// How far ahead a read looks: entries for the permits due in this window.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Pre-queued entries placed in line per Redis call.
const RELEASE_BATCH: usize = 500;
/// Most entries read at once.
const MAX_BATCH: usize = 64;

struct Drain {
    queue: Arc<Queue>,
    upstream: Arc<dyn Upstream>,
    metrics: Arc<Metrics>,
    pacer: Pacer,
    /// The adaptive drain's observations, when it is on.
    adaptive: Option<Arc<Adaptive>>,
    /// In-flight slots: held during an upstream attempt, released while a
    /// retry backs off so fresh entries are not starved.
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// How long one blocking read of the queue waits for an entry.
pub const READ_BLOCK: Duration = Duration::from_secs(1);

/// Drains one queue to `upstream` until `shutdown`; dispatches are spawned
/// on `tracker`.
pub async fn run(
    queue: Arc<Queue>,
    upstream: Arc<dyn Upstream>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let config = &queue.config;
    let slots = Arc::new(Semaphore::new(config.max_in_flight as usize));
    let adaptive = config
        .adaptive
        .map(|bounds| Arc::new(Adaptive::new(bounds)));
    if let Some(adaptive) = &adaptive {
        tokio::spawn(adaptive::run(
            queue.clone(),
            adaptive.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    let drain = Arc::new(Drain {
        pacer: Pacer::new(
            queue.backend.clone(),
            queue.knobs().drain_rate(config),
            config.drain_burst,
        ),
        adaptive,
        slots: slots.clone(),
        queue: queue.clone(),
        upstream,
        metrics,
        shutdown: shutdown.clone(),
    });
    let mut failures = 0u32;
    // Entries read but not yet dispatched when the knobs changed (a pause
    // arrived while the read was blocked): sent first once the drain resumes.
    let mut carry: VecDeque<Delivery> = VecDeque::new();
    // Pre-queued tickets may wait to be placed in line (any instance places
    // them; a release that finds none left ends the check).
    let mut prequeued = config.prequeue_from.is_some();
    'run: loop {
        // 0. The knobs: paused, or not open yet, means no dispatch; sold out
        //    means the waiting tickets fail without reaching the upstream.
        match drain.mode() {
            Mode::Wait => {
                if !drain.wait_for_knobs().await {
                    break;
                }
                continue;
            }
            Mode::SoldOut => {
                if !drain.fail_sold_out(carry.drain(..).collect()).await {
                    break;
                }
                continue;
            }
            Mode::Drain => {}
        }
        // Open: first the pre-queued tickets go into line, in their random order.
        if prequeued {
            match queue.backend.release_prequeue(RELEASE_BATCH).await {
                Ok((moved, left)) => {
                    if moved > 0 {
                        info!(queue = %config.name, moved, left, "pre-queued tickets placed in line in random order");
                    }
                    prequeued = left > 0;
                }
                Err(e) => {
                    warn!(queue = %config.name, error = %e, "cannot release pre-queued tickets; retrying");
                    if !drain.pause(Duration::from_millis(200)).await {
                        break;
                    }
                    continue;
                }
            }
        }
        // 1. A free in-flight slot: `max_in_flight` is never exceeded.
        let Some(slot) = drain.slot().await else {
            break;
        };
        // 2. A rate permit, before reading, so a read entry is sent at once.
        let permit = tokio::select! {
            permit = drain.pacer.ready() => permit,
            _ = shutdown.cancelled() => break,
        };
        // 3. The next entries; the permit is kept until one comes. At high
        //    rates a read takes what the next few milliseconds of permits
        //    will send, so the drain is not bound by Redis round trips.
        let want = drain.pacer.per(BATCH_WINDOW).min(MAX_BATCH);
        let batch = loop {
            if !carry.is_empty() {
                break carry.drain(..).collect::<Vec<_>>();
            }
            let next = tokio::select! {
                next = queue.backend.next(READ_BLOCK, want) => next,
                // Entries read by a cancelled call stay pending under this
                // consumer and are re-read on the next start.
                _ = shutdown.cancelled() => break 'run,
            };
            match next {
                // Nothing came: look at the knobs again before waiting more.
                Ok(batch) if batch.is_empty() && drain.mode() == Mode::Drain => continue,
                Ok(batch) if batch.is_empty() => continue 'run,
                Ok(batch) => {
                    failures = 0;
                    break batch;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 30 == 0 {
                        warn!(queue = %config.name, error = %e, "cannot read the queue; retrying");
                    }
                    if !drain.pause(backoff(failures, BACKEND_RETRY_MAX)).await {
                        break 'run;
                    }
                }
            }
        };
        // A permit held through a long wait for an entry has passed: a
        // fresh one keeps the spacing.
        let permit = tokio::select! {
            permit = drain.pacer.renew(permit) => permit,
            _ = shutdown.cancelled() => break 'run,
        };
        // 4. Dispatch: the first entry on this slot and permit, the rest each
        //    on its own — unless the knobs changed meanwhile.
        let mut slot = Some((slot, permit));
        let mut batch = batch.into_iter();
        while let Some(delivery) = batch.next() {
            if drain.mode() != Mode::Drain {
                carry.push_back(delivery);
                carry.extend(batch);
                continue 'run;
            }
            let (slot, permit) = match slot.take() {
                Some(first) => first,
                None => {
                    let Some(slot) = drain.slot().await else {
                        break 'run;
                    };
                    let permit = tokio::select! {
                        permit = drain.pacer.ready() => permit,
                        _ = shutdown.cancelled() => break 'run,
                    };
                    (slot, permit)
                }
            };
            let d = drain.clone();
            tracker.spawn(async move { d.dispatch(delivery, slot, permit).await });
        }
    }
    info!(queue = %config.name, "drain stopped reading");
}

/// What the drain loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Drain,
    Wait,
    SoldOut,
}

/// How an attempt ended.
enum Attempt {
    /// A final answer, whatever its status.
    Final(Answer),
    /// No answer, or one that asks to be retried; `after` from `Retry-After`.
    Retry {
        why: String,
        after: Option<Duration>,
    },
}

impl Drain {
    fn name(&self) -> &str {
        &self.queue.config.name
    }

    /// What the drain should do now, from this instance's view of the knobs.
    fn mode(&self) -> Mode {
        let knobs = self.queue.knobs();
        let config = &self.queue.config;
        self.pacer
            .set_rate(knobs.drain_rate(config), config.drain_burst);
        if knobs.sold_out {
            Mode::SoldOut
        } else if knobs.paused
            || matches!(
                knobs.phase(config, self.queue.clock.now()),
                Phase::NotOpen { .. } | Phase::PreQueue { .. }
            )
        {
            Mode::Wait
        } else {
            Mode::Drain
        }
    }

    /// Waits for the knobs to change (or a while, for the opening time to
    /// come); false on shutdown.
    async fn wait_for_knobs(&self) -> bool {
        let mut changes = self.queue.knobs.subscribe();
        tokio::select! {
            _ = changes.changed() => true,
            _ = tokio::time::sleep(Duration::from_millis(200)) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }

    /// Sold out: fails the waiting tickets at once, without a slot or a
    /// permit, and without sending them; false on shutdown.
    async fn fail_sold_out(&self, carried: Vec<Delivery>) -> bool {
        let batch = if carried.is_empty() {
            let next = tokio::select! {
                next = self.queue.backend.next(Duration::from_millis(200), MAX_BATCH) => next,
                _ = self.shutdown.cancelled() => return false,
            };
            match next {
                Ok(batch) => batch,
                Err(_) => return self.pause(Duration::from_millis(200)).await,
            }
        } else {
            carried
        };
        let err = TicketError {
            code: "sold_out".into(),
            detail: "the sale sold out before this ticket's turn".into(),
        };
        for delivery in batch {
            if !self
                .persist(|| self.queue.backend.fail(&delivery, &err, false))
                .await
            {
                return false;
            }
            self.metrics.dispatch(self.name(), "failed");
        }
        true
    }

    /// Whether an upstream answer means the sale is sold out.
    fn says_sold_out(&self, answer: &Answer) -> bool {
        let config = &self.queue.config;
        config.sold_out_statuses.contains(&answer.status.as_u16())
            && config.sold_out_body.as_ref().is_none_or(|needle| {
                String::from_utf8_lossy(&answer.body).contains(needle.as_str())
            })
    }

    /// Flips the queue to sold out on every instance.
    async fn flip_sold_out(&self) {
        if self.queue.knobs().sold_out {
            return;
        }
        warn!(queue = %self.name(), "the upstream says sold out: waiting tickets fail, admissions get 410");
        let patch = KnobsPatch {
            sold_out: Some(true),
            ..KnobsPatch::default()
        };
        if let Some(knobs) = self
            .persist_value(|| self.queue.backend.set_knobs(&patch))
            .await
        {
            self.queue.update_knobs(knobs);
        }
    }

    /// An in-flight slot, unless shutdown comes first.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.ok(),
            _ = self.shutdown.cancelled() => None,
        }
    }

    /// Sleeps unless shutdown comes first; false on shutdown.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }

    /// Delivers one entry: attempts with backoff until a final answer or
    /// `max_attempts`, then records the outcome. On shutdown the entry is left
    /// pending, to be redelivered with the same Idempotency-Key.
    async fn dispatch(&self, mut delivery: Delivery, slot: OwnedSemaphorePermit, permit: Permit) {
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
        let max_attempts = self.queue.config.max_attempts;
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
            if fresh {
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
            match self.attempt(&request, attempt).await {
                Attempt::Final(answer) => {
                    if self.says_sold_out(&answer) {
                        self.flip_sold_out().await;
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
                    debug!(queue = %self.name(), ticket = %request.ticket, attempt, %why, "retrying");
                    metrics.dispatch(self.name(), "retried");
                    let wait = after
                        .unwrap_or(Duration::ZERO)
                        .max(backoff(attempt, RETRY_MAX))
                        .min(RETRY_MAX);
                    drop(slot.take());
                    if !self.pause(wait).await {
                        return;
                    }
                    // A retry waits for a slot and spends a permit like any
                    // request: the upstream never sees more than either limit.
                    tokio::select! {
                        s = self.slots.clone().acquire_owned() => match s {
                            Ok(s) => _ = slot.replace(s),
                            Err(_) => return,
                        },
                        _ = self.shutdown.cancelled() => return,
                    }
                    tokio::select! {
                        _ = self.pacer.ready() => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
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
        let req = match build_request(&self.queue.config.upstream, request, attempt) {
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
            .call(req, self.queue.config.upstream_timeout)
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

    /// Runs a backend write until it succeeds; false if shutdown came first
    /// (the entry then stays pending and is redelivered).
    async fn persist<F, Fut>(&self, op: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), QueueError>>,
    {
        self.persist_value(op).await.is_some()
    }

    async fn persist_value<T, F, Fut>(&self, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, QueueError>>,
    {
        let mut failures = 0;
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 30 == 0 {
                        warn!(queue = %self.name(), error = %e, "cannot record dispatch state; retrying");
                    }
                    if !self.pause(backoff(failures, BACKEND_RETRY_MAX)).await {
                        return None;
                    }
                }
            }
        }
    }
}
