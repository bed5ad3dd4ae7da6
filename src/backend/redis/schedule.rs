//! The Redis slot schedule: `RESERVE_LUA` on one string key, on Redis's
//! clock, which every instance shares.

use std::time::Duration;

use async_trait::async_trait;

use super::{unavailable, RedisQueue};
use crate::backend::{QueueError, Reserved, SlotSchedule, CATCH_UP};

#[async_trait]
impl SlotSchedule for RedisQueue {
    async fn reserve_slots(
        &self,
        period: Duration,
        burst: u32,
        count: u32,
    ) -> Result<Reserved, QueueError> {
        let mut conn = self.conn.clone();
        let (first, now): (i64, i64) = self
            .reserve_script
            .key(&self.keys.rate)
            .key(&self.keys.rate_period)
            .arg(period.as_micros().max(1) as u64)
            .arg(burst.max(1))
            .arg(count.max(1))
            .arg(CATCH_UP.as_micros() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Reserved { first, now })
    }
}
