//! The embedded backend: a queue in this process's memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use super::{
    Admit, AdmitLimits, AttemptStart, Cancel, Change, Delivery, IdempotencyClaim, OnChange,
    Prequeue, QueueBackend, QueueError, QueueStats, QueuedRequest,
};
use crate::backend::knobs::{Knobs, KnobsPatch, RateStep};
use crate::backend::CATCH_UP;
use crate::ticket::{now_ms, StoredResponse, TicketError, TicketId, TicketRecord, TicketStatus};

/// How often expired tickets are swept out (on the admission path).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Status changes buffered for a slow feed reader before it must resync.
const CHANGES_BUFFER: usize = 4096;

/// The maps' hasher: every key is one an attacker cannot choose (a MAC'd
/// ticket id, a SHA-256 digest, a sequence number), so SipHash's defence is
/// not needed; foldhash hashes a ticket id in a fraction of the time, and
/// the maps rehash every key each time they grow during a burst.
type Fast = foldhash::fast::RandomState;

/// An in-process queue with the same semantics as the Redis backend.
pub struct MemoryQueue {
    ttl: Duration,
    state: Mutex<State>,
    arrived: Notify,
    /// Ticket status changes, for [`QueueBackend::follow_changes`].
    changes: broadcast::Sender<TicketId>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Undispatched entries in admission order.
    ready: VecDeque<(u64, u64, QueuedRequest)>,
    /// Dispatched, not yet finished.
    pending: HashMap<u64, QueuedRequest, Fast>,
    tickets: HashMap<TicketId, (TicketRecord, Instant), Fast>,
    idempotency: HashMap<String, Claimed, Fast>,
    dead: Vec<(QueuedRequest, TicketError)>,
    admitted: u64,
    dispatched: u64,
    last_sweep: Option<Instant>,
    knobs: Knobs,
    /// Pre-queued entries with their place in line (lowest first).
    prequeue: Vec<(f64, QueuedRequest)>,
    /// Entries put in the queue: the sequence numbers handed out.
    seq: u64,
    /// When the drain's next unreserved slot is due (the schedule's
    /// theoretical arrival time); tokio's clock, so tests can pause it.
    slots_next: Option<tokio::time::Instant>,
    /// When the adaptive rate last moved, and last moved down.
    adapted: Option<tokio::time::Instant>,
    decreased: Option<tokio::time::Instant>,
}

struct Claimed {
    ticket: TicketId,
    fingerprint: String,
    seq: u64,
    expires: Instant,
}

impl MemoryQueue {
    /// A queue whose tickets are forgotten `ttl` after their last change.
    pub fn new(ttl: Duration) -> Self {
        MemoryQueue {
            ttl,
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            changes: broadcast::Sender::new(CHANGES_BUFFER),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way later calls would trip over, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, ticket: &TicketId) {
        // No receiver (nobody follows the feed) is not an error.
        let _ = self.changes.send(ticket.clone());
    }

    /// Entries moved to the dead-letter list, oldest first.
    pub fn dead_letters(&self) -> Vec<(QueuedRequest, TicketError)> {
        self.lock().dead.clone()
    }
}

impl State {
    /// Puts an entry in line; returns its sequence number.
    fn enqueue(&mut self, request: QueuedRequest, ahead: u64) -> u64 {
        self.seq += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.ready.push_back((id, ahead, request));
        self.seq
    }

    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now - t < SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        self.tickets.retain(|_, (_, expires)| *expires > now);
        self.idempotency.retain(|_, c| c.expires > now);
    }

    fn finish(
        &mut self,
        delivery: &Delivery,
        ttl: Duration,
        update: impl FnOnce(&mut TicketRecord),
    ) {
        let Ok(id) = delivery.entry_id.parse::<u64>() else {
            return;
        };
        let removed = self.pending.remove(&id);
        if delivery.fresh {
            self.dispatched += 1;
        }
        let ticket = removed.as_ref().map(|r| &r.ticket).or(delivery
            .request
            .as_ref()
            .ok()
            .map(|r| &r.ticket));
        if let Some((record, expires)) = ticket.and_then(|t| self.tickets.get_mut(t)) {
            update(record);
            record.completed_at_ms = Some(now_ms());
            *expires = Instant::now() + ttl;
        }
    }
}

