//! The burst itself: C workers, each on its own keep-alive connection,
//! sending admissions as fast as answers return (closed model) or on a fixed
//! arrival schedule (open model).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::Method;
use indicatif::ProgressBar;
use serde::Deserialize;

use super::Options;
use crate::client::{Answer, Connection, Target};

/// One admission request.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When the answer (or the failure) arrived, since the burst started.
    pub answered_at: Duration,
    /// From the send time (open model: the intended send time) to the answer.
    pub latency: Duration,
    /// The answer, or the kind of transport failure.
    pub result: Result<Admission, &'static str>,
}

/// What the gateway answered.
#[derive(Debug, Clone)]
pub struct Admission {
    /// HTTP status.
    pub status: u16,
    /// The problem+json `code` of an error answer.
    pub code: Option<String>,
    /// The ticket of a 2xx answer.
    pub ticket: Option<Ticket>,
}

/// A ticket handed out at admission.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The ticket id (also the `Idempotency-Key` the gateway sends upstream).
    pub id: String,
    /// The wait promised at admission.
    pub eta_seconds: Option<f64>,
    /// When to poll first, from `Retry-After` (1 s when absent).
    pub retry_after: Duration,
}

#[derive(Deserialize)]
struct TicketBody {
    ticket: String,
    eta_seconds: Option<f64>,
}

#[derive(Deserialize)]
struct Challenge {
    seed: String,
    difficulty: u8,
}

#[derive(Deserialize)]
struct ProblemBody {
    code: Option<String>,
}

/// Sends every request and returns one [`Sent`] per request.
pub(super) async fn send_all(
    options: &Options,
    target: &Target,
    started: Instant,
    bar: &ProgressBar,
) -> Vec<Sent> {
    let next = Arc::new(AtomicU64::new(0));
    let run_id = run_id();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.min(options.requests as usize) {
        let worker = Worker {
            conn: Connection::new(target.clone(), options.timeout),
            path: options.path.clone(),
            pow: options.pow,
            run_id: run_id.clone(),
            next: next.clone(),
            requests: options.requests,
            rate: options.rate,
            started,
            bar: bar.clone(),
        };
        workers.spawn(worker.run());
    }
    let mut sent = Vec::with_capacity(options.requests as usize);
    while let Some(done) = workers.join_next().await {
        // A worker only ends by running out of requests; a panic would be a
        // bug in this tool, and its requests are simply missing from the count.
        if let Ok(mut part) = done {
            sent.append(&mut part);
        }
    }
    sent
}

struct Worker {
    conn: Connection,
    path: String,
    /// Solve a proof-of-work challenge before each admission.
    pow: bool,
    run_id: String,
    next: Arc<AtomicU64>,
    requests: u64,
    rate: Option<f64>,
    started: Instant,
    bar: ProgressBar,
}

impl Worker {
    async fn run(mut self) -> Vec<Sent> {
        let mut sent = Vec::new();
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.requests {
                return sent;
            }
            // Open model: request i is due at i/rate whatever happened to the
            // others. Latency counts from then, so a stalled server is charged
            // for the requests that could not be sent while it stalled.
            // The challenge is fetched and solved first: the latency is the
            // admission's own.
            let pow = match self.pow {
                true => match self.solve().await {
                    Ok(header) => Some(header),
                    Err(kind) => {
                        let now = Instant::now();
                        sent.push(Sent {
                            answered_at: now.duration_since(self.started),
                            latency: Duration::ZERO,
                            result: Err(kind),
                        });
                        self.bar.inc(1);
                        continue;
                    }
                },
                false => None,
            };
            let due = match self.rate {
                Some(rate) => {
                    let due = self.started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    due
                }
                None => Instant::now(),
            };
            let result = self.admit(i, pow.as_deref()).await;
            let now = Instant::now();
            sent.push(Sent {
                answered_at: now.duration_since(self.started),
                latency: now.duration_since(due),
                result,
            });
            self.bar.inc(1);
        }
    }

    /// `GET /challenge`, solved: the `Flashgate-Pow` header value.
    async fn solve(&mut self) -> Result<String, &'static str> {
        let req = self
            .conn
            .target()
            .request(Method::GET, "/challenge", Bytes::new())
            .map_err(|e| e.kind())?;
        let answer = self.conn.send(req).await.map_err(|e| e.kind())?;
        let challenge: Challenge = serde_json::from_slice(&answer.body).map_err(|_| "challenge")?;
        if !answer.status.is_success() || challenge.difficulty > 32 {
            return Err("challenge");
        }
        Ok(crate::pow::solve(&challenge.seed, challenge.difficulty))
    }

    async fn admit(&mut self, i: u64, pow: Option<&str>) -> Result<Admission, &'static str> {
        let body = format!(r#"{{"sku":"flash-001","quantity":1,"customer":"c-{i}"}}"#);
        let mut req = self
            .conn
            .target()
            .request(Method::POST, &self.path, Bytes::from(body))
            .map_err(|e| e.kind())?;
        let key = format!("{}-{i}", self.run_id);
        if let Ok(v) = HeaderValue::from_str(&key) {
            req.headers_mut().insert("idempotency-key", v);
        }
        if let Some(v) = pow.and_then(|p| HeaderValue::from_str(p).ok()) {
            req.headers_mut().insert("flashgate-pow", v);
        }
        let answer = self.conn.send(req).await.map_err(|e| e.kind())?;
        Ok(read_answer(&answer))
    }
}

/// Reads an admission answer; a 2xx without a usable ticket is counted under
/// the code `no_ticket` so that it shows in the report.
fn read_answer(answer: &Answer) -> Admission {
    let status = answer.status.as_u16();
    if answer.status.is_success() {
        let ticket = serde_json::from_slice::<TicketBody>(&answer.body)
            .ok()
            .filter(|t| is_url_safe(&t.ticket));
        return match ticket {
            Some(t) => Admission {
                status,
                code: None,
                ticket: Some(Ticket {
                    id: t.ticket,
                    eta_seconds: t.eta_seconds,
                    retry_after: answer.retry_after().unwrap_or(Duration::from_secs(1)),
                }),
            },
            None => Admission {
                status,
                code: Some("no_ticket".to_string()),
                ticket: None,
            },
        };
    }
    let code = serde_json::from_slice::<ProblemBody>(&answer.body)
        .ok()
        .and_then(|p| p.code)
        // Bound what a misbehaving server can put in the report's keys.
        .filter(|c| c.len() <= 64);
    Admission {
        status,
        code,
        ticket: None,
    }
}

/// Tickets go into a URL path unescaped, so only the spec's alphabet passes.
pub(crate) fn is_url_safe(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A prefix that makes this run's idempotency keys unique across runs.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("lt-{:x}-{:x}", std::process::id(), nanos)
}
