//! The drain: replays stored requests to the upstream at the governed rate.
//!
//! Per queue, one loop takes, in order: an in-flight slot, a rate permit, and
//! only then an entry, so entries never age in memory while waiting for a
//! permit. Each entry is dispatched in its own task that owns the slot
//! ([`dispatch`]); a failed attempt waits ([`retry`]) and takes a slot and a
//! permit again; an answer that says sold out stops the line ([`sold_out`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::knobs::Phase;
use crate::backend::Delivery;
use crate::drain::pacer::Pacer;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::upstream::Upstream;

mod adaptive;
mod dispatch;
pub mod pacer;
mod request;
mod retry;
mod sold_out;

use adaptive::Adaptive;
use retry::{backoff, BACKEND_RETRY_MAX};

/// How far ahead a read looks: entries for the permits due in this window.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Pre-queued entries placed in line per Redis call.
const RELEASE_BATCH: usize = 500;
/// Most entries read at once.
const MAX_BATCH: usize = 64;

/// How long one blocking read of the queue waits for an entry.
pub const READ_BLOCK: Duration = Duration::from_secs(1);

/// One queue's drain on this instance: what it reads from, where it sends,
/// what it counts, and the limits it keeps.
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
    /// `max_in_flight` as last applied, and the slots still to forget.
    slots_size: std::sync::Mutex<SlotsSize>,
    shutdown: CancellationToken,
}

/// Drains one queue to `upstream` until `shutdown`; dispatches are spawned
/// on `tracker`.
pub async fn run(
    queue: Arc<Queue>,
    upstream: Arc<dyn Upstream>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let drain = Drain::new(queue, upstream, metrics, shutdown);
    if let Some(adaptive) = &drain.adaptive {
        tokio::spawn(adaptive::run(
            drain.queue.clone(),
            adaptive.clone(),
            drain.metrics.clone(),
            drain.shutdown.clone(),
        ));
    }
    drain.read(&tracker).await;
}

/// The in-flight slots there are to be, and how many the semaphore holds
/// beyond that (a lowered `max_in_flight` while they were taken): each is
/// forgotten when next acquired.
struct SlotsSize {
    target: u32,
    debt: u32,
}

/// What the drain loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Drain,
    Wait,
    SoldOut,
}

impl Drain {
    /// The drain of `queue`, its limits from the queue's settings and knobs;
    /// nothing runs until [`Drain::read`].
    fn new(
        queue: Arc<Queue>,
        upstream: Arc<dyn Upstream>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let config = queue.config();
        Arc::new(Drain {
            pacer: Pacer::new(
                queue.backend.clone(),
                queue.knobs().drain_rate(&config),
                config.drain_burst,
            ),
            adaptive: config
                .adaptive
                .map(|bounds| Arc::new(Adaptive::new(bounds))),
            slots: Arc::new(Semaphore::new(config.max_in_flight as usize)),
            slots_size: std::sync::Mutex::new(SlotsSize {
                target: config.max_in_flight,
                debt: 0,
            }),
            queue,
            upstream,
            metrics,
            shutdown,
        })
    }