#[async_trait]
impl QueueBackend for MemoryQueue {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn admit(
        &self,
        request: QueuedRequest,
        claim: Option<IdempotencyClaim>,
        limits: AdmitLimits,
    ) -> Result<Admit, QueueError> {
        let now = Instant::now();
        let mut s = self.lock();
        s.sweep(now);
        if let Some(claim) = &claim {
            if let Some(prev) = s.idempotency.get(&claim.key).filter(|c| c.expires > now) {
                if prev.fingerprint != claim.fingerprint {
                    return Ok(Admit::KeyReused);
                }
                return Ok(Admit::Replayed {
                    ticket: prev.ticket.clone(),
                    seq: prev.seq,
                    dispatched: s.dispatched,
                });
            }
        }
        let stock = s.knobs.stock.or(limits.stock);
        if s.knobs.sold_out || stock.is_some_and(|stock| s.admitted >= stock) {
            return Ok(Admit::SoldOut);
        }
        let depth = s.admitted - s.dispatched;
        if depth >= limits.max_queue {
            return Ok(Admit::QueueFull { depth });
        }
        s.admitted += 1;
        let ticket = request.ticket.clone();
        let admitted_at_ms = request.admitted_at_ms;
        let early = limits.prequeue == Prequeue::Now;
        let seq = if early || !s.prequeue.is_empty() {
            let place = if early {
                getrandom::u64().unwrap_or(0) as f64 / u64::MAX as f64
            } else {
                2.0 + s.admitted as f64
            };
            s.prequeue.push((place, request));
            0
        } else {
            s.enqueue(request, depth)
        };
        let record = TicketRecord {
            status: TicketStatus::Queued,
            seq,
            attempts: 0,
            admitted_at_ms,
            completed_at_ms: None,
            response: None,
            error: None,
        };
        s.tickets.insert(ticket.clone(), (record, now + self.ttl));
        if let Some(claim) = claim {
            s.idempotency.insert(
                claim.key,
                Claimed {
                    ticket,
                    fingerprint: claim.fingerprint,
                    seq,
                    expires: now + self.ttl,
                },
            );
        }
        let dispatched = s.dispatched;
        drop(s);
        self.arrived.notify_one();
        Ok(Admit::Admitted { seq, dispatched })
    }

    async fn ticket(&self, id: &TicketId) -> Result<Option<(TicketRecord, u64)>, QueueError> {
        let s = self.lock();
        Ok(s.tickets
            .get(id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(record, _)| (record.clone(), s.dispatched)))
    }

