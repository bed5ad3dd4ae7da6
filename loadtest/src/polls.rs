//! `flashgate-loadtest polls`: closed-model ticket-status load. C workers,
//! each on its own keep-alive connection, send `GET /tickets/{id}` for
//! existing tickets as fast as answers come back, round robin over the
//! tickets given, so that poll throughput can be set against the ceiling's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::client::{ClientError, Connection, Target};
use crate::report::Percentiles;

/// Latencies above an hour are clamped: no poll waits that long.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;

/// `flashgate-loadtest polls` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Base URL of the gateway, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    pub target: String,
    /// A file of ticket ids, one per line (blank lines ignored).
    #[arg(long)]
    pub tickets: Option<PathBuf>,
    /// A ticket id to poll (repeatable).
    #[arg(long)]
    pub ticket: Vec<String>,
    /// Admit this many tickets first (`POST {target}{--path}`), then poll them.
    #[arg(long, default_value_t = 0)]
    pub admit: u64,
    /// Path of the queued route used by `--admit`.
    #[arg(long, default_value = "/checkout")]
    pub path: String,
    /// Poll requests to send in total.
    #[arg(long, default_value_t = 10_000)]
    pub requests: u64,
    /// Connections (closed model: each sends as fast as answers come back).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Deadline of one request, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl Options {
    /// Options for `requests` polls of `tickets` at `concurrency` against
    /// `target`, every other setting at its default.
    pub fn new(
        target: impl Into<String>,
        tickets: Vec<String>,
        requests: u64,
        concurrency: usize,
    ) -> Self {
        Options {
            target: target.into(),
            tickets: None,
            ticket: tickets,
            admit: 0,
            path: "/checkout".to_string(),
            requests,
            concurrency,
            timeout: Duration::from_secs(30),
            report: None,
        }
    }
}

