//! `/admin/queues/{q}/dead-letters`: the requests the drain gave up on —
//! listed newest first with their request readable, replayed into line
//! once the order service is fixed, or discarded; one at a time or all of
//! a `code` at once. Each replay and discard is logged with its actor.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{header, HeaderValue, Method, Response, StatusCode};
use serde::Serialize;
use tracing::info;

use super::super::App;
use super::events::percent_decode;
use crate::backend::dead_letters::bulk;
use crate::backend::{BulkAction, DeadLetter, DeadQuery, Discard, Replay};
use crate::http::body::{json, Body};
use crate::http::headers;
use crate::http::problem::{Code, Problem};
use crate::queue::Queue;
use crate::ticket::{format_time_ms, now_ms};

/// Dead letters in one page unless `limit` says fewer, and at most; also
/// the most one bulk call takes.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;
/// Dead letters one bulk call takes unless `limit` says otherwise.
const DEFAULT_BULK: usize = 100;

/// A dead letter as the admin API shows it.
#[derive(Serialize)]
struct View {
    id: String,
    /// `null` when the entry could not be read.
    ticket: Option<String>,
    code: String,
    detail: String,
    attempts: Option<u32>,
    failed_at: String,
    admitted_at: Option<String>,
    method: Option<String>,
    /// Path and query, as the client sent them.
    path: Option<String>,
    headers: Vec<HeaderView>,
    body: Option<String>,
    /// `utf8` or `base64`: how `body` is written.
    body_encoding: Option<&'static str>,
    /// The client's own `Idempotency-Key`; the order service gets the
    /// ticket as its key.
    idempotency_key: Option<String>,
}

#[derive(Serialize)]
struct HeaderView {
    name: String,
    value: String,
}

impl View {
    fn of(letter: DeadLetter) -> View {
        let r = letter.request;
        let (body, body_encoding) = match r.as_ref().map(|r| std::str::from_utf8(&r.body)) {
            Some(Ok(text)) => (Some(text.to_string()), Some("utf8")),
            Some(Err(_)) => (r.as_ref().map(|r| STANDARD.encode(&r.body)), Some("base64")),
            None => (None, None),
        };
        let headers = r
            .as_ref()
            .map(|r| headers::decode(&r.headers))
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| HeaderView {
                name: name.as_str().to_string(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })
            .collect();
        View {
            id: letter.id,
            ticket: r.as_ref().map(|r| r.ticket.to_string()),
            code: letter.code,
            detail: letter.detail,
            attempts: letter.attempts,
            failed_at: format_time_ms(letter.failed_at_ms),
            admitted_at: r.as_ref().map(|r| format_time_ms(r.admitted_at_ms)),
            method: r.as_ref().map(|r| r.method.clone()),
            path: r.as_ref().map(|r| r.path.clone()),
            headers,
            body,
            body_encoding,
            idempotency_key: r.and_then(|r| r.idempotency_key),
        }
    }
}

/// Routes `rest`, the path after `/admin/queues`:
/// `/{q}/dead-letters[/{id}[/replay]]` and `/{q}/dead-letters/replay`.
/// `actor` names who asks, for the log and the events.
pub async fn route(
    app: &App,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    actor: &str,
) -> Response<Body> {
    let split = rest.trim_start_matches('/').split_once("/dead-letters");
    let Some((name, tail)) = split.filter(|(_, tail)| tail.is_empty() || tail.starts_with('/'))
    else {
        return Problem::new(Code::NotFound, "no such admin endpoint").into_response();
    };
    let queue = match app.named_queue(name) {
        Ok(queue) => queue,
        Err(not_found) => return not_found.into_response(),
    };
    let params = match Params::parse(query.unwrap_or_default()) {
        Ok(p) => p,
        Err(why) => return Problem::new(Code::BadRequest, why).into_response(),
    };
    let segments: Vec<&str> = tail.split('/').skip(1).collect();
    match (segments.as_slice(), method) {
        ([] | [""], &Method::GET) => list(queue, params).await,
        ([] | [""], &Method::DELETE) => {
            bulk_action(queue, params, BulkAction::Discard, actor).await
        }
        (["replay"], &Method::POST) => bulk_action(queue, params, BulkAction::Replay, actor).await,
        ([id], &Method::GET) => show(queue, &decode(id)).await,
        ([id], &Method::DELETE) => discard(queue, &decode(id), actor).await,
        ([id, "replay"], &Method::POST) => replay(queue, &decode(id), actor).await,
        ([] | [""], _) => not_allowed("GET, DELETE"),
        (["replay"], _) | ([_, "replay"], _) => not_allowed("POST"),
        ([_], _) => not_allowed("GET, DELETE"),
        _ => Problem::new(Code::NotFound, "no such admin endpoint").into_response(),
    }
}

