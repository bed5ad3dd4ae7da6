//! Tickets: their ids, their states and how they are shown to clients.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::headers;

const RANDOM_BYTES: usize = 16;
const TAG_BYTES: usize = 4;
const ENCODED_LEN: usize = 27; // base64url of 20 bytes, unpadded

/// A ticket id: 128 bits from the OS CSPRNG followed by a 32-bit tag of the
/// queue name, base64url-encoded. The tag lets any instance find the queue
/// of a ticket without a lookup; it carries no secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TicketId(String);

/// The 32-bit tag that ties ticket ids to a queue name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueTag([u8; TAG_BYTES]);

impl QueueTag {
    pub fn of(queue: &str) -> Self {
        let digest = Sha256::digest(queue.as_bytes());
        let mut tag = [0; TAG_BYTES];
        tag.copy_from_slice(&digest[..TAG_BYTES]);
        QueueTag(tag)
    }
}

impl TicketId {
    /// A fresh id for a ticket of the queue with this tag.
    pub fn generate(tag: QueueTag) -> Self {
        let mut raw = [0u8; RANDOM_BYTES + TAG_BYTES];
        // The OS CSPRNG only fails on a broken system; there is no safe
        // fallback for a secret, so that is a fatal error.
        getrandom::fill(&mut raw[..RANDOM_BYTES]).expect("OS random number generator failed");
        raw[RANDOM_BYTES..].copy_from_slice(&tag.0);
        TicketId(URL_SAFE_NO_PAD.encode(raw))
    }

    /// Parses a client-supplied id; anything but a canonical encoding is `None`.
    pub fn parse(s: &str) -> Option<(Self, QueueTag)> {
        if s.len() != ENCODED_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
        let tag: [u8; TAG_BYTES] = raw.get(RANDOM_BYTES..)?.try_into().ok()?;
        Some((TicketId(s.to_string()), QueueTag(tag)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TicketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a ticket is in its life. Terminal states are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Queued,
    InFlight,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl TicketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::Queued => "queued",
            TicketStatus::InFlight => "in_flight",
            TicketStatus::Completed => "completed",
            TicketStatus::Failed => "failed",
            TicketStatus::Cancelled => "cancelled",
            TicketStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => TicketStatus::Queued,
            "in_flight" => TicketStatus::InFlight,
            "completed" => TicketStatus::Completed,
            "failed" => TicketStatus::Failed,
            "cancelled" => TicketStatus::Cancelled,
            "expired" => TicketStatus::Expired,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, TicketStatus::Queued | TicketStatus::InFlight)
    }
}

/// The upstream's final answer, as stored on the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// End-to-end headers in the wire encoding of [`headers::encode`].
    pub headers: Bytes,
    pub body: Bytes,
}

/// Why a ticket failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TicketError {
    pub code: String,
    pub detail: String,
}

/// A ticket's state as kept by the queue backend.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketRecord {
    pub status: TicketStatus,
    /// 1-based admission sequence number within the queue.
    pub seq: u64,
    pub attempts: u32,
    pub admitted_at_ms: u64,
    pub completed_at_ms: Option<u64>,
    pub response: Option<StoredResponse>,
    pub error: Option<TicketError>,
}

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

/// The JSON body of an admission answer (202, or 200 for a replay).
#[derive(Debug, Serialize)]
pub struct AdmissionView<'a> {
    pub ticket: &'a str,
    pub queue: &'a str,
    pub status: TicketStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    pub poll_url: String,
}

/// The JSON body of `GET /tickets/{id}`.
#[derive(Debug, Serialize)]
pub struct TicketView<'a> {
    pub ticket: &'a str,
    pub queue: &'a str,
    pub status: TicketStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
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

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_url_safe_unique_and_tagged() {
        let tag = QueueTag::of("checkout");
        let a = TicketId::generate(tag);
        let b = TicketId::generate(tag);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), ENCODED_LEN);
        assert!(a
            .as_str()
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(TicketId::parse(a.as_str()), Some((a.clone(), tag)));
        assert_ne!(
            TicketId::parse(a.as_str()).unwrap().1,
            QueueTag::of("other")
        );
    }

    #[test]
    fn malformed_ids_do_not_parse() {
        let good = TicketId::generate(QueueTag::of("q"));
        let s = good.as_str();
        assert!(TicketId::parse(&s[1..]).is_none());
        assert!(TicketId::parse(&format!("{s}A")).is_none());
        assert!(TicketId::parse(&s.replace(|_| true, "+")).is_none());
        assert!(TicketId::parse("").is_none());
        assert!(TicketId::parse("../../../../etc/passwd?xxxxxx").is_none());
    }

    #[test]
    fn position_counts_tickets_ahead() {
        assert_eq!(position(1, 0), 0);
        assert_eq!(position(43, 0), 42);
        assert_eq!(position(43, 40), 2);
        assert_eq!(position(5, 9), 0);
        assert_eq!(eta_seconds(42, 100.0), 0.42);
        assert_eq!(retry_after(0.0), 1);
        assert_eq!(retry_after(2.1), 3);
    }

    #[test]
    fn binary_bodies_are_base64() {
        let r = StoredResponse {
            status: 201,
            headers: headers::encode_pairs([("content-type", b"application/json".as_slice())]),
            body: Bytes::from_static(&[0xff, 0x00]),
        };
        let v = ResponseView::new(&r);
        assert_eq!(v.body_encoding, "base64");
        assert_eq!(v.body, "/wA=");
        assert_eq!(v.headers["content-type"], "application/json");
    }
}
