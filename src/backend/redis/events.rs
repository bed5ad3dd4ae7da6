//! The Redis event log: the `events` stream (`EventField`), written by the
//! scripts and transactions that make each change, read here with `XRANGE`
//! and waited on with `XREAD BLOCK`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamRangeReply;

use super::conn::Conn;
use super::{reply, unavailable, RedisQueue, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::backend::events::{Event, EventId, EventLog, EventPage, EventQuery, SCAN_BUDGET};
use crate::backend::QueueError;

/// Entries read per `XRANGE` while a type filter skips some.
const RANGE: usize = 500;

#[async_trait]
impl EventLog for RedisQueue {
    async fn events(&self, query: &EventQuery) -> Result<EventPage, QueueError> {
        let limit = query.limit.max(1);
        let mut next = EventId::start_of(query)?;
        let mut events = Vec::new();
        let mut scanned = 0;
        let mut conn = self.conn.clone();
        'pages: while scanned < SCAN_BUDGET {
            let count = if query.types.is_empty() {
                limit - events.len()
            } else {
                RANGE
            };
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.keys.events)
                .arg(format!("({next}"))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let got = page.ids.len();
            for entry in page.ids {
                scanned += 1;
                next = EventId::parse(&entry.id)
                    .ok_or_else(|| QueueError::Protocol(format!("event id `{}`", entry.id)))?;
                let flat: BTreeMap<String, String> = entry
                    .map
                    .iter()
                    .map(|(k, v)| (k.clone(), reply::as_string(v)))
                    .collect();
                let Some(event) = Event::from_fields(entry.id, flat) else {
                    continue;
                };
                if query.wants(&event.kind) {
                    events.push(event);
                    if events.len() == limit {
                        break 'pages;
                    }
                }
            }
            if got < count {
                break;
            }
        }
        Ok(EventPage {
            events,
            next: next.to_string(),
        })
    }

    async fn await_events(&self, cursor: &str, wait: Duration) -> Result<(), QueueError> {
        let cursor = EventId::parse(cursor)
            .ok_or_else(|| QueueError::Protocol(format!("bad event cursor `{cursor}`")))?;
        // A blocked read holds its connection: one of its own per wait,
        // with a response timeout above the block.
        let mut conn = Conn::open(&self.endpoint, CONNECT_TIMEOUT, wait + RESPONSE_TIMEOUT)?;
        let block = wait.as_millis().max(1) as u64;
        redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(&self.keys.events)
            .arg(cursor.to_string())
            .query_async::<redis::Value>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
