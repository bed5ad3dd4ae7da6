//! The embedded change feed: a broadcast channel; a reader that falls
//! behind by more than its buffer is told to resync.

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::MemoryQueue;
use crate::backend::{Change, ChangeFeed, OnChange, QueueError};

#[async_trait]
impl ChangeFeed for MemoryQueue {
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
}
