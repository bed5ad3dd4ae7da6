//! The Redis knob store: the knobs hash (`KnobField`), patched in one
//! transaction, and `ADAPT_LUA` for the adaptive rate.

use std::collections::HashMap;

use async_trait::async_trait;

use super::schema::KnobField;
use super::{reply, unavailable, RedisQueue};
use crate::backend::knobs::{KnobStore, Knobs, KnobsPatch, RateStep};
use crate::backend::QueueError;

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

    async fn set_knobs(&self, patch: &KnobsPatch) -> Result<Knobs, QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let key = &self.keys.knobs;
        let flag = |b: bool| if b { "1" } else { "0" };
        match patch.drain_rate {
            Some(Some(r)) => pipe
                .hset(key, KnobField::DRAIN_RATE, r.to_string())
                .ignore(),
            Some(None) => pipe.hdel(key, KnobField::DRAIN_RATE).ignore(),
            None => &mut pipe,
        };
        if let Some(p) = patch.paused {
            pipe.hset(key, KnobField::PAUSED, flag(p)).ignore();
        }
        match patch.stock {
            Some(Some(s)) => pipe.hset(key, KnobField::STOCK, s).ignore(),
            Some(None) => pipe.hdel(key, KnobField::STOCK).ignore(),
            None => &mut pipe,
        };
        match patch.open {
            Some(Some(o)) => pipe.hset(key, KnobField::OPEN, flag(o)).ignore(),
            Some(None) => pipe.hdel(key, KnobField::OPEN).ignore(),
            None => &mut pipe,
        };
        if let Some(s) = patch.sold_out {
            pipe.hset(key, KnobField::SOLD_OUT, flag(s)).ignore();
        }
        pipe.hincr(key, KnobField::VERSION, 1).ignore();
        pipe.cmd("HGETALL").arg(key);
        let mut conn = self.conn.clone();
        let (fields,): (HashMap<String, String>,) =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(reply::knobs(&fields))
    }

    async fn adapt_rate(&self, step: &RateStep) -> Result<Option<Knobs>, QueueError> {
        let (mul, add) = step.terms();
        let mut conn = self.conn.clone();
        // ADAPT_LUA answers HGETALL's flat list, or nil when no step was taken.
        let fields: Option<Vec<String>> = self
            .adapt_script
            .key(&self.keys.knobs)
            .arg(if step.down { "1" } else { "0" })
            .arg(mul)
            .arg(add)
            .arg(step.floor)
            .arg(step.ceiling)
            .arg(step.configured)
            .arg(RateStep::SPACING.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(fields.map(|f| {
            let map: HashMap<String, String> = f
                .chunks_exact(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect();
            reply::knobs(&map)
        }))
    }
}
