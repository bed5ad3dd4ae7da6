//! `flashgate admin dead-letters list|show|replay|discard`: a queue's dead
//! letters from a terminal, through the admin API — a table for a person,
//! JSON (`--output json`) for a script.
//!
//! `flashgate admin` dispatches here, so this module makes its own admin
//! API calls (importing `admin`'s would make the two import each other).

use std::fmt::Write;

use clap::{Args, Subcommand};
use http::Method;

use serde_json::Value;

use super::client::{call, CallError};
use super::table::Table;

/// Why a dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLettersError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Dead letters asked for per page by `list --all` and per bulk call.
const PAGE: usize = 200;

/// The `admin dead-letters` flags.
#[derive(Debug, Clone, Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub action: DeadAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeadAction {
    /// List dead letters, newest first.
    List(ListArgs),
    /// Show one dead letter with its request whole.
    Show(OneArgs),
    /// Put a dead letter back in line under its own ticket (or, with
    /// --all --code, every one of that code, oldest first).
    Replay(ActArgs),
    /// Remove a dead letter for good; its ticket stays failed (or, with
    /// --all --code, every one of that code).
    Discard(ActArgs),
}

/// What every action names. (`--output` is `flashgate admin`'s own.)
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The queue; default: the gateway's only queue.
    #[arg(long, short)]
    pub queue: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only dead letters of this code (`upstream_unavailable`, `corrupt_entry`, ...).
    #[arg(long)]
    pub code: Option<String>,
    /// At most this many (1-1000).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Every dead letter, page after page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct OneArgs {
    #[command(flatten)]
    pub common: Common,
    /// The dead letter's id, as `list` shows it.
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct ActArgs {
    #[command(flatten)]
    pub common: Common,
    /// The dead letter's id, as `list` shows it.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Every dead letter of --code.
    #[arg(long, requires = "code")]
    pub all: bool,
    /// With --all: the code whose dead letters to take.
    #[arg(long, requires = "all")]
    pub code: Option<String>,
}

/// Runs a dead-letter action against the admin API at `base`; returns
/// what to print: a table, or with `json` the API's JSON.
pub async fn run(
    base: &str,
    token: Option<&str>,
    json: bool,
    args: &DeadLettersArgs,
) -> Result<String, DeadLettersError> {
    let common = match &args.action {
        DeadAction::List(a) => &a.common,
        DeadAction::Show(a) => &a.common,
        DeadAction::Replay(a) | DeadAction::Discard(a) => &a.common,
    };
    let queue = match &common.queue {
        Some(q) => q.clone(),
        None => only_queue(base, token).await?,
    };
    let root = format!("/admin/queues/{}/dead-letters", encode(&queue));
    match &args.action {
        DeadAction::List(a) => {
            let mut letters = Vec::new();
            let mut cursor: Option<String> = None;
            let limit = if a.all { PAGE } else { a.limit.clamp(1, 1000) };
            loop {
                let mut path = format!("{root}?limit={limit}");
                if let Some(code) = &a.code {
                    path.push_str(&format!("&code={}", encode(code)));
                }
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={}", encode(c)));
                }
                let page = call(base, token, Method::GET, &path, None).await?;
                letters.extend(page["dead_letters"].as_array().cloned().unwrap_or_default());
                cursor = page["next"].as_str().map(str::to_string);
                if !a.all || cursor.is_none() {
                    break;
                }
            }
            Ok(match json {
                true => Value::Array(letters).to_string(),
                false => table(&letters),
            })
        }
        DeadAction::Show(a) => {
            let path = format!("{root}/{}", encode(&a.id));
            let letter = call(base, token, Method::GET, &path, None).await?;
            Ok(match json {
                true => letter.to_string(),
                false => show(&letter),
            })
        }
        DeadAction::Replay(a) | DeadAction::Discard(a) => {
            let replay = matches!(args.action, DeadAction::Replay(_));
            match (&a.id, &a.code) {
                (Some(id), _) => {
                    let (method, path) = match replay {
                        true => (Method::POST, format!("{root}/{}/replay", encode(id))),
                        false => (Method::DELETE, format!("{root}/{}", encode(id))),
                    };
                    let answer = call(base, token, method, &path, None).await?;
                    Ok(match (json, replay) {
                        (true, _) => answer.to_string(),
                        (false, true) => format!(
                            "replayed {id}: ticket {} is queued again",
                            answer["ticket"].as_str().unwrap_or("-")
                        ),
                        (false, false) => format!("discarded {id}"),
                    })
                }
                (None, Some(code)) => bulk(base, token, &root, code, replay, json).await,
                (None, None) => Err(DeadLettersError::Usage(
                    "give an id, or --all --code CODE".into(),
                )),
            }
        }
    }
}

