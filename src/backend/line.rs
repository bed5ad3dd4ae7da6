//! The line: the queue proper. Admission puts requests in it, the drain
//! takes them out in order, attempts them and ends each one — completed,
//! failed or dead-lettered. The pre-queue, the counters that give positions
//! without scanning, and the hand-over of entries between instances live
//! here too.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::QueueError;
use crate::ticket::pow::Solved;
use crate::ticket::{StoredResponse, TicketError, TicketId};

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
    /// The client's own `Idempotency-Key`, if it sent one (the upstream
    /// gets the ticket as its key; this one is kept for other consumers of
    /// the stream and the dead letters).
    pub idempotency_key: Option<String>,
    /// Who the client is (`--client-key`).
    pub client: String,
    /// `X-Forwarded-For` to send upstream.
    pub forwarded_for: String,
    /// `X-Forwarded-Proto` to send upstream.
    pub forwarded_proto: String,
    pub admitted_at_ms: u64,
    /// The product it buys (`product_from`); `None` on queues without
    /// products and on entries stored before they existed.
    pub product: Option<String>,
}

/// An `Idempotency-Key` claim, already scoped to the client and hashed.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// Hex digest of client key + idempotency key.
    pub key: String,
    /// Hex digest of what the request asks for (method, path, body).
    pub fingerprint: String,
    /// The partition its tickets live in when admission chose it (a
    /// per-client rule routes a client's admissions to one partition);
    /// `None`: the key's own ([`super::partition_of_claim`]).
    pub partition: Option<u32>,
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
    /// The request's product is sold out (its stock spent, or flipped).
    ProductSoldOut,
    /// The client holds as many admissions as `per_client_max` (or
    /// `per_client_max_per_product`) allows.
    QuotaExceeded,
    /// The proof-of-work seed was spent by an earlier admission.
    PowReused,
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
    /// The fair sale's limits (README "Running a fair sale").
    pub fair: FairLimits,
    /// The proof-of-work seed this admission spends, when the queue asks
    /// for one: refused ([`Admit::PowReused`]) if any admission spent it
    /// before, else recorded until the seed expires.
    pub pow: Option<Solved>,
}

/// Limits of a fair sale, checked in the admission's atomic step after
/// the stock and before the capacity.
#[derive(Debug, Clone, Copy, Default)]
pub struct FairLimits {
    /// The configured stock of the request's product (a run-time knob
    /// wins); `None`: the request names no product.
    pub product_stock: Option<u64>,
    /// Admissions one client may hold in the queue.
    pub per_client: Option<u64>,
    /// Admissions one client may hold per product.
    pub per_client_product: Option<u64>,
    /// How long a client's count lives after its last admission.
    pub window_secs: u64,
    /// A cancel gives the unit and the client's place back.
    pub cancel_returns: bool,
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
    /// [`Line::release_prequeue`].
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

/// A snapshot of a queue for gauges and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueStats {
    /// Admitted (or replayed from the dead letters), not yet dispatched.
    pub depth: u64,
    /// Dispatched, not yet finished.
    pub in_flight: u64,
    /// Age of the oldest undispatched entry.
    pub oldest_age: Option<Duration>,
    pub admitted: u64,
    pub dispatched: u64,
    /// Units cancelled tickets gave back to the stock: the stock left is
    /// the stock minus `admitted - returned`.
    pub returned: u64,
}

/// What tending the work stream found ([`Line::tend_stream`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// The consumer groups on the stream (ours first, the others by name,
    /// a bounded number) and the entries each has not read yet.
    pub groups: Vec<GroupLag>,
    /// Entries trimmed because of the retention before every group had
    /// finished them.
    pub trimmed_unfinished: u64,
}

/// Groups a [`StreamReport`] names at most (ours included): the lag
/// metric's labels stay bounded whatever is created on the stream. Every
/// group still counts for the trim.
pub const MAX_REPORTED_GROUPS: usize = 20;

/// One consumer group's lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    /// Entries of the stream the group has not read yet.
    pub lag: u64,
}

