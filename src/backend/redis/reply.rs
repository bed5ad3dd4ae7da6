//! Reading Redis replies: stream entries, ticket hashes, group info.

use std::collections::HashMap;

use bytes::Bytes;
use redis::Value;

use super::GROUP;
use crate::backend::{Delivery, QueueError, QueuedRequest};
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

/// A stream entry's id and fields (`None` when the entry was deleted while
/// pending), from an `XREADGROUP` reply.
pub type Entry = (String, Option<Vec<(String, Vec<u8>)>>);

/// The entries of an `XREADGROUP` reply on one stream.
pub fn entries(reply: &Value) -> Vec<Entry> {
    // RESP2: [[stream, [[id, [f, v, ...]], ...]]]; nil when nothing came.
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    match streams.first() {
        Some(Value::Array(stream)) => match stream.get(1) {
            Some(Value::Array(entries)) => entries.iter().filter_map(entry).collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// One `[id, [field, value, ...]]` of a stream reply; the fields are `None`
/// (`nil`) for an entry deleted while pending.
fn entry(value: &Value) -> Option<Entry> {
    let Value::Array(entry) = value else {
        return None;
    };
    let id = as_string(entry.first()?);
    let fields = match entry.get(1) {
        Some(Value::Array(flat)) => Some(
            flat.chunks(2)
                .filter_map(|kv| match kv {
                    [k, Value::BulkString(v)] => Some((as_string(k), v.clone())),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    };
    Some((id, fields))
}

/// An `XAUTOCLAIM` reply: the next cursor, the claimed entries and the ids of
/// pending entries that no longer exist (Redis 7 drops those from the PEL).
pub fn autoclaim(reply: &Value) -> Option<(String, Vec<Entry>, Vec<String>)> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let cursor = as_string(parts.first()?);
    let claimed = match parts.get(1) {
        Some(Value::Array(entries)) => entries.iter().filter_map(entry).collect(),
        _ => Vec::new(),
    };
    let deleted = match parts.get(2) {
        Some(Value::Array(ids)) => ids.iter().map(as_string).collect(),
        _ => Vec::new(),
    };
    Some((cursor, claimed, deleted))
}

/// A delivery from an entry as read back.
pub fn delivery((entry_id, fields): Entry, fresh: bool, partition: u32) -> Delivery {
    let ahead_at_admission = fields.as_ref().and_then(|f| {
        let (_, v) = f.iter().find(|(k, _)| k == "w")?;
        std::str::from_utf8(v).ok()?.parse().ok()
    });
    let request = match fields {
        Some(fields) => parse_entry(&fields),
        None => Err("entry was deleted from the stream while pending".to_string()),
    };
    Delivery {
        entry_id,
        fresh,
        request,
        ahead_at_admission,
        partition,
    }
}

pub fn parse_entry(fields: &[(String, Vec<u8>)]) -> Result<QueuedRequest, String> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| format!("entry has no field `{name}`"))
    };
    let text = |name: &str| {
        get(name).and_then(|v| {
            std::str::from_utf8(v)
                .map(str::to_string)
                .map_err(|_| format!("entry field `{name}` is not UTF-8"))
        })
    };
    let ticket = TicketId::parse(&text("t")?)
        .ok_or("entry has a malformed ticket id")?
        .0;
    Ok(QueuedRequest {
        ticket,
        method: text("m")?,
        path: text("p")?,
        headers: Bytes::copy_from_slice(get("h")?),
        body: Bytes::copy_from_slice(get("b")?),
        client: text("c")?,
        forwarded_for: text("f")?,
        forwarded_proto: text("x")?,
        admitted_at_ms: text("a")?
            .parse()
            .map_err(|_| "entry has a malformed admission time")?,
    })
}

pub fn parse_ticket(fields: &HashMap<String, Vec<u8>>) -> Result<TicketRecord, QueueError> {
    let text = |k: &str| fields.get(k).and_then(|v| std::str::from_utf8(v).ok());
    let num = |k: &str| text(k).and_then(|v| v.parse::<u64>().ok());
    let status = text("st")
        .and_then(TicketStatus::parse)
        .ok_or_else(|| QueueError::Protocol("ticket hash without a status".into()))?;
    let response = match (status, num("rs")) {
        (TicketStatus::Completed, Some(code)) => Some(StoredResponse {
            status: code as u16,
            headers: Bytes::copy_from_slice(fields.get("rh").map_or(&[][..], |v| v)),
            body: Bytes::copy_from_slice(fields.get("rb").map_or(&[][..], |v| v)),
        }),
        _ => None,
    };
    let error = match status {
        TicketStatus::Failed => Some(TicketError {
            code: text("ec").unwrap_or("failed").to_string(),
            detail: text("ed").unwrap_or_default().to_string(),
        }),
        _ => None,
    };
    Ok(TicketRecord {
        status,
        seq: num("seq").unwrap_or(0),
        attempts: num("att").unwrap_or(0) as u32,
        admitted_at_ms: num("adm").unwrap_or(0),
        completed_at_ms: num("cmp"),
        response,
        error,
    })
}

/// `(pending, last-delivered-id)` of the `flashgate` group in an `XINFO GROUPS` reply.
pub fn group_info(reply: &Value) -> Option<(u64, String)> {
    let Value::Array(groups) = reply else {
        return None;
    };
    groups.iter().find_map(|g| {
        let pairs: Vec<(String, &Value)> = match g {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((as_string(k), v)),
                    _ => None,
                })
                .collect(),
            Value::Map(map) => map.iter().map(|(k, v)| (as_string(k), v)).collect(),
            _ => return None,
        };
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if get("name").map(as_string).as_deref() != Some(GROUP) {
            return None;
        }
        Some((
            get("pending").and_then(as_u64).unwrap_or(0),
            get("last-delivered-id")
                .map(as_string)
                .unwrap_or_else(|| "0-0".into()),
        ))
    })
}

/// The millisecond part of the first id in an `XRANGE` reply.
pub fn first_id_ms(reply: &Value) -> Option<u64> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let Value::Array(entry) = entries.first()? else {
        return None;
    };
    as_string(entry.first()?).split('-').next()?.parse().ok()
}

/// The knobs hash as stored by `set_knobs`.
pub fn knobs(fields: &HashMap<String, String>) -> crate::backend::knobs::Knobs {
    let flag = |k: &str| fields.get(k).is_some_and(|v| v == "1");
    crate::backend::knobs::Knobs {
        drain_rate: fields.get("drain_rate").and_then(|v| v.parse().ok()),
        paused: flag("paused"),
        stock: fields.get("stock").and_then(|v| v.parse().ok()),
        open: fields.get("open").map(|v| v == "1"),
        sold_out: flag("sold_out"),
        version: fields
            .get("version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}
