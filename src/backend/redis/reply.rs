//! Reading Redis replies into the backend's types: stream entries (parsed
//! by the `redis` crate's `streams` types), ticket and knob hashes, and the
//! plain values of script answers.

use std::collections::HashMap;

use bytes::Bytes;
use redis::streams::StreamId;
use redis::Value;

use super::schema::{EntryField, KnobField, TicketField};
use crate::backend::knobs::Knobs;
use crate::backend::{Delivery, QueueError, QueuedRequest};
use crate::http::headers;
use crate::ticket::{StoredResponse, TicketError, TicketId, TicketRecord, TicketStatus};

pub fn as_string(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A delivery from a stream entry as read back (`XREADGROUP`,
/// `XAUTOCLAIM`). An entry deleted while pending comes back with no fields
/// (`nil`, which the `streams` types read as an empty map): its request
/// is the reason it cannot be sent.
pub fn delivery(entry: StreamId, fresh: bool, partition: u32) -> Delivery {
    let ahead_at_admission = entry.get::<u64>(EntryField::AHEAD);
    let request = if entry.map.is_empty() {
        Err("entry was deleted from the stream while pending".to_string())
    } else {
        parse_entry(&entry.map)
    };
    Delivery {
        entry_id: entry.id,
        fresh,
        request,
        ahead_at_admission,
        partition,
    }
}

pub fn parse_entry(fields: &HashMap<String, Value>) -> Result<QueuedRequest, String> {
    let get = |name: &str| match fields.get(name) {
        Some(Value::BulkString(v)) => Ok(v.as_slice()),
        _ => Err(format!("entry has no field `{name}`")),
    };
    let text = |name: &str| {
        get(name).and_then(|v| {
            std::str::from_utf8(v)
                .map(str::to_string)
                .map_err(|_| format!("entry field `{name}` is not UTF-8"))
        })
    };
    let ticket = TicketId::parse(&text(EntryField::TICKET)?)
        .ok_or("entry has a malformed ticket id")?
        .0;
    Ok(QueuedRequest {
        ticket,
        method: text(EntryField::METHOD)?,
        path: text(EntryField::PATH)?,
        // An entry stored before the JSON form (no `v`) is read as if
        // stored now, so a dead letter copies it in the current form.
        headers: headers::upgrade(Bytes::copy_from_slice(get(EntryField::HEADERS)?)),
        body: Bytes::copy_from_slice(get(EntryField::BODY)?),
        // Absent from entries stored before it was kept; empty: none sent.
        idempotency_key: text(EntryField::IDEMPOTENCY_KEY)
            .ok()
            .filter(|k| !k.is_empty()),
        client: text(EntryField::CLIENT)?,
        forwarded_for: text(EntryField::FORWARDED_FOR)?,
        forwarded_proto: text(EntryField::FORWARDED_PROTO)?,
        admitted_at_ms: text(EntryField::ADMITTED_AT)?
            .parse()
            .map_err(|_| "entry has a malformed admission time")?,
        // Absent from entries without a product, and those stored before.
        product: text(EntryField::PRODUCT).ok().filter(|p| !p.is_empty()),
    })
}

/// The millisecond part of a stream id (`<ms>-<n>`): when it was added.
pub fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// A ticket's hash as `HGETALL` returns it.
pub fn parse_ticket(fields: &HashMap<String, Vec<u8>>) -> Result<TicketRecord, QueueError> {
    let text = |k: &str| fields.get(k).and_then(|v| std::str::from_utf8(v).ok());
    let num = |k: &str| text(k).and_then(|v| v.parse::<u64>().ok());
    let bytes = |k: &str| Bytes::copy_from_slice(fields.get(k).map_or(&[][..], |v| v));
    let status = text(TicketField::STATUS)
        .and_then(TicketStatus::parse)
        .ok_or_else(|| QueueError::Protocol("ticket hash without a status".into()))?;
    let response = match (status, num(TicketField::RESPONSE_STATUS)) {
        (TicketStatus::Completed, Some(code)) => Some(StoredResponse {
            status: code as u16,
            headers: bytes(TicketField::RESPONSE_HEADERS),
            body: bytes(TicketField::RESPONSE_BODY),
        }),
        _ => None,
    };
    let error = match status {
        TicketStatus::Failed => Some(TicketError {
            code: text(TicketField::ERROR_CODE)
                .unwrap_or("failed")
                .to_string(),
            detail: text(TicketField::ERROR_DETAIL)
                .unwrap_or_default()
                .to_string(),
        }),
        _ => None,
    };
    Ok(TicketRecord {
        status,
        seq: num(TicketField::SEQ).unwrap_or(0),
        attempts: num(TicketField::ATTEMPTS).unwrap_or(0) as u32,
        admitted_at_ms: num(TicketField::ADMITTED_AT).unwrap_or(0),
        completed_at_ms: num(TicketField::COMPLETED_AT),
        response,
        error,
    })
}

/// The knobs hash as `set_knobs` and `ADAPT_LUA` store it.
pub fn knobs(fields: &HashMap<String, String>) -> Knobs {
    let flag = |k: &str| fields.get(k).is_some_and(|v| v == "1");
    Knobs {
        drain_rate: fields
            .get(KnobField::DRAIN_RATE)
            .and_then(|v| v.parse().ok()),
        paused: flag(KnobField::PAUSED),
        stock: fields.get(KnobField::STOCK).and_then(|v| v.parse().ok()),
        open: fields.get(KnobField::OPEN).map(|v| v == "1"),
        sold_out: flag(KnobField::SOLD_OUT),
        pow_difficulty: fields
            .get(KnobField::POW_DIFFICULTY)
            .and_then(|v| v.parse().ok()),
        version: fields
            .get(KnobField::VERSION)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        products: product_knobs(fields),
    }
}

/// The products' knobs among the knobs hash's fields (`stock:<p>`,
/// `sold_out:<p>`).
fn product_knobs(
    fields: &HashMap<String, String>,
) -> std::collections::BTreeMap<String, crate::backend::knobs::ProductKnobs> {
    let mut out = std::collections::BTreeMap::new();
    for (field, value) in fields {
        if let Some(p) = field.strip_prefix(KnobField::STOCK_PREFIX) {
            let entry: &mut crate::backend::knobs::ProductKnobs =
                out.entry(p.to_string()).or_default();
            entry.stock = value.parse().ok();
        } else if let Some(p) = field.strip_prefix(KnobField::SOLD_OUT_PREFIX) {
            if value == "1" {
                out.entry(p.to_string()).or_default().sold_out = true;
            }
        }
    }
    out
}
