//! The Redis ticket store: a hash per ticket (`TicketField`), read whole,
//! and `CANCEL_LUA`.

use std::collections::HashMap;

use async_trait::async_trait;

use super::reply::parse_ticket;
use super::schema::CounterField;
use super::{unavailable, RedisQueue};
use crate::backend::{Cancel, QueueError, TicketStore};
use crate::ticket::{now_ms, TicketId, TicketRecord, TicketStatus};

#[async_trait]
impl TicketStore for RedisQueue {
    async fn ticket(&self, id: &TicketId) -> Result<Option<(TicketRecord, u64)>, QueueError> {
        let mut conn = self.conn.clone();
        let (fields, dispatched): (HashMap<String, Vec<u8>>, Option<u64>) = redis::pipe()
            .hgetall(self.keys.ticket(id))
            .hget(&self.keys.counters, CounterField::DISPATCHED)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some((parse_ticket(&fields)?, dispatched.unwrap_or(0))))
    }

    async fn cancel(&self, id: &TicketId) -> Result<Cancel, QueueError> {
        let mut conn = self.conn.clone();
        let (queue, min_id) = self.event_args();
        let reply: Vec<String> = self
            .cancel_script
            .key(self.keys.ticket(id))
            .key(&self.keys.events)
            .key(&self.keys.counters)
            .key(&self.keys.quota)
            .arg(now_ms())
            .arg(self.ttl_secs)
            .arg(&self.keys.changes)
            .arg(id.as_str())
            .arg(queue)
            .arg(min_id)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match reply.first().map(String::as_str) {
            Some("missing") => Ok(Cancel::NotFound),
            Some("refused") => {
                let status = reply
                    .get(1)
                    .and_then(|s| TicketStatus::parse(s))
                    .ok_or_else(|| QueueError::Protocol(format!("cancel script said {reply:?}")))?;
                Ok(Cancel::Refused(status))
            }
            Some(word @ ("ok" | "already")) => match self.ticket(id).await? {
                Some((record, dispatched)) if word == "ok" => {
                    Ok(Cancel::Cancelled(record, dispatched))
                }
                Some((record, dispatched)) => Ok(Cancel::AlreadyCancelled(record, dispatched)),
                None => Ok(Cancel::NotFound),
            },
            _ => Err(QueueError::Protocol(format!(
                "cancel script said {reply:?}"
            ))),
        }
    }
}
