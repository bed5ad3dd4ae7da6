//! The durable queue behind admission and drain: one trait, two backends.
//!
//! - [`RedisQueue`]: a Redis stream with a consumer group (production).
//! - [`MemoryQueue`]: in-process, for trying the gateway with nothing installed;
//!   not shared between instances and lost when the process dies.
//!
//! Both keep the same counters so position and ETA never scan the queue: an
//! admission sequence number per ticket and a dispatched count per queue.

pub mod knobs;
mod memory;
mod partitioned;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::knobs::{Knobs, KnobsPatch, RateStep};
use crate::ticket::{StoredResponse, TicketError, TicketId, TicketRecord, TicketStatus};

pub use self::memory::MemoryQueue;
pub use self::partitioned::{partition_of_claim, Partitioned};
pub use self::redis::{RedisQueue, RedisQueueConfig};

/// Lateness a drain slot absorbs without being dropped: timer granularity
/// plus scheduling stalls on a busy machine. Over any window longer than this
/// the upstream sees at most the configured rate. Shared by the pacer and
/// every backend's slot schedule.
pub const CATCH_UP: Duration = Duration::from_millis(20);

/// A request as admitted, stored whole so any instance can replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRequest {
    pub ticket: TicketId,
    pub method: String,
    /// Path and query, as the client sent them.
    pub path: String,
    /// End-to-end headers ([`crate::http::headers::encode`]).
    pub headers: Bytes,
    pub body: Bytes,
    /// Who the client is (`--client-key`).
    pub client: String,
    /// `X-Forwarded-For` to send upstream.
    pub forwarded_for: String,
    /// `X-Forwarded-Proto` to send upstream.
    pub forwarded_proto: String,
    pub admitted_at_ms: u64,
}

/// An `Idempotency-Key` claim, already scoped to the client and hashed.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// Hex digest of client key + idempotency key.
    pub key: String,
    /// Hex digest of what the request asks for (method, path, body).
    pub fingerprint: String,
}

/// The backend's decision on one admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Stored; `seq` is the ticket's admission number, `dispatched` the
    /// queue's dispatch count at that moment.
    Admitted { seq: u64, dispatched: u64 },
    /// The idempotency key was seen with the same request: the original ticket.
    Replayed {
        ticket: TicketId,
        seq: u64,
        dispatched: u64,
    },
    /// The idempotency key was seen with a different request.
    KeyReused,
    /// The queue holds `depth` undispatched tickets, its capacity.
    QueueFull { depth: u64 },
    /// The stock is exhausted or the queue was flipped to sold out.
    SoldOut,
}

/// The limits an admission is checked against, atomically with the enqueue.
#[derive(Debug, Clone, Copy)]
pub struct AdmitLimits {
    /// Queue capacity.
    pub max_queue: u64,
    /// The configured stock; a stock knob set at run time wins.
    pub stock: Option<u64>,
    /// Whether the entry joins the pre-queue.
    pub prequeue: Prequeue,
}

/// The pre-queue, as far as one admission is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prequeue {
    /// The queue has no pre-queue window: straight into line.
    None,
    /// It has one, but this admission is after it: into line, unless
    /// pre-queued entries are still being placed (then behind them).
    Configured,
    /// In the window: the entry takes a random place in line and waits for
    /// [`QueueBackend::release_prequeue`].
    Now,
}

/// One entry handed to the drain.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The backend's id of the entry (a stream id for Redis).
    pub entry_id: String,
    /// True until its first attempt starts: counts the dispatch once.
    pub fresh: bool,
    /// The stored request, or why it could not be read back.
    pub request: Result<QueuedRequest, String>,
    /// Tickets that were ahead of this one when it was admitted: the
    /// position its ETA was computed from.
    pub ahead_at_admission: Option<u64>,
    /// The partition it came from (0 unless the queue is partitioned).
    pub partition: u32,
}

/// How an attempt on a delivery could start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStart {
    /// The ticket is in flight; the attempt number across all instances.
    Counted(u32),
    /// The ticket has expired: the request is still sent (its 202 promised
    /// it), with the attempt counted by this instance alone.
    Untracked,
    /// The ticket was cancelled while queued: the entry is removed, counted
    /// as dispatched, and never sent.
    Cancelled,
}

/// The answer to a cancel request.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// Cancelled now: the record and the dispatched count.
    Cancelled(TicketRecord, u64),
    /// Cancelled before; nothing changed.
    AlreadyCancelled(TicketRecord, u64),
    /// Too late: the ticket is in flight or finished.
    Refused(TicketStatus),
    /// Unknown or expired.
    NotFound,
}

/// What the change feed reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// This ticket's status changed.
    Ticket(&'a str),
    /// The feed (re)started: changes in the gap were not seen, so any ticket
    /// may have changed.
    Resync,
}

/// The receiver of [`QueueBackend::follow_changes`].
pub type OnChange = dyn for<'a> Fn(Change<'a>) + Send + Sync;

/// A snapshot of a queue for gauges and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueStats {
    /// Admitted, not yet dispatched.
    pub depth: u64,
    /// Dispatched, not yet finished.
    pub in_flight: u64,
    /// Age of the oldest undispatched entry.
    pub oldest_age: Option<Duration>,
    pub admitted: u64,
    pub dispatched: u64,
}

