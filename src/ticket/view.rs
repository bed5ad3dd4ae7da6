//! How a ticket is shown to its client: its place in line, the wait
//! estimate, when to poll again, and the JSON views of the API.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;

use super::{StoredResponse, TicketError, TicketStatus};
use crate::http::headers;

/// Tickets ahead of the ticket with sequence number `seq`, given how many of
/// the queue's tickets have been dispatched: admission and dispatch are both
/// in stream order, so this is exact without scanning the stream.
pub fn position(seq: u64, dispatched: u64) -> u64 {
    seq.saturating_sub(1).saturating_sub(dispatched)
}

/// Expected seconds before dispatch for a ticket with `position` tickets ahead.
pub fn eta_seconds(position: u64, drain_rate: f64) -> f64 {
    let eta = position as f64 / drain_rate;
    (eta * 1000.0).round() / 1000.0
}

/// Whole seconds a client should wait before polling again: scaled to its
/// wait, so a hundred thousand waiting clients do not poll every second,
/// and bounded so none waits much past its turn.
pub fn retry_after(eta_seconds: f64) -> u64 {
    (eta_seconds.ceil() as u64).clamp(1, 30)
}

/// A `Retry-After` header of `secs` seconds. The values [`retry_after`]
/// gives (1–30) are static strings: `HeaderValue::from(u64)` formats and
/// allocates, ~500 instructions an answer.
pub fn retry_after_value(secs: u64) -> http::HeaderValue {
    const SECS: [&str; 31] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30",
    ];
    match SECS.get(secs as usize) {
        Some(s) => http::HeaderValue::from_static(s),
        None => http::HeaderValue::from(secs),
    }
}

/// Seconds a client of a ticket in a paused queue waits before polling
/// again: the pause has no known end, so the longest regular interval.
pub const PAUSED_RETRY_AFTER: u64 = 30;

/// The JSON body of an admission answer (202, or 200 for a replay).
#[derive(Debug, Serialize)]
pub struct AdmissionView<'a> {
    pub ticket: &'a str,
    pub queue: &'a str,
    pub status: TicketStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// `Some(None)` (JSON `null`) while the queue is paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<Option<f64>>,
    /// `true` while queued in a paused queue; absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    pub poll_url: &'a str,
}

impl AdmissionView<'_> {
    /// The JSON body: the bytes `serde_json::to_vec` makes of this view
    /// (a test holds the two equal), written directly. serde_json escapes
    /// every key and value byte by byte; here the keys are constants and a
    /// value is copied whole when it needs no escape, as ticket ids never
    /// do (one answer per admission: ~2,000 instructions less).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"ticket\":");
        json_str(&mut out, self.ticket);
        out.extend_from_slice(b",\"queue\":");
        json_str(&mut out, self.queue);
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b'"');
        if let Some(position) = self.position {
            out.extend_from_slice(b",\"position\":");
            json_value(&mut out, &position);
        }
        if let Some(eta) = self.eta_seconds {
            out.extend_from_slice(b",\"eta_seconds\":");
            json_value(&mut out, &eta);
        }
        if self.paused {
            out.extend_from_slice(b",\"paused\":true");
        }
        out.extend_from_slice(b",\"poll_url\":");
        json_str(&mut out, self.poll_url);
        out.push(b'}');
        out
    }
}

/// `s` as a JSON string: copied between quotes when no byte needs an
/// escape, else serde_json's escaping.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let plain = s
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        json_value(out, s);
    }
}

/// A value as serde_json writes it (numbers, `null`, escaped strings).
fn json_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing to a Vec fails only for values serde cannot represent,
    // which these are not.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// The JSON body of `GET /tickets/{id}`.
#[derive(Debug, Serialize)]
pub struct TicketView<'a> {
    pub ticket: &'a str,
    pub queue: &'a str,
    pub status: TicketStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Only while queued: `Some(None)` (JSON `null`) while the queue is
    /// paused, when no wait can be estimated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<Option<f64>>,
    /// `true` while the ticket is queued in a paused queue; absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// While queued before the sale opens: when it opens (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<String>,
    pub attempts: u32,
    pub admitted_at: String,
    pub completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a TicketError>,
}

/// The upstream's answer as shown in a ticket.
#[derive(Debug, Serialize)]
pub struct ResponseView {
    pub status: u16,
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub body: String,
    pub body_encoding: &'static str,
}

impl ResponseView {
    pub fn new(r: &StoredResponse) -> Self {
        let mut map = serde_json::Map::new();
        for (name, value) in headers::decode(&r.headers) {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            // Repeated headers are joined as RFC 9110 §5.3 allows.
            match map.get_mut(name.as_str()) {
                Some(serde_json::Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&value);
                }
                _ => {
                    map.insert(name.to_string(), value.into());
                }
            }
        }
        let (body, body_encoding) = match std::str::from_utf8(&r.body) {
            Ok(text) => (text.to_string(), "utf8"),
            Err(_) => (STANDARD.encode(&r.body), "base64"),
        };
        ResponseView {
            status: r.status,
            headers: map,
            body,
            body_encoding,
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-27T12:00:00.000Z`.
pub fn format_time_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds since the Unix epoch on the system clock (the backends'
/// timestamps; the verbs and the drain read their queue's [`Clock`]).
///
/// [`Clock`]: crate::clock::Clock
pub fn now_ms() -> u64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_ms()
}

/// Where a queued ticket stands.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// Tickets ahead; `None` while pre-queued (its place is drawn at opening).
    pub position: Option<u64>,
    /// Time until the sale opens, while it has not: nothing is dispatched
    /// before then.
    pub opens_in: Option<Duration>,
}

impl Place {
    /// From a sequence number (0 = pre-queued, not yet placed).
    pub fn of(seq: u64, dispatched: u64, opens_in: Option<Duration>) -> Self {
        Place {
            position: (seq > 0).then(|| position(seq, dispatched)),
            opens_in,
        }
    }

    /// Expected seconds before dispatch: to the opening, if the sale has
    /// not opened, then through the line ahead.
    pub fn eta_seconds(self, rate: f64) -> f64 {
        let opening = self.opens_in.map_or(0.0, |d| d.as_secs_f64());
        let line = self.position.map_or(0.0, |p| p as f64 / rate);
        ((opening + line) * 1000.0).round() / 1000.0
    }
}
