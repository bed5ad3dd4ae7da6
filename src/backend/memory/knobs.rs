//! The embedded knob store.

use async_trait::async_trait;

use super::MemoryQueue;
use crate::backend::events::{knob_changes, ADAPTIVE_ACTOR, UPSTREAM_ACTOR};
use crate::backend::knobs::{KnobStore, Knobs, KnobsPatch, RateStep};
use crate::backend::QueueError;
use crate::ticket::now_ms;

#[async_trait]
impl KnobStore for MemoryQueue {
    async fn knobs(&self) -> Result<Knobs, QueueError> {
        Ok(self.lock().knobs.clone())
    }

    async fn set_knobs(
        &self,
        patch: &KnobsPatch,
        actor: Option<&str>,
    ) -> Result<Knobs, QueueError> {
        let mut s = self.lock();
        let old = s.knobs.clone();
        patch.apply(&mut s.knobs);
        let new = s.knobs.clone();
        if let Some(actor) = actor {
            let now = now_ms();
            if let Some(changes) = knob_changes(&old, &new) {
                let fields = [("actor", actor.to_string()), ("changes", changes)];
                s.events.record("knobs_changed", now, None, &fields);
            }
            if new.sold_out && !old.sold_out {
                let reason = if actor == UPSTREAM_ACTOR {
                    "upstream"
                } else {
                    "operator"
                };
                s.events
                    .record("sold_out", now, None, &[("reason", reason.to_string())]);
            }
            for (product, k) in &new.products {
                if k.sold_out && !old.product_sold_out(product) {
                    let reason = if actor == UPSTREAM_ACTOR {
                        "upstream"
                    } else {
                        "operator"
                    };
                    let fields = [("reason", reason.to_string()), ("product", product.clone())];
                    s.events.record("sold_out", now, None, &fields);
                }
            }
        }
        Ok(new)
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
        let old = s.knobs.clone();
        s.knobs.drain_rate = Some(next);
        s.knobs.version += 1;
        // The rate moved from the one in force, configured or not.
        let from = Knobs {
            drain_rate: Some(current),
            ..old
        };
        if let Some(changes) = knob_changes(&from, &s.knobs.clone()) {
            let fields = [("actor", ADAPTIVE_ACTOR.to_string()), ("changes", changes)];
            s.events.record("knobs_changed", now_ms(), None, &fields);
        }
        Ok(Some(s.knobs.clone()))
    }
}