/// The line of one queue. An entry's life: [`admit`](Line::admit) (or, in
/// a pre-queue window, admit then [`release_prequeue`](Line::release_prequeue)),
/// [`next`](Line::next), one [`start_attempt`](Line::start_attempt) per
/// attempt, then [`complete`](Line::complete) or [`fail`](Line::fail).
#[async_trait]
pub trait Line: Send + Sync + 'static {
    /// `"redis"` or `"embedded"`, for logs, metrics and the admin API.
    fn kind(&self) -> &'static str;

    /// How many partitions the queue is spread over ([`super::Partitioned`]).
    /// Read once, when the queue is set up: admission draws a keyed
    /// request's ticket into its key's partition, and positions are counted
    /// per partition.
    fn partitions(&self) -> u32 {
        1
    }

    /// Called by `/readyz`: `Ok` when the backend answers.
    async fn ping(&self) -> Result<(), QueueError>;

    /// Called once per admitted request (admission's last step). Stores the
    /// request and its ticket in one atomic step, unless the idempotency
    /// claim was seen before, the queue is sold out or its stock spent, or it
    /// holds `max_queue` — checked in that order; the answer says which.
    /// The same step writes the `admitted` event, and `sold_out` (reason
    /// `stock`) when it took the last unit.
    /// An error means the request may or may not be stored (a timed-out
    /// write may have been applied): the client retries with its key.
    async fn admit(
        &self,
        request: QueuedRequest,
        claim: Option<IdempotencyClaim>,
        limits: AdmitLimits,
    ) -> Result<Admit, QueueError>;

    /// Called when the gateway refuses a request that carries a key, before
    /// it answers: what the claim names, storing nothing. `Replayed` with
    /// its ticket when the claim was admitted with the same request,
    /// `KeyReused` with another, `None` when unknown. A retry of an admitted
    /// request gets its ticket, not a refusal its first attempt did not meet.
    async fn replay(&self, claim: &IdempotencyClaim) -> Result<Option<Admit>, QueueError>;

    /// Called by the drain from the sale's opening until it answers none
    /// left: moves up to `max` pre-queued entries into line in their random
    /// order; returns how many moved and how many are left. Admissions made
    /// while some are left line up behind them.
    async fn release_prequeue(&self, max: usize) -> Result<(usize, usize), QueueError>;

    /// Called by the drain's loop: up to `max` entries for this instance,
    /// waiting up to `block` for the first (empty: none came). Entries this
    /// instance held when it last stopped come first (not `fresh`), then
    /// entries taken over from stopped instances, then new ones in
    /// admission order.
    async fn next(&self, block: Duration, max: usize) -> Result<Vec<Delivery>, QueueError>;

    /// Called every third of `claim_idle` by the queue's upkeep: keeps this
    /// instance's entries from looking abandoned, and takes over entries
    /// that other instances left unfinished for longer than `claim_idle`
    /// (handed out by the next [`Line::next`]).
    async fn maintain(&self, claim_idle: Duration) -> Result<(), QueueError>;

    /// Called every second by the queue's upkeep: removes the entries every
    /// consumer group on the queue's stream is done with, and those older
    /// than `retention` that this gateway is done with, whatever other
    /// groups did with them; reports each group's lag. Backends without a
    /// stream others can read (the embedded one) report nothing.
    async fn tend_stream(&self, _retention: Duration) -> Result<StreamReport, QueueError> {
        Ok(StreamReport::default())
    }

    /// Called by the drain before each attempt: marks the ticket in flight
    /// and counts the attempt (and, for a fresh delivery, the dispatch),
    /// unless it was cancelled — then the entry is removed in the same step
    /// and must not be sent. The caller clears `fresh` once this succeeds.
    /// Writes `dispatched` (the attempt number), or `expired` when the
    /// ticket has gone, in the same step.
    async fn start_attempt(&self, delivery: &Delivery) -> Result<AttemptStart, QueueError>;

    /// Called when the upstream gave its final answer: records it on the
    /// ticket, with its `completed` event, and finishes the entry (it
    /// leaves the stream once every consumer group is done with it, see
    /// [`Line::tend_stream`]) — in one step. A ticket already final (a
    /// repeated call) keeps its state and gets no second event.
    async fn complete(
        &self,
        delivery: &Delivery,
        response: &StoredResponse,
    ) -> Result<(), QueueError>;

    /// Called when the drain gives up on an entry (attempts exhausted, an
    /// unreadable entry, the sale sold out): fails its ticket with `error`
    /// and finishes the entry, copying it to the dead letters when
    /// `dead_letter` (with the ticket's attempts, see
    /// [`super::DeadLetters`]), in one step, with its `failed` event (none for a
    /// ticket already final, nor for an entry with no readable ticket).
    async fn fail(
        &self,
        delivery: &Delivery,
        error: &TicketError,
        dead_letter: bool,
    ) -> Result<(), QueueError>;

    /// Called for the gauges (every second) and the admin API: depth,
    /// in-flight count and oldest age, cheaply (no scan of the queue).
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Called for the admin API and the gauges (every second, on queues
    /// with products): the units each product's admissions hold, cancels
    /// given back — products never admitted are absent.
    async fn products_sold(&self) -> Result<std::collections::BTreeMap<String, u64>, QueueError>;

    /// Called every second by the queue's upkeep: each partition's
    /// dispatched count, in partition order, so positions of queued tickets
    /// need no read of each ticket.
    async fn dispatched(&self) -> Result<Vec<u64>, QueueError> {
        Ok(vec![self.stats().await?.dispatched])
    }
}
