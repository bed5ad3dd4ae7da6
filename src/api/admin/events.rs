//! `GET /admin/queues/{name}/events`: a page of the queue's lifecycle
//! events, optionally waiting for the next (a long poll); `flashgate events`
//! follows a queue through it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode};

use super::super::App;
use crate::backend::events::{EventId, EVENT_TYPES};
use crate::backend::{read_events, EventQuery};
use crate::config::{parse_duration, parse_time};
use crate::http::body::{json, Body};
use crate::http::problem::{Code, Problem};

/// Events in one page unless `limit` says fewer, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Longest `wait`.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The page after `after` (a `next` cursor), or from `since` (a duration
/// ago, an RFC 3339 time or ms since the epoch), of the `type`s asked for
/// (comma-separated or repeated), at most `limit`; with `wait=N` seconds,
/// answered as soon as one is there.
pub async fn events(app: &App, name: &str, query: Option<&str>) -> Response<Body> {
    let queue = match app.named_queue(name) {
        Ok(queue) => queue,
        Err(not_found) => return not_found.into_response(),
    };
    let (query, wait) = match parse(query.unwrap_or_default(), queue.partitions()) {
        Ok(parsed) => parsed,
        Err(why) => return Problem::new(Code::BadRequest, why).into_response(),
    };
    match read_events(queue.backend.as_ref(), query, wait).await {
        Ok(page) => json(StatusCode::OK, &page),
        Err(e) => Problem::new(Code::Unavailable, format!("cannot read the events: {e}"))
            .retry_after(1)
            .into_response(),
    }
}

fn parse(raw: &str, partitions: u32) -> Result<(EventQuery, Duration), String> {
    let mut query = EventQuery {
        limit: DEFAULT_LIMIT,
        ..EventQuery::default()
    };
    let mut wait = Duration::ZERO;
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| format!("`{name}` is not valid UTF-8"))?;
        match name {
            "after" => {
                let parts: Vec<&str> = value.split(',').collect();
                let whole = parts.len() == partitions.max(1) as usize
                    && parts.iter().all(|p| EventId::parse(p).is_some());
                if !whole {
                    return Err(format!(
                        "`after` must be a `next` cursor of this queue, got `{value}`"
                    ));
                }
                query.after = Some(value);
            }
            "since" => query.since_ms = Some(since(&value)?),
            "type" => {
                for t in value.split(',').filter(|t| !t.is_empty()) {
                    if !EVENT_TYPES.contains(&t) {
                        return Err(format!(
                            "`type` must be one of {}, got `{t}`",
                            EVENT_TYPES.join(", ")
                        ));
                    }
                    query.types.push(t.to_string());
                }
            }
            "limit" => {
                query.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("`limit` must be 1 to {MAX_LIMIT}"))?;
            }
            "wait" => {
                wait = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.0..=MAX_WAIT.as_secs_f64()).contains(s))
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        format!("`wait` must be seconds from 0 to {}", MAX_WAIT.as_secs())
                    })?;
            }
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    Ok((query, wait))
}

/// `since`: a duration back from now (`10m`), an RFC 3339 time, or ms
/// since the epoch.
fn since(value: &str) -> Result<u64, String> {
    let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(ago) = parse_duration(value) {
        return Ok(ms(SystemTime::now()).saturating_sub(ago.as_millis() as u64));
    }
    parse_time(value).map(ms).map_err(|_| {
        format!("`since` must be a duration (`10m`), an RFC 3339 time or ms since the epoch, got `{value}`")
    })
}

/// `%XX` and `+` decoded.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_by_name() {
        let (q, wait) = parse("type=admitted,completed&limit=5&wait=2&after=1-0", 1).unwrap();
        assert_eq!(q.types, ["admitted", "completed"]);
        assert_eq!((q.limit, wait), (5, Duration::from_secs(2)));
        assert_eq!(q.after.as_deref(), Some("1-0"));
        let (q, _) = parse("after=1-0%2C2-0", 2).unwrap();
        assert_eq!(q.after.as_deref(), Some("1-0,2-0"));
        let (q, _) = parse("since=2026-11-30T10%3A00%3A00Z", 1).unwrap();
        assert_eq!(q.since_ms, Some(1_796_032_800_000));
        for (bad, name) in [
            ("type=bought", "type"),
            ("limit=0", "limit"),
            ("wait=61", "wait"),
            ("after=1-0", "after"),
            ("since=yesterday", "since"),
            ("color=red", "color"),
        ] {
            let err = parse(bad, 2).unwrap_err();
            assert!(err.contains(name), "{bad}: {err}");
        }
    }
}
