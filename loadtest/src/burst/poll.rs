//! Polling every ticket until it is terminal, honouring `Retry-After`, with a
//! bounded number of connections and a bounded total time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use indicatif::ProgressBar;
use serde::Deserialize;

use super::Options;
use crate::client::{Connection, Target};

/// Wait before polling again when the gateway gave no `Retry-After`.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Longest wait honoured, so a bad header cannot stall the run.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How often an idle worker looks for work that others re-queued.
const IDLE_TICK: Duration = Duration::from_millis(20);

/// How a ticket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The upstream gave a final answer.
    Completed,
    /// The gateway gave up on it.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
    /// Expired before dispatch.
    Expired,
    /// The gateway answered 404: it no longer knows the ticket.
    Vanished,
    /// Still not terminal when polling stopped.
    NeverFinished,
}

/// The last thing learnt about a ticket.
#[derive(Debug, Clone)]
pub struct Polled {
    /// How it ended.
    pub fate: Fate,
    /// Upstream attempts, as the gateway counts them.
    pub attempts: Option<u64>,
    /// Admission time, milliseconds since the Unix epoch.
    pub admitted_at_ms: Option<i64>,
    /// Completion time, milliseconds since the Unix epoch.
    pub completed_at_ms: Option<i64>,
    /// The upstream's final status, for completed tickets.
    pub upstream_status: Option<u16>,
}

impl Polled {
    fn unfinished() -> Self {
        Polled {
            fate: Fate::NeverFinished,
            attempts: None,
            admitted_at_ms: None,
            completed_at_ms: None,
            upstream_status: None,
        }
    }
}

#[derive(Deserialize)]
struct TicketView {
    status: String,
    attempts: Option<u64>,
    admitted_at: Option<String>,
    completed_at: Option<String>,
    response: Option<ResponseView>,
}

#[derive(Deserialize)]
struct ResponseView {
    status: u16,
}

/// Shared by the workers: what is due when, and what has been learnt.
struct Board {
    /// Tickets waiting for their next poll, earliest first.
    due: Mutex<BinaryHeap<Reverse<(Instant, usize)>>>,
    results: Mutex<Vec<Polled>>,
    /// Tickets not yet terminal.
    open: AtomicUsize,
    ids: Vec<String>,
    deadline: Instant,
}

/// Polls `tickets` (id, first poll time) and returns one [`Polled`] per
/// ticket, in the same order.
pub(super) async fn poll_all(
    options: &Options,
    target: &Target,
    tickets: Vec<(String, Instant)>,
    bar: &ProgressBar,
) -> Vec<Polled> {
    let n = tickets.len();
    let mut heap = BinaryHeap::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for (i, (id, due)) in tickets.into_iter().enumerate() {
        heap.push(Reverse((due, i)));
        ids.push(id);
    }
    let board = Arc::new(Board {
        due: Mutex::new(heap),
        results: Mutex::new(vec![Polled::unfinished(); n]),
        open: AtomicUsize::new(n),
        ids,
        deadline: Instant::now() + options.poll_timeout,
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.poll_concurrency.min(n) {
        let conn = Connection::new(target.clone(), options.timeout);
        workers.spawn(work(board.clone(), conn, bar.clone()));
    }
    while workers.join_next().await.is_some() {}
    let mut results = board.results.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *results)
}

async fn work(board: Arc<Board>, mut conn: Connection, bar: ProgressBar) {
    loop {
        if Instant::now() >= board.deadline || board.open.load(Ordering::Acquire) == 0 {
            return;
        }
        let next = board.due.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(Reverse((due, i))) = next else {
            // Every open ticket is with another worker, which may put it
            // back for a later poll: look again shortly.
            let left = board.deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(IDLE_TICK.min(left)).await;
            continue;
        };
        if due >= board.deadline {
            return;
        }
        tokio::time::sleep_until(due.into()).await;
        // The deadline bounds the whole phase, even a poll left hanging.
        let step =
            tokio::time::timeout_at(board.deadline.into(), poll_once(&mut conn, &board.ids[i]));
        let Ok(step) = step.await else {
            return;
        };
        match step {
            Step::Done(polled) => {
                board.results.lock().unwrap_or_else(|p| p.into_inner())[i] = polled;
                board.open.fetch_sub(1, Ordering::AcqRel);
                bar.inc(1);
            }
            Step::Again(after, polled) => {
                if let Some(polled) = polled {
                    board.results.lock().unwrap_or_else(|p| p.into_inner())[i] = polled;
                }
                let due = Instant::now() + after.min(MAX_RETRY);
                board
                    .due
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Reverse((due, i)));
            }
        }
    }
}

enum Step {
    Done(Polled),
    /// Poll again after this long; keep what was learnt so far.
    Again(Duration, Option<Polled>),
}

async fn poll_once(conn: &mut Connection, id: &str) -> Step {
    let req = match conn
        .target()
        .request(Method::GET, &format!("/tickets/{id}"), Bytes::new())
    {
        Ok(req) => req,
        // Ids were checked URL-safe at admission; this cannot be retried into working.
        Err(_) => return Step::Done(Polled::unfinished()),
    };
    let answer = match conn.send(req).await {
        Ok(a) => a,
        // A transport failure says nothing about the ticket: try again.
        Err(_) => return Step::Again(DEFAULT_RETRY, None),
    };
    let after = answer.retry_after().unwrap_or(DEFAULT_RETRY);
    if answer.status == StatusCode::NOT_FOUND {
        return Step::Done(Polled {
            fate: Fate::Vanished,
            ..Polled::unfinished()
        });
    }
    if !answer.status.is_success() {
        // 429/503 and the like: the gateway is shedding polls; come back.
        return Step::Again(after, None);
    }
    let Ok(view) = serde_json::from_slice::<TicketView>(&answer.body) else {
        return Step::Again(after, None);
    };
    let fate = match view.status.as_str() {
        "completed" => Some(Fate::Completed),
        "failed" => Some(Fate::Failed),
        "cancelled" => Some(Fate::Cancelled),
        "expired" => Some(Fate::Expired),
        _ => None,
    };
    let polled = Polled {
        fate: fate.unwrap_or(Fate::NeverFinished),
        attempts: view.attempts,
        admitted_at_ms: view.admitted_at.as_deref().and_then(epoch_ms),
        completed_at_ms: view.completed_at.as_deref().and_then(epoch_ms),
        upstream_status: view.response.map(|r| r.status),
    };
    match fate {
        Some(_) => Step::Done(polled),
        None => Step::Again(after, Some(polled)),
    }
}

/// RFC 3339 (`2026-11-27T12:00:00.000Z`) to milliseconds since the epoch.
pub fn epoch_ms(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    let ms = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    Some(ms)
}
