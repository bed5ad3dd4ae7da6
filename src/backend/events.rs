//! The event log: one entry per change in a queue's life — a ticket
//! admitted, dispatched, completed, failed, cancelled or found expired, the
//! sale sold out, a knob turned, a dead letter replayed or discarded — written in the same atomic step as the
//! change it reports, for other services to follow (the `events` key,
//! documented entry by entry in `redis/schema.rs`).
//!
//! Readers page through it with a cursor and may wait for what comes next;
//! [`read_events`] does both.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::knobs::Knobs;
use super::QueueError;

/// The `v` of every event: bumped when a field changes meaning or goes.
pub const EVENTS_VERSION: &str = "1";

/// The event types, as written in the `type` field.
pub const EVENT_TYPES: [&str; 10] = [
    "admitted",
    "dispatched",
    "completed",
    "failed",
    "cancelled",
    "expired",
    "sold_out",
    "knobs_changed",
    "replayed",
    "discarded",
];

/// Who turned the knobs: the `actor` of `knobs_changed` events written for
/// the drain when the upstream says sold out (the `sold_out` event's reason
/// is then `upstream`; any other actor's is `operator`).
pub const UPSTREAM_ACTOR: &str = "upstream";
/// The `actor` of the adaptive drain's steps.
pub const ADAPTIVE_ACTOR: &str = "adaptive";

/// Whether a queue writes events, and how long it keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSettings {
    /// The `queue` field of every event.
    pub queue: String,
    /// Events older than this are trimmed as new ones are written.
    pub retention: Duration,
}

impl EventSettings {
    /// The oldest event time kept when writing at `now_ms`: the `MINID`
    /// threshold (ms since the epoch).
    pub fn min_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.retention.as_millis() as u64)
    }
}

/// One event as read back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Its place in the log: a stream id `<ms>-<seq>` (for a partitioned
    /// queue `<partition>:<ms>-<seq>`).
    pub id: String,
    /// One of [`EVENT_TYPES`].
    #[serde(rename = "type")]
    pub kind: String,
    pub v: String,
    pub queue: String,
    /// The ticket, for ticket events.
    pub ticket: Option<String>,
    /// When it happened, ms since the epoch.
    pub at: u64,
    /// The type's own fields (`attempt`, `status`, `code`, `detail`,
    /// `reason`, `actor`, `changes`, `dead_letter`).
    pub fields: BTreeMap<String, String>,
}

impl Event {
    /// An event from its flat fields as stored; `None` without a type.
    pub fn from_fields(id: String, mut flat: BTreeMap<String, String>) -> Option<Event> {
        let kind = flat.remove("type")?;
        Some(Event {
            id,
            kind,
            v: flat.remove("v").unwrap_or_default(),
            queue: flat.remove("queue").unwrap_or_default(),
            ticket: flat.remove("ticket"),
            at: flat.remove("at").and_then(|a| a.parse().ok()).unwrap_or(0),
            fields: flat,
        })
    }
}

/// What to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// A `next` cursor from an earlier page: read after it. Wins over `since_ms`.
    pub after: Option<String>,
    /// Read events from this time on (ms since the epoch); neither: from the
    /// oldest kept.
    pub since_ms: Option<u64>,
    /// Only these types; empty: every type.
    pub types: Vec<String>,
    /// At most this many events (at least 1).
    pub limit: usize,
}

impl EventQuery {
    pub fn wants(&self, kind: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == kind)
    }
}

/// One page of events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Where the next read goes on from (as `after`), also when no event
    /// matched: past the entries looked at.
    pub next: String,
}

/// Entries looked at for one page at most when a type filter skips most
/// of them: a page may come back short (even empty) with `next` past them.
pub const SCAN_BUDGET: usize = 10_000;

/// The events of one queue.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Called for `GET /admin/queues/{q}/events`: the events after the
    /// query's start, oldest first, without waiting.
    async fn events(&self, query: &EventQuery) -> Result<EventPage, QueueError>;

    /// Called when a reader waits: returns once an event was written after
    /// the `cursor` of a page (at once if one is there), or after `wait`.
    async fn await_events(&self, cursor: &str, wait: Duration) -> Result<(), QueueError>;
}

/// A page of events, waiting up to `wait` for one when none is there yet
/// (a long poll): events of other types wake the wait but are skipped.
pub async fn read_events(
    log: &dyn EventLog,
    mut query: EventQuery,
    wait: Duration,
) -> Result<EventPage, QueueError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let page = log.events(&query).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !page.events.is_empty() || left.is_zero() {
            return Ok(page);
        }
        log.await_events(&page.next, left).await?;
        query.after = Some(page.next);
        query.since_ms = None;
    }
}

