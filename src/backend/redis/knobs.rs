//! The Redis knob store: the knobs hash (`KnobField`), patched by
//! `KNOBS_LUA` (which records who changed what), and `ADAPT_LUA` for the
//! adaptive rate.

use std::collections::HashMap;

use async_trait::async_trait;

use super::schema::KnobField;
use super::{reply, unavailable, RedisQueue};
use crate::backend::events::UPSTREAM_ACTOR;
use crate::backend::knobs::{KnobStore, Knobs, KnobsPatch, RateStep};
use crate::backend::QueueError;
use crate::ticket::now_ms;

#[async_trait]
impl KnobStore for RedisQueue {
    async fn knobs(&self) -> Result<Knobs, QueueError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.keys.knobs)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(reply::knobs(&fields))
    }

    async fn set_knobs(
        &self,
        patch: &KnobsPatch,
        actor: Option<&str>,
    ) -> Result<Knobs, QueueError> {
        // Field and value pairs; '' deletes the field (back to as configured).
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(r) = patch.drain_rate {
            fields.push((
                KnobField::DRAIN_RATE,
                r.map(|r| r.to_string()).unwrap_or_default(),
            ));
        }
        if let Some(p) = patch.paused {
            fields.push((KnobField::PAUSED, flag(p)));
        }
        if let Some(s) = patch.stock {
            fields.push((
                KnobField::STOCK,
                s.map(|s| s.to_string()).unwrap_or_default(),
            ));
        }
        if let Some(o) = patch.open {
            fields.push((KnobField::OPEN, o.map(flag).unwrap_or_default()));
        }
        if let Some(s) = patch.sold_out {
            fields.push((KnobField::SOLD_OUT, flag(s)));
        }
        if let Some(d) = patch.pow_difficulty {
            fields.push((
                KnobField::POW_DIFFICULTY,
                d.map(|d| d.to_string()).unwrap_or_default(),
            ));
        }
        // A product's knobs: `stock:<p>`, `sold_out:<p>` (unset when false).
        let mut named: Vec<(String, String)> = Vec::new();
        for (p, change) in &patch.products {
            if let Some(s) = change.stock {
                let value = s.map(|s| s.to_string()).unwrap_or_default();
                named.push((format!("{}{p}", KnobField::STOCK_PREFIX), value));
            }
            if let Some((units, configured)) = change.add {
                // KNOBS_LUA adds to the stored value, or to the configured one.
                let value = format!("+{units}:{configured}");
                named.push((format!("{}{p}", KnobField::STOCK_PREFIX), value));
            }
            if let Some(s) = change.sold_out {
                let value = if s { "1" } else { "" };
                named.push((format!("{}{p}", KnobField::SOLD_OUT_PREFIX), value.into()));
            }
        }
        let reason = match actor {
            Some(UPSTREAM_ACTOR) => "upstream",
            _ => "operator",
        };
        let (queue, min_id) = self.event_args();
        let mut call = self.knobs_script.key(&self.keys.knobs);
        call.key(&self.keys.events)
            .arg(actor.unwrap_or(""))
            .arg(reason)
            .arg(queue)
            .arg(min_id)
            .arg(now_ms());
        for (name, value) in &fields {
            call.arg(*name).arg(value);
        }
        for (name, value) in &named {
            call.arg(name).arg(value);
        }
        let mut conn = self.conn.clone();
        let flat: Vec<String> = call.invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(reply::knobs(&pairs(flat)))
    }

    async fn adapt_rate(&self, step: &RateStep) -> Result<Option<Knobs>, QueueError> {
        let (mul, add) = step.terms();
        let mut conn = self.conn.clone();
        let (queue, min_id) = self.event_args();
        // ADAPT_LUA answers HGETALL's flat list, or nil when no step was taken.
        let fields: Option<Vec<String>> = self
            .adapt_script
            .key(&self.keys.knobs)
            .key(&self.keys.events)
            .arg(if step.down { "1" } else { "0" })
            .arg(mul)
            .arg(add)
            .arg(step.floor)
            .arg(step.ceiling)
            .arg(step.configured)
            .arg(RateStep::SPACING.as_millis() as u64)
            .arg(queue)
            .arg(min_id)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(fields.map(|f| reply::knobs(&pairs(f))))
    }
}

/// HGETALL's flat list as a map.
fn pairs(flat: Vec<String>) -> HashMap<String, String> {
    let mut out = HashMap::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.insert(k, v);
    }
    out
}
