//! The slot schedule: the drain's rate as one schedule of send slots per
//! queue, shared by every instance, so the upstream sees the configured rate
//! in total — not once per instance.

use std::time::Duration;

use async_trait::async_trait;

use super::QueueError;

/// Lateness a drain slot absorbs without being dropped: timer granularity
/// plus scheduling stalls on a busy machine. The slots are a period apart,
/// so any window of W sees at most `rate · (W + CATCH_UP) + 1` sends: over a
/// second or more, within 2 % of the rate. Smaller costs rate on a busy
/// machine (a 4 ms tolerance drained 2000/s at ~1300/s under load).
/// Shared by the pacer and every backend's slot schedule.
pub const CATCH_UP: Duration = Duration::from_millis(20);

/// The drain slots of one queue.
#[async_trait]
pub trait SlotSchedule: Send + Sync + 'static {
    /// Called by the drain's pacer for each small block of permits:
    /// reserves `count` consecutive drain slots, `period` apart, on the
    /// queue's one schedule. Across instances the upstream never gets more
    /// than one slot a period (after an idle spell, `burst` back to back); a
    /// schedule behind by less than [`CATCH_UP`] goes on where it was.
    async fn reserve_slots(
        &self,
        period: Duration,
        burst: u32,
        count: u32,
    ) -> Result<Reserved, QueueError>;
}

/// A block of reserved slots, on the schedule's own clock (Redis's, for a
/// shared schedule): the pacer maps it onto its process's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// When the first slot is due, microseconds on the schedule's clock.
    pub first: i64,
    /// The schedule's clock when the block was reserved, microseconds.
    pub now: i64,
}

impl Reserved {
    /// When the first slot is due, in microseconds from the reservation
    /// (negative: already due).
    pub fn first_in(&self) -> i64 {
        self.first - self.now
    }
}
