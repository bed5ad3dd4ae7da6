//! Clients as a sale has them, for the chaos and soak runs: each admission
//! carries an `Idempotency-Key` of its own and is retried with that same key
//! after a transport error, a 503 or a 429 (on the next gateway, as a load
//! balancer would send it) until it gets its ticket or a definite refusal.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use super::{http_client, HttpClient};

/// Longest wait for one answer before the attempt counts as a transport
/// error and is retried: a gateway killed mid-request never answers.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two attempts of one admission.
const BACKOFF_MAX: Duration = Duration::from_millis(400);

/// How one admission ended.
#[derive(Debug, Clone)]
pub enum Admission {
    /// 202 (or 200, a replay of an earlier attempt): its ticket.
    Ticket(String),
    /// A status that is not worth retrying.
    Refused(u16),
}

/// Counts over every attempt of a run.
#[derive(Default)]
pub struct Attempts {
    /// Admissions that ended (a ticket or a definite refusal).
    pub done: AtomicUsize,
    /// Attempts retried after a transport error or a timeout.
    pub transport_errors: AtomicU64,
    /// Attempts retried after 503 or 429.
    pub unavailable: AtomicU64,
    /// Answers that were replays (200): the key met its earlier ticket.
    pub replayed: AtomicU64,
}

/// A client of several gateways (base URLs) sharing one queue.
#[derive(Clone)]
pub struct Shopper {
    http: HttpClient,
    bases: Vec<String>,
}

impl Shopper {
    /// One connection pool of its own; run one per simulated connection.
    pub fn new(bases: &[String]) -> Shopper {
        Shopper {
            http: http_client(),
            bases: bases.to_vec(),
        }
    }

    /// Admits order `n` (`{"order":n}`, key `{tag}-{n}`), retrying until a
    /// ticket or a definite refusal; with the time its last attempt took.
    pub async fn admit(&self, tag: &str, n: usize, counts: &Attempts) -> (Admission, Duration) {
        let key = format!("{tag}-{n}");
        let body = Bytes::from(format!("{{\"order\":{n}}}"));
        let mut backoff = Duration::from_millis(20);
        let mut attempt = 0;
        loop {
            let base = &self.bases[(n + attempt) % self.bases.len()];
            let req = Request::post(format!("{base}/checkout"))
                .header("idempotency-key", &key)
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .expect("a valid request");
            let started = Instant::now();
            match self.answer(req).await {
                Some((status, body)) if status == 202 || status == 200 => {
                    if status == 200 {
                        counts.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    counts.done.fetch_add(1, Ordering::Relaxed);
                    let ticket = ticket_of(&body)
                        .unwrap_or_else(|| panic!("{status} without a ticket: {body:?}"));
                    return (Admission::Ticket(ticket), started.elapsed());
                }
                Some((503 | 429, _)) => counts.unavailable.fetch_add(1, Ordering::Relaxed),
                Some((status, _)) => {
                    counts.done.fetch_add(1, Ordering::Relaxed);
                    return (Admission::Refused(status), started.elapsed());
                }
                None => counts.transport_errors.fetch_add(1, Ordering::Relaxed),
            };
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            attempt += 1;
        }
    }

    /// `GET /tickets/{ticket}` on the gateway `n` picks: the ticket's status
    /// (`None` on a transport error or a non-200 answer), and the time it took.
    pub async fn status(&self, ticket: &str, n: usize) -> (Option<TicketState>, Duration) {
        let base = &self.bases[n % self.bases.len()];
        let req = Request::get(format!("{base}/tickets/{ticket}"))
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        let started = Instant::now();
        let state = match self.answer(req).await {
            Some((200, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .map(|v| TicketState::of(v["status"].as_str().unwrap_or_default())),
            Some((404, _)) => Some(TicketState::Vanished),
            _ => None,
        };
        (state, started.elapsed())
    }

    /// One exchange within [`ATTEMPT_TIMEOUT`]; `None` when it failed.
    async fn answer(&self, req: Request<Full<Bytes>>) -> Option<(u16, Bytes)> {
        let exchange = async {
            let resp = self.http.request(req).await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
            .await
            .ok()
            .flatten()
    }
}

/// A ticket's `status`, as far as a run cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    Pending,
    Completed,
    Failed,
    /// Cancelled or expired: terminal, but nothing a chaos run causes.
    OtherTerminal,
    /// 404: the gateway does not know the ticket.
    Vanished,
}

impl TicketState {
    fn of(status: &str) -> TicketState {
        match status {
            "completed" => TicketState::Completed,
            "failed" => TicketState::Failed,
            "cancelled" | "expired" => TicketState::OtherTerminal,
            _ => TicketState::Pending,
        }
    }

    pub fn terminal(self) -> bool {
        self != TicketState::Pending
    }
}

fn ticket_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(v["ticket"].as_str()?.to_string())
}

/// The `q`-quantile of some durations, in milliseconds (0 when empty).
pub fn quantile_ms(durations: &mut [Duration], q: f64) -> f64 {
    if durations.is_empty() {
        return 0.0;
    }
    durations.sort_unstable();
    let i = ((durations.len() as f64 * q).ceil() as usize).clamp(1, durations.len()) - 1;
    durations[i].as_secs_f64() * 1000.0
}