/// A stream id, `<ms>-<seq>`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    pub fn parse(s: &str) -> Option<EventId> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(EventId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// Where a query starts: read after this id (`0-0` = from the oldest).
    pub fn start_of(query: &EventQuery) -> Result<EventId, QueueError> {
        if let Some(after) = &query.after {
            return EventId::parse(after)
                .ok_or_else(|| QueueError::Protocol(format!("bad event cursor `{after}`")));
        }
        Ok(match query.since_ms {
            // Just before the first id of that millisecond.
            Some(ms) if ms > 0 => EventId {
                ms: ms - 1,
                seq: u64::MAX,
            },
            _ => EventId::default(),
        })
    }
}

impl EventId {
    /// What `Display` writes, `<ms>-<seq>`, without the formatting
    /// machinery: the embedded queue names every admission's event this
    /// way (`to_string` took ~1,100 instructions of it).
    pub fn text(&self) -> String {
        let mut digits = itoa::Buffer::new();
        let mut out = String::with_capacity(24);
        out.push_str(digits.format(self.ms));
        out.push('-');
        out.push_str(digits.format(self.seq));
        out
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The `changes` of a `knobs_changed` event: each knob whose value differs,
/// `{"drain_rate":{"old":null,"new":40}}` (`null`: as configured). The
/// Redis backend builds the same object in `KNOBS_LUA`.
pub fn knob_changes(old: &Knobs, new: &Knobs) -> Option<String> {
    let out: serde_json::Map<String, serde_json::Value> = knob_moves(old, new)
        .into_iter()
        .map(|(name, a, b)| (name, serde_json::json!({"old": a, "new": b})))
        .collect();
    (!out.is_empty()).then(|| serde_json::Value::Object(out).to_string())
}

/// Each knob whose stored value differs between `old` and `new`: its name,
/// old and new value as JSON (`null` = as configured), in a fixed order;
/// then a fair sale's products' knobs (`stock:<p>`, `sold_out:<p>`), as
/// `KNOBS_LUA` names them.
pub fn knob_moves(old: &Knobs, new: &Knobs) -> Vec<(String, serde_json::Value, serde_json::Value)> {
    use serde_json::{json, Value};
    // Whole rates as integers, as Redis's `cjson` writes them.
    let rate = |r: Option<f64>| match r {
        Some(r) if r.fract() == 0.0 && r.abs() < 1e15 => json!(r as i64),
        other => json!(other),
    };
    let mut out = Vec::new();
    let mut put = |name: &str, a: Value, b: Value| {
        if a != b {
            out.push((name.to_string(), a, b));
        }
    };
    put("drain_rate", rate(old.drain_rate), rate(new.drain_rate));
    put("paused", json!(old.paused), json!(new.paused));
    put("stock", json!(old.stock), json!(new.stock));
    put("open", json!(old.open), json!(new.open));
    put("sold_out", json!(old.sold_out), json!(new.sold_out));
    put(
        "pow_difficulty",
        json!(old.pow_difficulty),
        json!(new.pow_difficulty),
    );
    let products = (old.products.keys()).chain(
        new.products
            .keys()
            .filter(|p| !old.products.contains_key(*p)),
    );
    for p in products.collect::<Vec<_>>() {
        let (a, b) = (old.products.get(p), new.products.get(p));
        put(
            &format!("stock:{p}"),
            json!(a.and_then(|k| k.stock)),
            json!(b.and_then(|k| k.stock)),
        );
        put(
            &format!("sold_out:{p}"),
            json!(a.is_some_and(|k| k.sold_out)),
            json!(b.is_some_and(|k| k.sold_out)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ids_text_is_what_display_writes() {
        for (ms, seq) in [
            (0, 0),
            (9, 10),
            (1_764_547_200_123, 7),
            (u64::MAX, u64::MAX),
        ] {
            let id = EventId { ms, seq };
            assert_eq!(id.text(), id.to_string());
        }
    }

    #[test]
    fn ids_order_and_queries_start_where_asked() {
        assert!(EventId::parse("5-1").unwrap() > EventId::parse("4-9").unwrap());
        assert_eq!(EventId::parse("7"), Some(EventId { ms: 7, seq: 0 }));
        assert_eq!(EventId::parse("x-1"), None);
        let since = EventQuery {
            since_ms: Some(10),
            ..EventQuery::default()
        };
        let start = EventId::start_of(&since).unwrap();
        assert!(start < EventId { ms: 10, seq: 0 } && start > EventId { ms: 9, seq: 5 });
        let after = EventQuery {
            after: Some("3-4".into()),
            since_ms: Some(10),
            ..EventQuery::default()
        };
        assert_eq!(
            EventId::start_of(&after).unwrap(),
            EventId { ms: 3, seq: 4 }
        );
    }

    #[test]
    fn knob_changes_name_what_moved() {
        let old = Knobs::default();
        let new = Knobs {
            drain_rate: Some(40.0),
            ..Knobs::default()
        };
        assert_eq!(
            knob_changes(&old, &new).unwrap(),
            r#"{"drain_rate":{"new":40,"old":null}}"#
        );
        assert_eq!(knob_changes(&new, &new), None);
    }
}