    /// The loop: reads entries as slots and permits allow and dispatches
    /// each on `tracker`, until shutdown.
    async fn read(self: &Arc<Self>, tracker: &TaskTracker) {
        let queue = &self.queue;
        let config = queue.config();
        let shutdown = &self.shutdown;
        let mut failures = 0u32;
        // Entries read but not yet dispatched when the knobs changed (a pause
        // arrived while the read was blocked): sent first once the drain resumes.
        let mut carry: VecDeque<Delivery> = VecDeque::new();
        // Pre-queued tickets may wait to be placed in line (any instance places
        // them; a release that finds none left ends the check).
        let mut prequeued = config.prequeue_from.is_some();
        let mut prequeue_window = config.prequeue_from;
        // The stored knobs before anything moves: a queue an operator paused
        // (or that sold out) stays so across a restart or an upgrade, instead
        // of draining on the defaults until the knob watcher's first read.
        loop {
            match queue.backend.knobs().await {
                Ok(knobs) => {
                    queue.update_knobs(knobs);
                    failures = 0;
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 30 == 0 {
                        warn!(queue = %config.name, error = %e, "cannot read the queue's knobs; retrying");
                    }
                    if !self.pause(backoff(failures, BACKEND_RETRY_MAX)).await {
                        return;
                    }
                }
            }
        }
        'run: loop {
            // 0. The knobs: paused, or not open yet, means no dispatch; sold out
            //    means the waiting tickets fail without reaching the upstream.
            match self.mode() {
                Mode::Wait => {
                    if !self.wait_for_knobs().await {
                        break;
                    }
                    continue;
                }
                Mode::SoldOut => {
                    if !self.fail_sold_out(carry.drain(..).collect()).await {
                        break;
                    }
                    continue;
                }
                Mode::Drain => {}
            }
            // Open: first the pre-queued tickets go into line, in their random order.
            // A reload that sets or moves the window: look again.
            let window = queue.config().prequeue_from;
            if window != prequeue_window {
                prequeue_window = window;
                prequeued |= window.is_some();
            }
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
                        if !self.pause(Duration::from_millis(200)).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            // 1. A free in-flight slot: `max_in_flight` is never exceeded.
            let Some(mut slot) = self.slot().await else {
                break;
            };
            // 2. A rate permit, before reading, so a read entry is sent at once.
            //    A change of the knobs meanwhile is followed: a rate raised
            //    wakes the wait (the pacer drops a slot reserved at the slower
            //    rate), a pause or a sell-out ends it.
            let permit = {
                let mut knobs = queue.knobs.subscribe();
                let ready = self.pacer.ready();
                tokio::pin!(ready);
                loop {
                    tokio::select! {
                        permit = &mut ready => break permit,
                        Ok(()) = knobs.changed() => {
                            if self.mode() != Mode::Drain {
                                continue 'run;
                            }
                        }
                        _ = shutdown.cancelled() => break 'run,
                    }
                }
            };
            // 3. The next entries; the permit is kept until one comes. At high
            //    rates a read takes what the next few milliseconds of permits
            //    will send, so the drain is not bound by Redis round trips.
            let want = self.pacer.per(BATCH_WINDOW).min(MAX_BATCH);
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
                    // Nothing came: look at the knobs again before waiting
                    // more, and let a retry that waits for a slot have this
                    // one first (the semaphore serves in order) — else with
                    // one slot a retry would wait for the next admission.
                    Ok(batch) if batch.is_empty() && self.mode() == Mode::Drain => {
                        drop(slot);
                        slot = match self.slot().await {
                            Some(slot) => slot,
                            None => break 'run,
                        };
                        continue;
                    }
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
                        if !self.pause(backoff(failures, BACKEND_RETRY_MAX)).await {
                            break 'run;
                        }
                    }
                }
            };
            // A permit held through a long wait for an entry has passed: a
            // fresh one keeps the spacing.
            let permit = tokio::select! {
                permit = self.pacer.renew(permit) => permit,
                _ = shutdown.cancelled() => break 'run,
            };
            // 4. Dispatch: the first entry on this slot and permit, the rest each
            //    on its own — unless the knobs changed meanwhile.
            let mut slot = Some((slot, permit));
            let mut batch = batch.into_iter();
            while let Some(delivery) = batch.next() {
                if self.mode() != Mode::Drain {
                    carry.push_back(delivery);
                    carry.extend(batch);
                    continue 'run;
                }
                let (slot, permit) = match slot.take() {
                    Some(first) => first,
                    None => {
                        let Some(slot) = self.slot().await else {
                            break 'run;
                        };
                        let permit = tokio::select! {
                            permit = self.pacer.ready() => permit,
                            _ = shutdown.cancelled() => break 'run,
                        };
                        (slot, permit)
                    }
                };
                let d = Arc::clone(self);
                tracker.spawn(async move { d.dispatch(delivery, slot, permit).await });
            }
        }
        info!(queue = %config.name, "drain stopped reading");
    }

    fn name(&self) -> &str {
        &self.queue.name
    }

    /// What the drain should do now, from this instance's view of the knobs.
    fn mode(&self) -> Mode {
        let knobs = self.queue.knobs();
        let config = self.queue.config();
        self.pacer
            .set_rate(knobs.drain_rate(&config), config.drain_burst);
        self.resize_slots(config.max_in_flight);
        if knobs.sold_out {
            Mode::SoldOut
        } else if knobs.paused
            || matches!(
                knobs.phase(&config, self.queue.clock.now()),
                Phase::NotOpen { .. } | Phase::PreQueue { .. }
            )
        {
            Mode::Wait
        } else {
            Mode::Drain
        }
    }

    /// Follows a reloaded `max_in_flight`: more slots at once; fewer as
    /// dispatches in flight finish (their slots are taken and forgotten), so
    /// nothing in flight is cut short.
    fn resize_slots(&self, want: u32) {
        let mut size = self.slots_size.lock().unwrap_or_else(|e| e.into_inner());
        if want > size.target {
            let more = want - size.target;
            let owed = more.min(size.debt);
            size.debt -= owed;
            self.slots.add_permits((more - owed) as usize);
        } else if want < size.target {
            let fewer = size.target - want;
            let forgotten = self.slots.forget_permits(fewer as usize) as u32;
            size.debt += fewer - forgotten;
        }
        size.target = want;
    }

    /// Whether an acquired slot is one too many (a lowered `max_in_flight`).
    fn slot_owed(&self) -> bool {
        let mut size = self.slots_size.lock().unwrap_or_else(|e| e.into_inner());
        let owed = size.debt > 0;
        size.debt = size.debt.saturating_sub(1);
        owed
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

    /// An in-flight slot, unless shutdown comes first.
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            // A reload that raises `max_in_flight` frees a waiter at once.
            let reloaded = self.queue.reloaded.notified();
            tokio::select! {
                slot = self.slots.clone().acquire_owned() => {
                    let slot = slot.ok()?;
                    if self.slot_owed() {
                        slot.forget();
                        continue;
                    }
                    return Some(slot);
                }
                _ = reloaded => self.resize_slots(self.queue.config().max_in_flight),
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// Sleeps unless shutdown comes first; false on shutdown.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests;
