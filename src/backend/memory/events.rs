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
    log: VecDeque<Stored>,
    ids: VecDeque<EventId>,
    last: EventId,
    /// Wakes the readers waiting for the next event.
    pub written: Arc<Notify>,
}

/// One event as kept: what the log does not know already (its id is
/// beside it in `ids`, the queue and the version in `settings`), in as few
/// allocations as it needs — an [`Event`] costs about a kilobyte (a
/// `BTreeMap` leaf alone is ~550 bytes), and a sale writes two per
/// delivered ticket, up to [`MAX_EVENTS`]. Read back as an `Event`.
struct Stored {
    kind: &'static str,
    ticket: Option<TicketId>,
    at: u64,
    fields: Box<[(&'static str, Box<str>)]>,
}

impl Stored {
    fn event(&self, id: EventId, queue: &str) -> Event {
        Event {
            id: id.text(),
            kind: self.kind.into(),
            v: EVENTS_VERSION.into(),
            queue: queue.into(),
            ticket: self.ticket.as_ref().map(|t| t.as_str().to_string()),
            at: self.at,
            fields: (self.fields.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }
}

impl EventBuf {
    /// Writes one event (when events are on); `fields` are the type's own.
    pub fn record(
        &mut self,
        kind: &'static str,
        at: u64,
        ticket: Option<&TicketId>,
        fields: &[(&'static str, String)],
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
        self.log.push_back(Stored {
            kind,
            ticket: ticket.cloned(),
            at,
            fields: (fields.iter())
                .map(|(k, v)| (*k, v.as_str().into()))
                .collect(),
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
        let queue = self.settings.as_ref().map_or("", |s| s.queue.as_str());
        for (id, event) in self.ids.iter().zip(&self.log).skip(from).take(SCAN_BUDGET) {
            next = *id;
            if query.wants(event.kind) {
                events.push(event.event(*id, queue));
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
