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

/// The entries of an `XREADGROUP` reply (`nil` when none came), moved out
/// of it: the `streams` types' `StreamReadReply` first clones the whole
/// reply, which cost the drain a fifth of its instructions per delivery.
pub fn read_entries(reply: Value) -> Result<Vec<StreamId>, String> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    Ok(pair.nth(1).unwrap_or(Value::Nil))
                }
                other => Err(format!("unexpected stream in XREADGROUP reply: {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        other => return Err(format!("unexpected XREADGROUP reply: {other:?}")),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            return Err(format!(
                "unexpected entries in XREADGROUP reply: {entries:?}"
            ));
        };
        for entry in entries {
            out.push(stream_entry(entry)?);
        }
    }
    Ok(out)
}

/// One `[id, [field, value, ...]]` of a stream reply; fields `nil` (an
/// entry deleted while pending) read as none.
fn stream_entry(entry: Value) -> Result<StreamId, String> {
    let Value::Array(parts) = entry else {
        return Err(format!("unexpected stream entry: {entry:?}"));
    };
    let mut parts = parts.into_iter();
    let id = match parts.next() {
        Some(Value::BulkString(id)) => String::from_utf8(id).map_err(|e| e.to_string())?,
        Some(Value::SimpleString(id)) => id,
        other => return Err(format!("unexpected stream entry id: {other:?}")),
    };
    let mut map = HashMap::new();
    match parts.next() {
        Some(Value::Array(fields)) => {
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                let name = match name {
                    Value::BulkString(name) => {
                        String::from_utf8(name).map_err(|e| e.to_string())?
                    }
                    Value::SimpleString(name) => name,
                    other => return Err(format!("unexpected stream field name: {other:?}")),
                };
                map.insert(name, value);
            }
        }
        Some(Value::Map(fields)) => {
            for (name, value) in fields {
                map.insert(as_string(&name), value);
            }
        }
        Some(Value::Nil) | None => {}
        other => return Err(format!("unexpected stream entry fields: {other:?}")),
    }
    Ok(StreamId {
        id,
        map,
        ..StreamId::default()
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// `read_entries` reads what `StreamReadReply` reads, without the copy.
    #[test]
    fn read_entries_reads_an_xreadgroup_reply() {
        assert!(read_entries(Value::Nil).unwrap().is_empty());
        let entry = |id: &str, fields: Value| Value::Array(vec![bulk(id), fields]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                entry(
                    "1-1",
                    Value::Array(vec![bulk("t"), bulk("abc"), bulk("b"), bulk("")]),
                ),
                // Deleted while pending.
                entry("1-2", Value::Nil),
            ]),
        ])]);
        let ours = read_entries(reply.clone()).unwrap();
        let theirs: redis::streams::StreamReadReply = redis::from_redis_value(reply).unwrap();
        let theirs = &theirs.keys[0].ids;
        assert_eq!(ours.len(), 2);
        for (ours, theirs) in ours.iter().zip(theirs) {
            assert_eq!(ours.id, theirs.id);
            assert_eq!(ours.map, theirs.map);
        }
        assert_eq!(ours[0].map.get("t"), Some(&bulk("abc")));
        assert!(ours[1].map.is_empty());
        // RESP3 answers with maps.
        let reply = Value::Map(vec![(
            bulk("s"),
            Value::Array(vec![entry("2-1", Value::Map(vec![(bulk("t"), bulk("x"))]))]),
        )]);
        let ours = read_entries(reply).unwrap();
        assert_eq!(ours[0].id, "2-1");
        assert_eq!(ours[0].map.get("t"), Some(&bulk("x")));
        assert!(read_entries(Value::Int(1)).is_err());
    }
}
