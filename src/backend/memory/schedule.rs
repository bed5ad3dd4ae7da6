//! The embedded slot schedule: `RESERVE_LUA`'s arithmetic on this
//! process's (tokio's) clock, so tests can pause it.

use std::time::Duration;

use async_trait::async_trait;

use super::MemoryQueue;
use crate::backend::{QueueError, SlotSchedule, CATCH_UP};

#[async_trait]
impl SlotSchedule for MemoryQueue {
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
}
