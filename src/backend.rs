//! The durable queue behind admission and drain, seen through seven small
//! seams, and the backends that implement them.
//!
//! Each seam is a trait in a file of its own, documented method by method
//! with when it is called and what its answer means:
//!
//! - [`Line`] (`line.rs`): the queue proper — admission, delivery to the
//!   drain, the end of each entry, the pre-queue, the counters.
//! - [`TicketStore`] (`tickets.rs`): one ticket's record, and its cancel.
//! - [`KnobStore`] (`knobs.rs`): the operators' shared knobs and the
//!   adaptive drain rate.
//! - [`SlotSchedule`] (`schedule.rs`): the drain's rate slots, one schedule
//!   shared by every instance.
//! - [`ChangeFeed`] (`changes.rs`): ticket status changes made by any instance.
//! - [`EventLog`] (`events.rs`): the queue's lifecycle events, each written
//!   by the other seams in the same step as the change it reports.
//! - [`DeadLetters`] (`dead_letters.rs`): the requests the drain gave up
//!   on — listed, replayed into line, discarded.
//!
//! [`QueueBackend`] is the seven together, what a queue at run time holds;
//! a user that needs one seam takes only that one (the pacer holds an
//! `Arc<dyn SlotSchedule>`). The backends implement every seam:
//!
//! - [`RedisQueue`]: a Redis stream with a consumer group (production).
//! - [`MemoryQueue`]: in-process, for trying the gateway with nothing installed;
//!   not shared between instances and lost when the process dies.
//! - [`Partitioned`]: one queue spread over several Redis queues.
//!
//! All keep the same counters so position and ETA never scan the queue: an
//! admission sequence number per ticket and a dispatched count per queue.

mod changes;
pub mod dead_letters;
pub mod events;
pub mod knobs;
mod line;
mod memory;
mod partitioned;
mod redis;
mod schedule;
mod tickets;

pub use self::changes::{Change, ChangeFeed, OnChange};
pub use self::dead_letters::{
    BulkAction, BulkOutcome, DeadLetter, DeadLetters, DeadPage, DeadQuery, Discard, Replay,
};
pub use self::events::{read_events, Event, EventLog, EventPage, EventQuery, EventSettings};
pub use self::knobs::KnobStore;
pub use self::line::{
    Admit, AdmitLimits, AttemptStart, Delivery, FairLimits, GroupLag, IdempotencyClaim, Line,
    Prequeue, QueueStats, QueuedRequest, StreamReport, MAX_REPORTED_GROUPS,
};
pub use self::memory::MemoryQueue;
pub use self::partitioned::{partition_of_claim, partition_of_client, Partitioned};
pub use self::redis::{RedisQueue, RedisQueueConfig};
pub use self::schedule::{Reserved, SlotSchedule, CATCH_UP};
pub use self::tickets::{Cancel, TicketStore};

/// A queue backend for one named queue: every seam at once. Implemented for
/// whatever implements the seven, so a backend implements the seams and
/// nothing else.
pub trait QueueBackend:
    Line + TicketStore + KnobStore + SlotSchedule + ChangeFeed + EventLog + DeadLetters
{
}

impl<T> QueueBackend for T where
    T: Line + TicketStore + KnobStore + SlotSchedule + ChangeFeed + EventLog + DeadLetters
{
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
