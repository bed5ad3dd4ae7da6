//! The embedded knob store.

use async_trait::async_trait;

use super::MemoryQueue;
use crate::backend::knobs::{KnobStore, Knobs, KnobsPatch, RateStep};
use crate::backend::QueueError;

#[async_trait]
impl KnobStore for MemoryQueue {
    async fn knobs(&self) -> Result<Knobs, QueueError> {
        Ok(self.lock().knobs.clone())
    }

    async fn set_knobs(&self, patch: &KnobsPatch) -> Result<Knobs, QueueError> {
        let mut s = self.lock();
        patch.apply(&mut s.knobs);
        Ok(s.knobs.clone())
    }

    async fn adapt_rate(&self, step: &RateStep) -> Result<Option<Knobs>, QueueError> {
        let now = tokio::time::Instant::now();
        let mut s = self.lock();
        let last = if step.down { s.decreased } else { s.adapted };
        if last.is_some_and(|t| now < t + RateStep::SPACING) {
            return Ok(None);
        }
        let current = s.knobs.drain_rate.unwrap_or(step.configured);
        let next = step.apply(current);
        if next == current {
            return Ok(None);
        }
        s.adapted = Some(now);
        if step.down {
            s.decreased = Some(now);
        }
        s.knobs.drain_rate = Some(next);
        s.knobs.version += 1;
        Ok(Some(s.knobs.clone()))
    }
}
