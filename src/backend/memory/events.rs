//! The embedded event log: a buffer in the queue's state, written under the
//! same lock as the change each event reports, bounded by the retention and
//! by [`MAX_EVENTS`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::MemoryQueue;
use crate::backend::events::{
    Event, EventId, EventLog, EventPage, EventQuery, EventSettings, EVENTS_VERSION, SCAN_BUDGET,
};
use crate::backend::QueueError;
use crate::ticket::{now_ms, TicketId};

/// Events kept at most, whatever the retention: the log lives in this
/// process's memory.
pub const MAX_EVENTS: usize = 100_000;

/// The events of one embedded queue.
#[derive(Default)]
pub(super) struct EventBuf {
    /// `None`: events are off.
    pub settings: Option<EventSettings>,
    log: VecDeque<Event>,
    ids: VecDeque<EventId>,
    last: EventId,
    /// Wakes the readers waiting for the next event.
    pub written: Arc<Notify>,
}

impl EventBuf {
    /// Writes one event (when events are on); `fields` are the type's own.
    pub fn record(
        &mut self,
        kind: &str,
        at: u64,
        ticket: Option<&TicketId>,
        fields: &[(&str, String)],
    ) {
        let Some(settings) = &self.settings else {
            return;
        };
        let now = now_ms();
        // Like an `XADD *` id: the time, made to grow.
        let id = if now > self.last.ms {
            EventId { ms: now, seq: 0 }
        } else {
            EventId {
                ms: self.last.ms,
                seq: self.last.seq + 1,
            }
        };
        self.last = id;
        let min = settings.min_ms(now);
        while self.ids.front().is_some_and(|i| i.ms < min) || self.ids.len() >= MAX_EVENTS {
            self.ids.pop_front();
            self.log.pop_front();
        }
        self.log.push_back(Event {
            id: id.text(),
            kind: kind.into(),
            v: EVENTS_VERSION.into(),
            queue: settings.queue.clone(),
            ticket: ticket.map(|t| t.as_str().to_string()),
            at,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        });
        self.ids.push_back(id);
        self.written.notify_waiters();
    }

    fn page(&self, query: &EventQuery) -> Result<EventPage, QueueError> {
        let start = EventId::start_of(query)?;
        let from = self.ids.partition_point(|id| *id <= start);
        let limit = query.limit.max(1);
        let mut next = start;
        let mut events = Vec::new();
        for (id, event) in self.ids.iter().zip(&self.log).skip(from).take(SCAN_BUDGET) {
            next = *id;
            if query.wants(&event.kind) {
                events.push(event.clone());
                if events.len() == limit {
                    break;
                }
            }
        }
        Ok(EventPage {
            events,
            next: next.to_string(),
        })
    }
}

#[async_trait]
impl EventLog for MemoryQueue {
    async fn events(&self, query: &EventQuery) -> Result<EventPage, QueueError> {
        self.lock().events.page(query)
    }

    async fn await_events(&self, cursor: &str, wait: Duration) -> Result<(), QueueError> {
        let cursor = EventId::parse(cursor)
            .ok_or_else(|| QueueError::Protocol(format!("bad event cursor `{cursor}`")))?;
        let written = self.lock().events.written.clone();
        let woken = written.notified();
        tokio::pin!(woken);
        // Registered before looking, so an event written in between wakes it.
        woken.as_mut().enable();
        if self.lock().events.last > cursor {
            return Ok(());
        }
        let _ = tokio::time::timeout(wait, woken).await;
        Ok(())
    }
}