/// Why the backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store did not answer (down, timed out, connection lost). A timed-out
    /// write may still have been applied.
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this version cannot understand.
    #[error("queue backend answered unexpectedly: {0}")]
    Protocol(String),
}

/// A queue backend for one named queue.
#[async_trait]
pub trait QueueBackend: Send + Sync + 'static {
    /// `"redis"` or `"embedded"`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// How many partitions the queue is spread over ([`Partitioned`]).
    fn partitions(&self) -> u32 {
        1
    }

    /// Each partition's dispatched count, in partition order: positions of
    /// queued tickets without reading each ticket.
    async fn dispatched(&self) -> Result<Vec<u64>, QueueError> {
        Ok(vec![self.stats().await?.dispatched])
    }

    /// Stores the request and its ticket in one atomic step, unless the
    /// idempotency claim was seen before, the queue is sold out or its stock
    /// spent, or it holds `max_queue` — checked in that order.
    async fn admit(
        &self,
        request: QueuedRequest,
        claim: Option<IdempotencyClaim>,
        limits: AdmitLimits,
    ) -> Result<Admit, QueueError>;

    /// What an idempotency claim names, storing nothing: `Replayed` with its
    /// ticket when the claim was admitted with the same request, `KeyReused`
    /// with another, `None` when unknown. Asked when the gateway refuses a
    /// request that carries a key: a retry of an admitted request gets its
    /// ticket, not a refusal its first attempt did not meet.
    async fn replay(&self, claim: &IdempotencyClaim) -> Result<Option<Admit>, QueueError>;

    /// A ticket's record and the queue's dispatched count, or `None` when
    /// unknown or expired.
    async fn ticket(&self, id: &TicketId) -> Result<Option<(TicketRecord, u64)>, QueueError>;

    /// Up to `max` entries for this instance, waiting up to `block` for the
    /// first. Entries this instance held when it last stopped come first.
    async fn next(&self, block: Duration, max: usize) -> Result<Vec<Delivery>, QueueError>;

    /// Periodic upkeep (every third of `claim_idle`): keep this instance's
    /// entries from looking abandoned, and take over entries that other
    /// instances left unfinished for longer than `claim_idle`.
    async fn maintain(&self, claim_idle: Duration) -> Result<(), QueueError>;

    /// Marks the ticket in flight and counts the attempt (and, for a fresh
    /// delivery, the dispatch), unless it was cancelled: then the entry is
    /// removed in the same step. The caller clears `fresh` once this succeeds.
    async fn start_attempt(&self, delivery: &Delivery) -> Result<AttemptStart, QueueError>;

    /// Cancels a queued ticket, atomically against [`Self::start_attempt`]:
    /// one of the two wins. The entry stays in line until the drain reaches
    /// and skips it.
    async fn cancel(&self, id: &TicketId) -> Result<Cancel, QueueError>;

    /// Reports every ticket status change made by any instance, until the
    /// feed breaks (the error is returned; the caller retries). Starts with
    /// [`Change::Resync`]. One feed per instance, whatever the number of
    /// waiting clients.
    async fn follow_changes(&self, changed: &OnChange) -> Result<(), QueueError>;

    /// Records the upstream's final answer and removes the entry.
    async fn complete(
        &self,
        delivery: &Delivery,
        response: &StoredResponse,
    ) -> Result<(), QueueError>;

    /// Fails the entry's ticket and removes the entry, moving it to the
    /// dead-letter stream when `dead_letter`, in one step.
    async fn fail(
        &self,
        delivery: &Delivery,
        error: &TicketError,
        dead_letter: bool,
    ) -> Result<(), QueueError>;

    /// Moves up to `max` pre-queued entries into the queue in their random
    /// order; returns how many moved and how many are left. Admissions made
    /// while some are left line up behind them.
    async fn release_prequeue(&self, max: usize) -> Result<(usize, usize), QueueError>;

    /// The shared runtime knobs.
    async fn knobs(&self) -> Result<Knobs, QueueError>;

    /// Changes the shared knobs; returns them as they now are.
    async fn set_knobs(&self, patch: &KnobsPatch) -> Result<Knobs, QueueError>;

    /// Reserves `count` consecutive drain slots, `period` apart, on the
    /// queue's one schedule, shared by every instance: across instances the
    /// upstream never gets more than one slot a period (after an idle spell,
    /// `burst` back to back). Returns when the first slot is due, in
    /// microseconds from now (negative: already due).
    async fn reserve_slots(
        &self,
        period: Duration,
        burst: u32,
        count: u32,
    ) -> Result<i64, QueueError>;

    /// Moves the adaptive drain rate (the `drain_rate` knob) one step, unless
    /// a step the same way (or, for an increase, any step) was taken by any
    /// instance in the last [`RateStep::SPACING`]: N instances judging the
    /// same overload take one step, not N. The knobs after a step taken.
    async fn adapt_rate(&self, step: &RateStep) -> Result<Option<Knobs>, QueueError>;

    /// Depth, in-flight count and oldest age, cheaply.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Whether the backend answers.
    async fn ping(&self) -> Result<(), QueueError>;
}
