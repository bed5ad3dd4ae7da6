//! The embedded line: admission, delivery and the end of each entry.

use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;

use super::{Claimed, MemoryQueue};
use crate::backend::{
    Admit, AdmitLimits, AttemptStart, Delivery, IdempotencyClaim, Line, Prequeue, QueueError,
    QueueStats, QueuedRequest,
};
use crate::ticket::{now_ms, StoredResponse, TicketError, TicketRecord, TicketStatus};

#[async_trait]
impl Line for MemoryQueue {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
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
        if let Some(seed) = &limits.pow {
            if s.pow_spent.get(&seed.id).is_some_and(|e| *e > now) {
                return Ok(Admit::PowReused);
            }
        }
        let stock = s.knobs.stock.or(limits.stock);
        let held = s.admitted - s.fair.returned;
        if s.knobs.sold_out || stock.is_some_and(|stock| held >= stock) {
            return Ok(Admit::SoldOut);
        }
        let state = &mut *s;
        if let Some(refusal) = (state.fair).refusal(&request, &limits.fair, &state.knobs) {
            return Ok(refusal);
        }
        let depth = s.depth();
        if depth >= limits.max_queue {
            return Ok(Admit::QueueFull { depth });
        }
        s.admitted += 1;
        let state = &mut *s;
        let product_sold_out = (state.fair).count(&request, &limits.fair, &state.knobs);
        let product = request.product.clone();
        if let Some(seed) = limits.pow {
            s.pow_spent.insert(seed.id, now + seed.ttl);
        }
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
            s.enqueue(request, Some(depth))
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
        s.events
            .record("admitted", admitted_at_ms, Some(&ticket), &[]);
        if stock.is_some_and(|stock| s.admitted - s.fair.returned == stock) {
            let reason = [("reason", "stock".to_string())];
            s.events.record("sold_out", admitted_at_ms, None, &reason);
        }
        if let (true, Some(product)) = (product_sold_out, product) {
            let fields = [("reason", "stock".to_string()), ("product", product)];
            s.events.record("sold_out", admitted_at_ms, None, &fields);
        }
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

    async fn release_prequeue(&self, max: usize) -> Result<(usize, usize), QueueError> {
        let mut s = self.lock();
        s.prequeue.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = max.min(s.prequeue.len());
        let released: Vec<QueuedRequest> = s.prequeue.drain(..n).map(|(_, r)| r).collect();
        for request in released {
            let ahead = s.seq.saturating_sub(s.dispatched);
            let ticket = request.ticket.clone();
            let seq = s.enqueue(request, Some(ahead));
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
                            ahead_at_admission: ahead,
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
            if delivery.fresh {
                s.events
                    .record("expired", now_ms(), Some(&request.ticket), &[]);
            }
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
        let changed = record.status != TicketStatus::InFlight;
        record.status = TicketStatus::InFlight;
        let attempt = [("attempt", attempts.to_string())];
        s.events
            .record("dispatched", now_ms(), Some(&request.ticket), &attempt);
        drop(s);
        if changed {
            self.changed(&request.ticket);
        }
        Ok(AttemptStart::Counted(attempts))
    }

    async fn complete(
        &self,
        delivery: &Delivery,
        response: &StoredResponse,
    ) -> Result<(), QueueError> {
        let mut s = self.lock();
        let ended = s.finish(delivery, self.ttl, |record| {
            record.status = TicketStatus::Completed;
            record.response = Some(response.clone());
        });
        if let Some(ticket) = ended {
            let status = [("status", response.status.to_string())];
            s.events
                .record("completed", now_ms(), Some(&ticket), &status);
        }
        drop(s);
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
        // Once per entry, as on Redis (`DEAD_LUA`): a failure reported for an
        // entry already finished (recorded twice, or finished by another
        // consumer) is no second dead letter.
        let pending = delivery
            .entry_id
            .parse::<u64>()
            .is_ok_and(|id| s.pending.contains_key(&id));
        if dead_letter && pending {
            let request = delivery.request.as_ref().ok();
            let attempts = request
                .and_then(|r| s.tickets.get(&r.ticket))
                .map(|(record, _)| record.attempts);
            s.dead.push(request.cloned(), error.clone(), attempts);
        }
        let ended = s.finish(delivery, self.ttl, |record| {
            record.status = TicketStatus::Failed;
            record.error = Some(error.clone());
        });
        if let Some(ticket) = ended {
            let why = [
                ("code", error.code.clone()),
                ("detail", error.detail.clone()),
            ];
            s.events.record("failed", now_ms(), Some(&ticket), &why);
        }
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
            depth: s.depth(),
            in_flight: s.pending.len() as u64,
            oldest_age,
            admitted: s.admitted,
            dispatched: s.dispatched,
            returned: s.fair.returned,
        })
    }

    async fn products_sold(&self) -> Result<std::collections::BTreeMap<String, u64>, QueueError> {
        Ok(self.lock().fair.sold())
    }
}
