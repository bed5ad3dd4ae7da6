//! A queue spread over several partitions, each a complete queue of its own
//! under its own hash tag (`{checkout:0}`, `{checkout:1}`, …), so that on a
//! Redis Cluster the partitions land on different shards and one queue's
//! ingest is not bound by one shard.
//!
//! A ticket's partition is a hash of its id, so any instance finds it
//! without a lookup; admissions with an `Idempotency-Key` draw their id into
//! the partition of the key, so a retry meets its first attempt. Each
//! partition holds its share of the stock and of the capacity. The drain
//! reads the partitions in turn, so FIFO holds within a partition, and
//! across partitions only as far as their backlogs stay even (they do when
//! admissions spread evenly); positions and wait estimates are per
//! partition, at the partition's share of the drain rate.

mod dead;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::events::{EventId, EventLog, EventPage, EventQuery};
use super::knobs::{KnobStore, Knobs, KnobsPatch, RateStep};
use super::{
    Admit, AdmitLimits, AttemptStart, Cancel, ChangeFeed, Delivery, IdempotencyClaim, Line,
    OnChange, QueueBackend, QueueError, QueueStats, QueuedRequest, Reserved, SlotSchedule,
    StreamReport, TicketStore, MAX_REPORTED_GROUPS,
};
use crate::ticket::{fnv1a, StoredResponse, TicketError, TicketId, TicketRecord};

/// Longest a read waits on one partition before looking at the next.
const READ_SLICE: Duration = Duration::from_millis(50);

/// One queue over several partitions.
pub struct Partitioned {
    parts: Vec<Arc<dyn QueueBackend>>,
    /// The partition the next read starts with.
    cursor: AtomicUsize,
}

impl Partitioned {
    /// Partition `i` of the queue must be `parts[i]`.
    pub fn new(parts: Vec<Arc<dyn QueueBackend>>) -> Self {
        assert!(!parts.is_empty(), "a queue has at least one partition");
        Partitioned {
            parts,
            cursor: AtomicUsize::new(0),
        }
    }

    fn count(&self) -> u32 {
        self.parts.len() as u32
    }

    fn of_ticket(&self, id: &TicketId) -> &Arc<dyn QueueBackend> {
        &self.parts[id.partition(self.count()) as usize]
    }

    fn of_delivery(&self, delivery: &Delivery) -> Result<&Arc<dyn QueueBackend>, QueueError> {
        self.parts
            .get(delivery.partition as usize)
            .ok_or_else(|| QueueError::Protocol(format!("no partition {}", delivery.partition)))
    }
}

/// The partition an idempotency claim's tickets live in, of `partitions`:
/// the one admission chose for it (a per-client rule), else its key's.
pub fn partition_of_claim(claim: &IdempotencyClaim, partitions: u32) -> u32 {
    claim
        .partition
        .unwrap_or_else(|| (fnv1a(claim.key.as_bytes()) % u64::from(partitions.max(1))) as u32)
}

