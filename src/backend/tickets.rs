//! The ticket store: one ticket's record as every instance sees it, and
//! the one change a client may make to it — cancelling it while it waits.

use async_trait::async_trait;

use super::QueueError;
use crate::ticket::{TicketId, TicketRecord, TicketStatus};

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

/// The tickets of one queue. Records are written by the line (admission,
/// attempts, the end of each entry); this seam reads them and cancels.
#[async_trait]
pub trait TicketStore: Send + Sync + 'static {
    /// Called for every ticket poll, ticket page and event-stream refresh
    /// whose answer is not cached: the ticket's record and the queue's (its
    /// partition's) dispatched count, from which its position follows;
    /// `None` when the ticket is unknown or expired.
    async fn ticket(&self, id: &TicketId) -> Result<Option<(TicketRecord, u64)>, QueueError>;

    /// Called for `DELETE /tickets/{id}`: cancels a queued ticket,
    /// atomically against [`super::Line::start_attempt`] — one of the two
    /// wins, so a cancelled ticket is never sent and a started one is never
    /// cancelled. The entry stays in line until the drain reaches and skips
    /// it. A cancel writes the `cancelled` event in the same step.
    async fn cancel(&self, id: &TicketId) -> Result<Cancel, QueueError>;
}