fn decode(id: &str) -> String {
    percent_decode(id).unwrap_or_default()
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp =
        Problem::new(Code::MethodNotAllowed, format!("allowed: {allow}")).into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Response<Body> {
    Problem::new(Code::Unavailable, format!("{what}: {e}"))
        .retry_after(1)
        .into_response()
}

fn not_found(id: &str) -> Response<Body> {
    Problem::new(
        Code::DeadLetterNotFound,
        format!("no dead letter `{id}` (replayed or discarded already?)"),
    )
    .into_response()
}

/// The query parameters: `limit`, `cursor`, `code`.
#[derive(Default)]
struct Params {
    limit: Option<usize>,
    cursor: Option<String>,
    code: Option<String>,
}

impl Params {
    fn parse(raw: &str) -> Result<Params, String> {
        let mut p = Params::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                percent_decode(value).ok_or_else(|| format!("`{name}` is not valid UTF-8"))?;
            match name {
                "limit" => {
                    let n = value.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n));
                    p.limit = Some(n.ok_or_else(|| format!("`limit` must be 1 to {MAX_LIMIT}"))?);
                }
                "cursor" if !value.is_empty() => p.cursor = Some(value),
                "code" if !value.is_empty() => p.code = Some(value),
                "cursor" | "code" => return Err(format!("`{name}` is empty")),
                other => return Err(format!("unknown parameter `{other}`")),
            }
        }
        Ok(p)
    }
}

/// `GET …/dead-letters`: newest first.
async fn list(queue: &Queue, params: Params) -> Response<Body> {
    let query = DeadQuery {
        after: params.cursor,
        code: params.code,
        limit: params.limit.unwrap_or(DEFAULT_LIMIT),
        oldest_first: false,
    };
    match queue.backend.list_dead(&query).await {
        Ok(page) => {
            let views: Vec<View> = page.dead_letters.into_iter().map(View::of).collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"dead_letters": views, "next": page.next}),
            )
        }
        // A cursor that is not one of this queue's.
        Err(crate::backend::QueueError::Protocol(why)) => {
            Problem::new(Code::BadRequest, format!("`cursor`: {why}")).into_response()
        }
        Err(e) => unavailable("cannot read the dead letters", e),
    }
}

async fn show(queue: &Queue, id: &str) -> Response<Body> {
    match queue.backend.dead_letter(id).await {
        Ok(Some(letter)) => json(StatusCode::OK, &View::of(letter)),
        Ok(None) => not_found(id),
        Err(e) => unavailable("cannot read the dead letter", e),
    }
}

/// `POST …/dead-letters/{id}/replay`.
async fn replay(queue: &Queue, id: &str, actor: &str) -> Response<Body> {
    let name = queue.name.as_str();
    match queue.backend.replay_dead(id, actor).await {
        Ok(Replay::Replayed { ticket }) => {
            info!(queue = name, actor, dead_letter = id, %ticket,
                "dead letter replayed: its ticket is queued again");
            let body = serde_json::json!({
                "id": id,
                "ticket": ticket.as_str(),
                "status": "queued",
                "poll_url": format!("/tickets/{ticket}"),
            });
            json(StatusCode::OK, &body)
        }
        Ok(Replay::NotFound) => not_found(id),
        Ok(Replay::Refused(why)) => Problem::new(
            Code::DeadLetterNotReplayable,
            format!("dead letter `{id}`: {why}"),
        )
        .into_response(),
        Err(e) => unavailable("the replay was not made", e),
    }
}