/// The partition every admission of one client goes to, of `partitions`,
/// when a per-client rule needs its count in one place (a quota, or proof
/// of work: a seed is recorded where its every use goes).
pub fn partition_of_client(client: &str, partitions: u32) -> u32 {
    (fnv1a(client.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// The line: an admission goes to its ticket's partition, the drain reads
/// every partition in turn, a delivery ends in the partition it came from.
#[async_trait]
impl Line for Partitioned {
    fn kind(&self) -> &'static str {
        self.parts[0].kind()
    }

    fn partitions(&self) -> u32 {
        self.count()
    }

    async fn ping(&self) -> Result<(), QueueError> {
        for part in &self.parts {
            part.ping().await?;
        }
        Ok(())
    }

    async fn admit(
        &self,
        request: QueuedRequest,
        claim: Option<IdempotencyClaim>,
        limits: AdmitLimits,
    ) -> Result<Admit, QueueError> {
        // Each partition takes its share of `max_queue` and the stock itself.
        self.of_ticket(&request.ticket)
            .admit(request, claim, limits)
            .await
    }

    async fn replay(&self, claim: &IdempotencyClaim) -> Result<Option<Admit>, QueueError> {
        // Admission drew the claim's tickets into this partition.
        let part = partition_of_claim(claim, self.count()) as usize;
        self.parts
            .get(part)
            .ok_or_else(|| QueueError::Protocol(format!("no partition {part}")))?
            .replay(claim)
            .await
    }

    async fn release_prequeue(&self, max: usize) -> Result<(usize, usize), QueueError> {
        let share = max.div_ceil(self.parts.len()).max(1);
        let (mut moved, mut left) = (0, 0);
        for part in &self.parts {
            let (m, l) = part.release_prequeue(share).await?;
            moved += m;
            left += l;
        }
        Ok((moved, left))
    }

    async fn next(&self, block: Duration, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let n = self.parts.len();
        let deadline = tokio::time::Instant::now() + block;
        loop {
            // Each partition in turn, starting after the last one read from:
            // a short wait on each, so an entry anywhere is found within
            // one round. (Redis ends a blocked read on its own timer, every
            // 100 ms at `hz 10`: a round takes up to that per partition.)
            let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
            let now = tokio::time::Instant::now();
            let slice = READ_SLICE.min(deadline.saturating_duration_since(now));
            let got = self.parts[start]
                .next(slice.max(Duration::from_millis(1)), max)
                .await?;
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
        }
    }

    async fn maintain(&self, claim_idle: Duration) -> Result<(), QueueError> {
        for part in &self.parts {
            part.maintain(claim_idle).await?;
        }
        Ok(())
    }

    async fn tend_stream(&self, retention: Duration) -> Result<StreamReport, QueueError> {
        // Each partition's stream is its own, with its own groups; a group
        // on every partition (as a consumer of the whole queue makes them)
        // lags by the sum.
        let mut total = StreamReport::default();
        for part in &self.parts {
            let report = part.tend_stream(retention).await?;
            total.trimmed_unfinished += report.trimmed_unfinished;
            for g in report.groups {
                match total.groups.iter_mut().find(|t| t.group == g.group) {
                    Some(t) => t.lag += g.lag,
                    None => total.groups.push(g),
                }
            }
        }
        total.groups.truncate(MAX_REPORTED_GROUPS);
        Ok(total)
    }

    async fn start_attempt(&self, delivery: &Delivery) -> Result<AttemptStart, QueueError> {
        self.of_delivery(delivery)?.start_attempt(delivery).await
    }

    async fn complete(
        &self,
        delivery: &Delivery,
        response: &StoredResponse,
    ) -> Result<(), QueueError> {
        self.of_delivery(delivery)?
            .complete(delivery, response)
            .await
    }

    async fn fail(
        &self,
        delivery: &Delivery,
        error: &TicketError,
        dead_letter: bool,
    ) -> Result<(), QueueError> {
        self.of_delivery(delivery)?
            .fail(delivery, error, dead_letter)
            .await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut total = QueueStats::default();
        for part in &self.parts {
            let s = part.stats().await?;
            total.depth += s.depth;
            total.in_flight += s.in_flight;
            total.admitted += s.admitted;
            total.returned += s.returned;
            total.dispatched += s.dispatched;
            total.oldest_age = total.oldest_age.max(s.oldest_age);
        }
        Ok(total)
    }

    async fn products_sold(&self) -> Result<std::collections::BTreeMap<String, u64>, QueueError> {
        // Each partition sells its share of each product.
        let mut total = std::collections::BTreeMap::new();
        for part in &self.parts {
            for (product, n) in part.products_sold().await? {
                *total.entry(product).or_insert(0) += n;
            }
        }
        Ok(total)
    }

    async fn dispatched(&self) -> Result<Vec<u64>, QueueError> {
        let mut out = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            out.push(part.stats().await?.dispatched);
        }
        Ok(out)
    }
}

/// Tickets: each in the partition its id names.
#[async_trait]
impl TicketStore for Partitioned {
    async fn ticket(&self, id: &TicketId) -> Result<Option<(TicketRecord, u64)>, QueueError> {
        self.of_ticket(id).ticket(id).await
    }

    async fn cancel(&self, id: &TicketId) -> Result<Cancel, QueueError> {
        self.of_ticket(id).cancel(id).await
    }
}

/// Knobs: partition 0's are the queue's; a change is copied to every
/// partition, whose admissions read their own.
#[async_trait]
impl KnobStore for Partitioned {
    async fn knobs(&self) -> Result<Knobs, QueueError> {
        self.parts[0].knobs().await
    }

    async fn set_knobs(
        &self,
        patch: &KnobsPatch,
        actor: Option<&str>,
    ) -> Result<Knobs, QueueError> {
        // Every partition's admission script reads its own copy (same
        // slot); partition 0's is the one reported, and the one whose
        // events record the change. A change that reached only some
        // partitions is reported as failed, and repeating it is harmless.
        for part in self.parts.iter().skip(1) {
            part.set_knobs(patch, None).await?;
        }
        self.parts[0].set_knobs(patch, actor).await
    }

    async fn adapt_rate(&self, step: &RateStep) -> Result<Option<Knobs>, QueueError> {
        // The drain rate is read from partition 0 only (admission reads no
        // rate), so the step needs no copies.
        self.parts[0].adapt_rate(step).await
    }
}

/// The schedule: one for the whole queue, on partition 0.
#[async_trait]
impl SlotSchedule for Partitioned {
    async fn reserve_slots(
        &self,
        period: Duration,
        burst: u32,
        count: u32,
    ) -> Result<Reserved, QueueError> {
        // One schedule for the whole queue: the partitions share its rate.
        self.parts[0].reserve_slots(period, burst, count).await
    }
}

/// Changes: every partition's feed, merged.
#[async_trait]
impl ChangeFeed for Partitioned {
    async fn follow_changes(&self, changed: &OnChange) -> Result<(), QueueError> {
        // One feed per partition; the first to break ends them all, and the
        // caller starts over (with a resync).
        let feeds = self.parts.iter().map(|p| p.follow_changes(changed));
        let (result, _, _) = futures_util::future::select_all(feeds).await;
        result
    }
}

/// Events: each partition writes its own (in the same step as its
/// changes); reads merge them by time. A cursor is every partition's,
/// comma-separated, and an event's id is `<partition>:<stream id>`.
#[async_trait]
impl EventLog for Partitioned {
    async fn events(&self, query: &EventQuery) -> Result<EventPage, QueueError> {
        let cursors = self.cursors(query)?;
        let mut pages = Vec::with_capacity(self.parts.len());
        for (part, cursor) in self.parts.iter().zip(&cursors) {
            let q = EventQuery {
                after: Some(cursor.clone()),
                since_ms: None,
                ..query.clone()
            };
            pages.push(part.events(&q).await?);
        }
        // The oldest `limit` of every partition's oldest `limit`.
        let mut all: Vec<(EventId, usize, usize)> = Vec::new();
        for (i, page) in pages.iter().enumerate() {
            for (j, event) in page.events.iter().enumerate() {
                all.push((EventId::parse(&event.id).unwrap_or_default(), i, j));
            }
        }
        all.sort();
        all.truncate(query.limit.max(1));
        let mut taken = vec![None; pages.len()];
        for &(_, i, j) in &all {
            taken[i] = Some(j);
        }
        let mut next = Vec::with_capacity(pages.len());
        for (i, page) in pages.iter().enumerate() {
            next.push(match taken[i] {
                // Every event it gave went out: on from where it stopped.
                Some(j) if j + 1 == page.events.len() => page.next.clone(),
                Some(j) => page.events[j].id.clone(),
                None if page.events.is_empty() => page.next.clone(),
                None => cursors[i].clone(),
            });
        }
        let events = all
            .into_iter()
            .map(|(_, i, j)| {
                let mut event = pages[i].events[j].clone();
                event.id = format!("{i}:{}", event.id);
                event
            })
            .collect();
        Ok(EventPage {
            events,
            next: next.join(","),
        })
    }

    async fn await_events(&self, cursor: &str, wait: Duration) -> Result<(), QueueError> {
        let cursors = self.cursors(&EventQuery {
            after: Some(cursor.to_string()),
            ..EventQuery::default()
        })?;
        let waits = self
            .parts
            .iter()
            .zip(&cursors)
            .map(|(part, cursor)| part.await_events(cursor, wait));
        let (result, _, _) = futures_util::future::select_all(waits).await;
        result
    }
}

impl Partitioned {
    /// Each partition's cursor: from `after`, or where `since` starts.
    fn cursors(&self, query: &EventQuery) -> Result<Vec<String>, QueueError> {
        let Some(after) = &query.after else {
            let start = EventId::start_of(query)?.to_string();
            return Ok(vec![start; self.parts.len()]);
        };
        let cursors: Vec<String> = after.split(',').map(str::to_string).collect();
        if cursors.len() != self.parts.len() {
            return Err(QueueError::Protocol(format!(
                "bad event cursor `{after}`: {} partitions",
                self.parts.len()
            )));
        }
        Ok(cursors)
    }
}