/// Why a poll load could not run. Failed polls are counted, not errors.
#[derive(Debug, thiserror::Error)]
pub enum PollsError {
    /// A flag value makes no sense.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// The tickets file could not be read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The target cannot be reached, or `--admit` got no ticket.
    #[error("the target is unreachable")]
    Target(#[source] ClientError),
    /// An `--admit` request was answered without a ticket.
    #[error("admission {0} got no ticket (status {1})")]
    NoTicket(u64, u16),
    /// The report could not be written.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a poll load found out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollReport {
    /// The gateway's base URL.
    pub target: String,
    /// Distinct tickets polled.
    pub tickets: usize,
    /// Connections used.
    pub concurrency: usize,
    /// Polls sent.
    pub sent: u64,
    /// Polls that got an HTTP answer (any status).
    pub answered: u64,
    /// From the first poll to the last answer, seconds.
    pub duration_seconds: f64,
    /// HTTP answers per second over `duration_seconds`.
    pub throughput_per_second: f64,
    /// Answer latency, milliseconds.
    pub latency_ms: Percentiles,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// Polls that got no HTTP answer, by kind (`connect`, `timeout`, `http`).
    pub errors: BTreeMap<String, u64>,
}

/// Gathers the tickets, runs the poll load, writes `--report`, returns the report.
pub async fn run(options: Options) -> Result<PollReport, PollsError> {
    let target = Target::parse(&options.target).map_err(PollsError::Target)?;
    let mut tickets = options.ticket.clone();
    if let Some(path) = &options.tickets {
        let text = std::fs::read_to_string(path).map_err(|source| PollsError::Read {
            path: path.clone(),
            source,
        })?;
        tickets.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    tickets.extend(admit(&options, &target).await?);
    validate(&options, &tickets)?;

    let tickets: Arc<[String]> = tickets.into();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.min(options.requests as usize) {
        let worker = Worker {
            conn: Connection::new(target.clone(), options.timeout),
            tickets: tickets.clone(),
            next: next.clone(),
            requests: options.requests,
        };
        workers.spawn(worker.run());
    }
    let mut tally = Tally::default();
    while let Some(done) = workers.join_next().await {
        // A worker only ends by running out of requests; a panic would be a
        // bug in this tool, and its polls are simply missing from the count.
        if let Ok(part) = done {
            tally.merge(part);
        }
    }
    let elapsed = started.elapsed();

    let report = tally.report(&options, tickets.len(), elapsed);
    if let Some(path) = &options.report {
        let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
        std::fs::write(path, json).map_err(|source| PollsError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

fn validate(options: &Options, tickets: &[String]) -> Result<(), PollsError> {
    let invalid = |m: &str| Err(PollsError::Invalid(m.to_string()));
    if options.requests == 0 || options.concurrency == 0 {
        return invalid("--requests and --concurrency must be at least 1");
    }
    if tickets.is_empty() {
        return invalid("no tickets: give --ticket, --tickets FILE or --admit N");
    }
    if !tickets.iter().all(|t| crate::burst::is_url_safe(t)) {
        return invalid("a ticket id has characters outside [A-Za-z0-9_-]");
    }
    Ok(())
}

/// `--admit N`: N admissions on one connection, returning their tickets.
async fn admit(options: &Options, target: &Target) -> Result<Vec<String>, PollsError> {
    #[derive(Deserialize)]
    struct TicketBody {
        ticket: String,
    }
    let mut conn = Connection::new(target.clone(), options.timeout);
    let mut tickets = Vec::with_capacity(options.admit as usize);
    for i in 0..options.admit {
        let body = format!(r#"{{"sku":"flash-001","quantity":1,"customer":"p-{i}"}}"#);
        let req = target
            .request(Method::POST, &options.path, Bytes::from(body))
            .map_err(PollsError::Target)?;
        let answer = conn.send(req).await.map_err(PollsError::Target)?;
        let ticket = serde_json::from_slice::<TicketBody>(&answer.body)
            .ok()
            .filter(|_| answer.status.is_success())
            .ok_or(PollsError::NoTicket(i, answer.status.as_u16()))?;
        tickets.push(ticket.ticket);
    }
    Ok(tickets)
}

struct Worker {
    conn: Connection,
    tickets: Arc<[String]>,
    next: Arc<AtomicU64>,
    requests: u64,
}

impl Worker {
    async fn run(mut self) -> Tally {
        let mut tally = Tally::default();
        let mut path = String::with_capacity(64);
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.requests {
                return tally;
            }
            let ticket = &self.tickets[(i % self.tickets.len() as u64) as usize];
            path.clear();
            path.push_str("/tickets/");
            path.push_str(ticket);
            let sent = Instant::now();
            let result = match self.conn.target().request(Method::GET, &path, Bytes::new()) {
                Ok(req) => self.conn.send(req).await.map(|a| a.status.as_u16()),
                Err(e) => Err(e),
            };
            tally.record(sent.elapsed(), result.map_err(|e| e.kind()));
        }
    }
}

/// One worker's counts, merged at the end.
struct Tally {
    latency_us: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    sent: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency_us: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3)
                .expect("constant bounds are valid"),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            sent: 0,
        }
    }
}

impl Tally {
    fn record(&mut self, latency: Duration, result: Result<u16, &'static str>) {
        self.sent += 1;
        match result {
            Ok(status) => {
                let us = (latency.as_micros() as u64).clamp(1, HISTOGRAM_MAX_MICROS);
                // In bounds by the clamp above.
                let _ = self.latency_us.record(us);
                *self.statuses.entry(status).or_default() += 1;
            }
            Err(kind) => *self.errors.entry(kind.to_string()).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.sent += other.sent;
    }

    fn report(self, options: &Options, tickets: usize, elapsed: Duration) -> PollReport {
        let answered = self.statuses.values().sum::<u64>();
        let seconds = elapsed.as_secs_f64();
        let h = &self.latency_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let latency_ms = if h.is_empty() {
            Percentiles::default()
        } else {
            Percentiles {
                count: h.len(),
                mean: h.mean() / 1000.0,
                p50: ms(0.50),
                p90: ms(0.90),
                p99: ms(0.99),
                p999: ms(0.999),
                max: h.max() as f64 / 1000.0,
            }
        };
        PollReport {
            target: options.target.clone(),
            tickets,
            concurrency: options.concurrency,
            sent: self.sent,
            answered,
            duration_seconds: seconds,
            throughput_per_second: if seconds > 0.0 {
                answered as f64 / seconds
            } else {
                0.0
            },
            latency_ms,
            statuses: self.statuses,
            errors: self.errors,
        }
    }
}

/// The report as a few aligned lines for a terminal.
pub fn table(r: &PollReport) -> String {
    let l = &r.latency_ms;
    let statuses: Vec<String> = r
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    let errors: Vec<String> = r.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    format!(
        "flashgate ticket polls against {} ({} tickets, {} connections)\n\n\
         {:<14}{}\n{:<14}{}\n{:<14}{:.3} s\n{:<14}{:.0} answers/s\n\
         {:<14}p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms\n\
         {:<14}{}\n{:<14}{}\n",
        r.target,
        r.tickets,
        r.concurrency,
        "sent",
        r.sent,
        "answered",
        r.answered,
        "duration",
        r.duration_seconds,
        "throughput",
        r.throughput_per_second,
        "latency",
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        "statuses",
        statuses.join(", "),
        "errors",
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(", ")
        },
    )
}