/// `DELETE …/dead-letters/{id}`.
async fn discard(queue: &Queue, id: &str, actor: &str) -> Response<Body> {
    let name = queue.name.as_str();
    match queue.backend.discard_dead(id, actor).await {
        Ok(Discard::Discarded { ticket }) => {
            let ticket = ticket.map(|t| t.to_string());
            info!(
                queue = name,
                actor,
                dead_letter = id,
                ticket = ticket.as_deref().unwrap_or("-"),
                "dead letter discarded: its ticket stays failed"
            );
            json(
                StatusCode::OK,
                &serde_json::json!({"id": id, "ticket": ticket, "discarded": true}),
            )
        }
        Ok(Discard::NotFound) => not_found(id),
        Err(e) => unavailable("the discard was not made", e),
    }
}

/// `POST …/dead-letters/replay?code=X` and `DELETE …/dead-letters?code=X`:
/// at most `limit` (default 100) per call, oldest first; `next` says
/// where the next call goes on (`cursor`), `null` when none are left.
async fn bulk_action(
    queue: &Queue,
    params: Params,
    action: BulkAction,
    actor: &str,
) -> Response<Body> {
    let Some(code) = params.code else {
        return Problem::new(
            Code::BadRequest,
            "a bulk action needs `code`: the dead letters of which code",
        )
        .into_response();
    };
    let limit = params.limit.unwrap_or(DEFAULT_BULK);
    // A pass over the dead letters takes those there when it started: the
    // cursor carries that time (`<ms>~<the backend's cursor>`).
    let (until, after) = match params.cursor.as_deref().map(|c| c.split_once('~')) {
        None => (now_ms(), None),
        Some(Some((t, rest))) if t.parse::<u64>().is_ok() => {
            (t.parse().unwrap_or(0), Some(rest.to_string()))
        }
        Some(_) => {
            return Problem::new(
                Code::BadRequest,
                "`cursor` must be a `next` of an earlier bulk call",
            )
            .into_response()
        }
    };
    let name = queue.name.as_str();
    let verb = match action {
        BulkAction::Replay => "replayed",
        BulkAction::Discard => "discarded",
    };
    match bulk(
        queue.backend.as_ref(),
        &code,
        action,
        limit,
        after,
        until,
        actor,
    )
    .await
    {
        Ok(out) => {
            info!(queue = name, actor, code = %code, count = out.done, refused = out.refused.len(),
                "dead letters {verb} in bulk");
            let mut body = serde_json::json!({
                "code": code,
                "refused": out.refused,
                "next": out.next.map(|n| format!("{until}~{n}")),
            });
            body[verb] = out.done.into();
            json(StatusCode::OK, &body)
        }
        Err(crate::backend::QueueError::Protocol(why)) => {
            Problem::new(Code::BadRequest, format!("`cursor`: {why}")).into_response()
        }
        Err(e) => unavailable("the bulk action stopped", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_by_name() {
        let p = Params::parse("limit=5&code=upstream_unavailable&cursor=1-0%2C2-0").unwrap();
        assert_eq!(p.limit, Some(5));
        assert_eq!(p.code.as_deref(), Some("upstream_unavailable"));
        assert_eq!(p.cursor.as_deref(), Some("1-0,2-0"));
        for (bad, name) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("code=", "code"),
            ("color=red", "color"),
        ] {
            let err = Params::parse(bad).err().unwrap();
            assert!(err.contains(name), "{bad}: {err}");
        }
    }
}