    async fn next(&self, block: Duration, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            {
                let mut s = self.lock();
                let n = max.min(s.ready.len());
                if n > 0 {
                    let mut out = Vec::with_capacity(n);
                    for (id, ahead, request) in s.ready.drain(..n).collect::<Vec<_>>() {
                        s.pending.insert(id, request.clone());
                        out.push(Delivery {
                            entry_id: id.to_string(),
                            fresh: true,
                            request: Ok(request),
                            ahead_at_admission: Some(ahead),
                            partition: 0,
                        });
                    }
                    return Ok(out);
                }
            }
            // notify_one keeps a permit when nobody waits, so an admission
            // between the check above and this wait is not missed.
            if tokio::time::timeout_at(deadline, self.arrived.notified())
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn maintain(&self, _claim_idle: Duration) -> Result<(), QueueError> {
        // One process holds every entry: none can be left by another.
        Ok(())
    }

    async fn start_attempt(&self, delivery: &Delivery) -> Result<AttemptStart, QueueError> {
        let mut s = self.lock();
        if delivery.fresh {
            s.dispatched += 1;
        }
        let Ok(request) = &delivery.request else {
            return Ok(AttemptStart::Untracked);
        };
        let Some((record, _)) = s.tickets.get_mut(&request.ticket) else {
            return Ok(AttemptStart::Untracked);
        };
        if record.status == TicketStatus::Cancelled {
            if let Ok(id) = delivery.entry_id.parse::<u64>() {
                s.pending.remove(&id);
            }
            return Ok(AttemptStart::Cancelled);
        }
        record.attempts += 1;
        let attempts = record.attempts;
        if record.status != TicketStatus::InFlight {
            record.status = TicketStatus::InFlight;
            drop(s);
            self.changed(&request.ticket);
        }
        Ok(AttemptStart::Counted(attempts))
    }

    async fn replay(&self, claim: &IdempotencyClaim) -> Result<Option<Admit>, QueueError> {
        let s = self.lock();
        let now = Instant::now();
        Ok(s.idempotency
            .get(&claim.key)
            .filter(|c| c.expires > now)
            .map(|prev| {
                if prev.fingerprint != claim.fingerprint {
                    Admit::KeyReused
                } else {
                    Admit::Replayed {
                        ticket: prev.ticket.clone(),
                        seq: prev.seq,
                        dispatched: s.dispatched,
                    }
                }
            }))
    }

    async fn cancel(&self, id: &TicketId) -> Result<Cancel, QueueError> {
        let mut s = self.lock();
        let dispatched = s.dispatched;
        let ttl = self.ttl;
        let Some((record, expires)) = s
            .tickets
            .get_mut(id)
            .filter(|(_, expires)| *expires > Instant::now())
        else {
            return Ok(Cancel::NotFound);
        };
        match record.status {
            TicketStatus::Queued => {
                record.status = TicketStatus::Cancelled;
                record.completed_at_ms = Some(now_ms());
                *expires = Instant::now() + ttl;
                let record = record.clone();
                drop(s);
                self.changed(id);
                Ok(Cancel::Cancelled(record, dispatched))
            }
            TicketStatus::Cancelled => Ok(Cancel::AlreadyCancelled(record.clone(), dispatched)),
            other => Ok(Cancel::Refused(other)),
        }
    }

    async fn follow_changes(&self, changed: &OnChange) -> Result<(), QueueError> {
        let mut rx = self.changes.subscribe();
        changed(Change::Resync);
        loop {
            match rx.recv().await {
                Ok(id) => changed(Change::Ticket(id.as_str())),
                Err(broadcast::error::RecvError::Lagged(_)) => changed(Change::Resync),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }

    async fn complete(
        &self,
        delivery: &Delivery,
        response: &StoredResponse,
    ) -> Result<(), QueueError> {
        self.lock().finish(delivery, self.ttl, |record| {
            record.status = TicketStatus::Completed;
            record.response = Some(response.clone());
        });
        if let Ok(request) = &delivery.request {
            self.changed(&request.ticket);
        }
        Ok(())
    }

    async fn fail(
        &self,
        delivery: &Delivery,
        error: &TicketError,
        dead_letter: bool,
    ) -> Result<(), QueueError> {
        let mut s = self.lock();
        if let (Ok(request), true) = (&delivery.request, dead_letter) {
            s.dead.push((request.clone(), error.clone()));
        }
        s.finish(delivery, self.ttl, |record| {
            record.status = TicketStatus::Failed;
            record.error = Some(error.clone());
        });
        drop(s);
        if let Ok(request) = &delivery.request {
            self.changed(&request.ticket);
        }
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let s = self.lock();
        let oldest_age = s
            .ready
            .front()
            .map(|(_, _, r)| Duration::from_millis(now_ms().saturating_sub(r.admitted_at_ms)));
        Ok(QueueStats {
            depth: s.admitted - s.dispatched,
            in_flight: s.pending.len() as u64,
            oldest_age,
            admitted: s.admitted,
            dispatched: s.dispatched,
        })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }

    async fn release_prequeue(&self, max: usize) -> Result<(usize, usize), QueueError> {
        let mut s = self.lock();
        s.prequeue.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = max.min(s.prequeue.len());
        let released: Vec<QueuedRequest> = s.prequeue.drain(..n).map(|(_, r)| r).collect();
        for request in released {
            let ahead = s.seq.saturating_sub(s.dispatched);
            let ticket = request.ticket.clone();
            let seq = s.enqueue(request, ahead);
            if let Some((record, _)) = s.tickets.get_mut(&ticket) {
                record.seq = seq;
            }
        }
        let left = s.prequeue.len();
        drop(s);
        if n > 0 {
            self.arrived.notify_one();
        }
        Ok((n, left))
    }

    async fn knobs(&self) -> Result<Knobs, QueueError> {
        Ok(self.lock().knobs.clone())
    }

    async fn set_knobs(&self, patch: &KnobsPatch) -> Result<Knobs, QueueError> {
        let mut s = self.lock();
        patch.apply(&mut s.knobs);
        Ok(s.knobs.clone())
    }

    async fn reserve_slots(
        &self,
        period: Duration,
        burst: u32,
        count: u32,
    ) -> Result<i64, QueueError> {
        // The same arithmetic as RESERVE_LUA, on this process's clock.
        let now = tokio::time::Instant::now();
        let backlog = period * burst.max(1).saturating_sub(1);
        let restart = now.checked_sub(backlog).unwrap_or(now);
        let behind = now.checked_sub(backlog.max(CATCH_UP)).unwrap_or(now);
        let mut s = self.lock();
        let first = s.slots_next.filter(|t| *t >= behind).unwrap_or(restart);
        s.slots_next = Some(first + period * count);
        Ok(if first >= now {
            (first - now).as_micros() as i64
        } else {
            -((now - first).as_micros() as i64)
        })
    }

    async fn adapt_rate(&self, step: &RateStep) -> Result<Option<Knobs>, QueueError> {
        let now = tokio::time::Instant::now();
        let mut s = self.lock();
        let last = if step.down { s.decreased } else { s.adapted };
        if last.is_some_and(|t| now < t + RateStep::SPACING) {
            return Ok(None);
        }
        let current = s.knobs.drain_rate.unwrap_or(step.configured);
        let next = step.apply(current);
        if next == current {
            return Ok(None);
        }
        s.adapted = Some(now);
        if step.down {
            s.decreased = Some(now);
        }
        s.knobs.drain_rate = Some(next);
        s.knobs.version += 1;
        Ok(Some(s.knobs.clone()))
    }
}
