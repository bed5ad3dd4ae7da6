//! The embedded slot schedule: `RESERVE_LUA`'s arithmetic on this
//! process's (tokio's) clock, so tests can pause it.

use std::time::Duration;

use async_trait::async_trait;

use super::MemoryQueue;
use crate::backend::{QueueError, Reserved, SlotSchedule, CATCH_UP};

#[async_trait]
impl SlotSchedule for MemoryQueue {
    async fn reserve_slots(
        &self,
        period: Duration,
        burst: u32,
        count: u32,
    ) -> Result<Reserved, QueueError> {
        // The same arithmetic as RESERVE_LUA, on this process's clock.
        let now = tokio::time::Instant::now();
        let backlog = period * burst.max(1).saturating_sub(1);
        let restart = now.checked_sub(backlog).unwrap_or(now);
        let behind = now.checked_sub(backlog.max(CATCH_UP)).unwrap_or(now);
        let mut s = self.lock();
        let next = match (s.slots_next, s.slots_period) {
            // The rate rose: the slots handed out ahead of now are re-spaced
            // at the new period (their holders drop them).
            (Some(next), Some(old)) if period < old && next > now => {
                Some(now + (next - now).mul_f64(period.as_secs_f64() / old.as_secs_f64()))
            }
            (next, _) => next,
        };
        let first = next.filter(|t| *t >= behind).unwrap_or(restart);
        s.slots_next = Some(first + period * count);
        s.slots_period = Some(period);
        // The schedule's clock: microseconds since this queue was made.
        Ok(Reserved {
            first: micros_since(self.epoch, first),
            now: micros_since(self.epoch, now),
        })
    }
}

/// Signed microseconds from `epoch` to `t`.
fn micros_since(epoch: tokio::time::Instant, t: tokio::time::Instant) -> i64 {
    match t.checked_duration_since(epoch) {
        Some(d) => d.as_micros() as i64,
        None => -((epoch - t).as_micros() as i64),
    }
}
