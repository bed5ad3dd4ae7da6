//! The embedded ticket store.

use tokio::time::Instant;

use async_trait::async_trait;

use super::MemoryQueue;
use crate::backend::{Cancel, QueueError, TicketStore};
use crate::ticket::{now_ms, TicketId, TicketRecord, TicketStatus};

#[async_trait]
impl TicketStore for MemoryQueue {
    async fn ticket(&self, id: &TicketId) -> Result<Option<(TicketRecord, u64)>, QueueError> {
        let s = self.lock();
        Ok(s.tickets
            .get(id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(record, _)| (record.clone(), s.dispatched)))
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
                s.fair.cancelled(id);
                s.events.record("cancelled", now_ms(), Some(id), &[]);
                drop(s);
                self.changed(id);
                Ok(Cancel::Cancelled(record, dispatched))
            }
            TicketStatus::Cancelled => Ok(Cancel::AlreadyCancelled(record.clone(), dispatched)),
            other => Ok(Cancel::Refused(other)),
        }
    }
}