/// Bulk calls until none of `code` are left; a summary.
async fn bulk(
    base: &str,
    token: Option<&str>,
    root: &str,
    code: &str,
    replay: bool,
    json: bool,
) -> Result<String, DeadLettersError> {
    let (method, verb) = match replay {
        true => (Method::POST, "replayed"),
        false => (Method::DELETE, "discarded"),
    };
    let mut done = 0;
    let mut refused: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = match replay {
            true => format!("{root}/replay?code={}&limit={PAGE}", encode(code)),
            false => format!("{root}?code={}&limit={PAGE}", encode(code)),
        };
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", encode(c)));
        }
        let answer = call(base, token, method.clone(), &path, None).await?;
        done += answer[verb].as_u64().unwrap_or(0);
        refused.extend(answer["refused"].as_array().cloned().unwrap_or_default());
        cursor = answer["next"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    if json {
        let mut out = serde_json::json!({"code": code, "refused": refused});
        out[verb] = done.into();
        return Ok(out.to_string());
    }
    let mut out = format!("{verb} {done} dead letters of code {code}");
    if !refused.is_empty() {
        let _ = write!(out, "; {} left as they were:", refused.len());
        for r in &refused {
            let _ = write!(
                out,
                "\n  {}: {}",
                r["id"].as_str().unwrap_or("-"),
                r["why"].as_str().unwrap_or("-")
            );
        }
    }
    Ok(out)
}

/// The gateway's queue when it has one; else which to choose from.
async fn only_queue(base: &str, token: Option<&str>) -> Result<String, DeadLettersError> {
    let answer = call(base, token, Method::GET, "/admin/queues", None).await?;
    let names: Vec<String> = answer["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["name"].as_str().map(str::to_string))
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(DeadLettersError::Usage(format!(
            "the gateway has several queues ({}): give --queue",
            names.join(", ")
        ))),
    }
}

/// The dead letters as a table, one a line.
fn table(letters: &[Value]) -> String {
    if letters.is_empty() {
        return "(no dead letters)".into();
    }
    let mut table = Table::new(&["ID", "FAILED AT", "CODE", "ATTEMPTS", "TICKET", "REQUEST"]);
    let text = |l: &Value, k: &str| l[k].as_str().unwrap_or("-").to_string();
    for l in letters {
        let request = match (l["method"].as_str(), l["path"].as_str()) {
            (Some(m), Some(p)) => format!("{m} {p}"),
            _ => "-".into(),
        };
        let attempts = l["attempts"]
            .as_u64()
            .map_or_else(|| "-".into(), |n| n.to_string());
        table.row(vec![
            text(l, "id"),
            text(l, "failed_at"),
            text(l, "code"),
            attempts,
            text(l, "ticket"),
            request,
        ]);
    }
    table.render()
}

/// One dead letter, field by field, then its request as sent.
fn show(l: &Value) -> String {
    let text = |k: &str| match &l[k] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "-".into(),
    };
    let mut out = String::new();
    for (label, key) in [
        ("id", "id"),
        ("ticket", "ticket"),
        ("code", "code"),
        ("detail", "detail"),
        ("attempts", "attempts"),
        ("failed at", "failed_at"),
        ("admitted at", "admitted_at"),
        ("idempotency key", "idempotency_key"),
    ] {
        let _ = writeln!(out, "{label:<16} {}", text(key));
    }
    if let (Some(m), Some(p)) = (l["method"].as_str(), l["path"].as_str()) {
        let _ = writeln!(out, "\n{m} {p}");
        for h in l["headers"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "{}: {}",
                h["name"].as_str().unwrap_or_default(),
                h["value"].as_str().unwrap_or_default()
            );
        }
        let _ = write!(out, "\n{}", text("body"));
        if l["body_encoding"] == "base64" {
            out.push_str("\n(body in base64: it is not UTF-8)");
        }
    }
    out.trim_end().to_string()
}

/// Percent-encodes everything but unreserved characters (and `:` and `,`,
/// which ids and cursors hold).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b',' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}
