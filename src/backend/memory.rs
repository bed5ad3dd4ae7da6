//! The embedded backend: a queue in this process's memory, with the same
//! semantics as the Redis backend. One file per seam: `line.rs`,
//! `tickets.rs`, `knobs.rs`, `schedule.rs`, `changes.rs`; the state they
//! share is here.

mod changes;
mod dead;
mod events;
mod fair;
mod knobs;
mod line;
mod schedule;
mod tickets;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use crate::backend::events::EventSettings;
use crate::backend::knobs::Knobs;
use crate::backend::{Delivery, QueuedRequest};
use crate::ticket::{now_ms, TicketError, TicketId, TicketRecord};

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
    /// Where the slot schedule's clock starts (tokio's clock).
    epoch: tokio::time::Instant,
    state: Mutex<State>,
    arrived: Notify,
    /// Ticket status changes, for [`crate::backend::ChangeFeed`].
    changes: broadcast::Sender<TicketId>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Undispatched entries in admission order, with the tickets ahead of
    /// each when it entered (`None` for a replayed dead letter).
    ready: VecDeque<(u64, Option<u64>, QueuedRequest)>,
    /// Dispatched, not yet finished.
    pending: HashMap<u64, QueuedRequest, Fast>,
    tickets: HashMap<TicketId, (TicketRecord, Instant), Fast>,
    idempotency: HashMap<String, Claimed, Fast>,
    /// Proof-of-work seeds spent, until each expires.
    pow_spent: HashMap<[u8; 14], Instant, Fast>,
    /// Dead letters by id, oldest first.
    dead: dead::DeadBuf,
    admitted: u64,
    /// Dead letters put back in line: they count in the depth, not in
    /// the stock.
    replayed: u64,
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
    /// The period `slots_next` was reserved at.
    slots_period: Option<Duration>,
    /// When the adaptive rate last moved, and last moved down.
    adapted: Option<tokio::time::Instant>,
    decreased: Option<tokio::time::Instant>,
    /// The event log, written under this lock with each change.
    events: events::EventBuf,
    /// Products and per-client counts of a fair sale.
    fair: fair::Fair,
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
            epoch: tokio::time::Instant::now(),
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            changes: broadcast::Sender::new(CHANGES_BUFFER),
        }
    }

    /// The same queue, writing lifecycle events ([`crate::backend::EventLog`]).
    pub fn with_events(self, settings: EventSettings) -> Self {
        self.lock().events.settings = Some(settings);
        self
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

    /// The requests moved to the dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<(QueuedRequest, TicketError)> {
        self.lock().dead.requests()
    }
}

impl State {
    /// Puts an entry in line; returns its sequence number.
    fn enqueue(&mut self, request: QueuedRequest, ahead: Option<u64>) -> u64 {
        self.seq += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.ready.push_back((id, ahead, request));
        self.seq
    }

    /// Admitted or replayed, not yet dispatched.
    fn depth(&self) -> u64 {
        (self.admitted + self.replayed).saturating_sub(self.dispatched)
    }

    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now - t < SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        self.tickets.retain(|_, (_, expires)| *expires > now);
        self.idempotency.retain(|_, c| c.expires > now);
        let tickets = &self.tickets;
        self.fair.sweep(|t| tickets.contains_key(t));
        self.pow_spent.retain(|_, expires| *expires > now);
    }

    /// Ends a delivery: the ticket takes its final state through `update`,
    /// unless it has one already (terminal states are final). Returns the
    /// ticket that ended now, whose event the caller writes: one terminal
    /// event per ticket, also when an end is repeated.
    fn finish(
        &mut self,
        delivery: &Delivery,
        ttl: Duration,
        update: impl FnOnce(&mut TicketRecord),
    ) -> Option<TicketId> {
        let Ok(id) = delivery.entry_id.parse::<u64>() else {
            return None;
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
        let ticket = ticket.cloned()?;
        match self.tickets.get_mut(&ticket) {
            Some((record, _)) if record.status.is_terminal() => None,
            Some((record, expires)) => {
                update(record);
                record.completed_at_ms = Some(now_ms());
                *expires = Instant::now() + ttl;
                Some(ticket)
            }
            // Expired while queued: it ended all the same, once.
            None => removed.is_some().then_some(ticket),
        }
    }
}
