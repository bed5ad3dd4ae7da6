//! `flashgate-loadtest burst`: send a flash-sale burst of admissions, poll
//! every ticket to its end, check the upstream saw every order, and report.

mod admission;
mod poll;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};

use crate::chart;
use crate::client::{self, ClientError, Target};
use crate::report::{self, Report};
use crate::upstream::Stats;

pub(crate) use admission::is_url_safe;
pub use admission::{Admission, Sent, Ticket};
pub use poll::{Fate, Polled};

/// `flashgate-loadtest burst` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Base URL of the gateway, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    pub target: String,
    /// Admission requests to send in total.
    #[arg(long, default_value_t = 1000)]
    pub requests: u64,
    /// Connections (closed model: each sends as fast as answers come back).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open model: arrivals per second, latency counted from each request's
    /// intended send time. Absent = closed model.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Path of the queued route.
    #[arg(long, default_value = "/checkout")]
    pub path: String,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write an SVG chart over time here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// The mock upstream's base URL (or its `/stats` URL): read its counters
    /// before and after, and which keys it saw, to count lost tickets.
    #[arg(long)]
    pub upstream_stats: Option<String>,
    /// Do not poll tickets after the burst.
    #[arg(long)]
    pub no_poll: bool,
    /// Longest time spent polling tickets, e.g. `120s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    pub poll_timeout: Duration,
    /// Concurrent ticket polls (connections).
    #[arg(long, default_value_t = 32)]
    pub poll_concurrency: usize,
    /// Deadline of one request, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Proof of work: fetch a challenge (`GET /challenge`) before each
    /// admission and solve it natively; latency counts from the admission
    /// itself, the solve excluded.
    #[arg(long)]
    pub pow: bool,
}

impl Options {
    /// Options for a burst of `requests` at `concurrency` against `target`,
    /// every other setting at its default.
    pub fn new(target: impl Into<String>, requests: u64, concurrency: usize) -> Self {
        Options {
            target: target.into(),
            requests,
            concurrency,
            rate: None,
            path: "/checkout".to_string(),
            report: None,
            chart: None,
            upstream_stats: None,
            no_poll: false,
            poll_timeout: Duration::from_secs(120),
            poll_concurrency: 32,
            timeout: Duration::from_secs(30),
            quiet: true,
            pow: false,
        }
    }
}

/// Why a burst could not run. Failed requests during the run are not errors:
/// they are counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum BurstError {
    /// A flag value makes no sense.
    #[error("invalid option: {0}")]
    Invalid(String),
    /// The target cannot be reached at all.
    #[error("the target is unreachable")]
    Target(#[source] ClientError),
    /// The mock upstream's stats or keys could not be read.
    #[error("cannot read the upstream's {what}: {detail}")]
    Upstream { what: &'static str, detail: String },
    /// The report or chart could not be written.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything measured, before it is summarised into a [`Report`].
pub struct Run {
    /// The options the run used.
    pub options: Options,
    /// Wall-clock time the first request was due.
    pub started_at: SystemTime,
    /// From the first request to the last answer.
    pub admission_elapsed: Duration,
    /// One entry per request, in no particular order.
    pub sent: Vec<Sent>,
    /// One entry per ticket, in the order of `Run::tickets()`; `None` with `--no-poll`.
    pub polled: Option<Vec<Polled>>,
    /// Time spent polling.
    pub poll_elapsed: Duration,
    /// The upstream's view, with `--upstream-stats`.
    pub upstream: Option<UpstreamView>,
}

impl Run {
    /// Every ticket handed out, in a stable order.
    pub fn tickets(&self) -> impl Iterator<Item = (&Sent, &Ticket)> {
        self.sent.iter().filter_map(|s| match &s.result {
            Ok(Admission {
                ticket: Some(t), ..
            }) => Some((s, t)),
            _ => None,
        })
    }
}

/// The mock upstream's counters around the run and the keys it saw.
pub struct UpstreamView {
    /// `GET /stats` before the burst.
    pub before: Stats,
    /// `GET /stats` after polling ended.
    pub after: Stats,
    /// `GET /keys` after polling ended.
    pub keys: HashSet<String>,
}

/// Runs the burst, writes `--report` and `--chart`, and returns the report.
pub async fn run(options: Options) -> Result<Report, BurstError> {
    validate(&options)?;
    let target = Target::parse(&options.target).map_err(BurstError::Target)?;
    // Fail fast and plainly when nothing listens there, rather than report
    // N connection errors as a "result".
    preflight(&target).await?;
    let upstream_base = options.upstream_stats.as_deref().map(upstream_base);
    let before = match &upstream_base {
        Some(base) => Some(read_stats(base, options.timeout).await?),
        None => None,
    };

    let bar = progress(&options, options.requests, "admitting");
    let started_at = SystemTime::now();
    let started = Instant::now();
    let sent = admission::send_all(&options, &target, started, &bar).await;
    let admission_elapsed = sent.iter().map(|s| s.answered_at).max().unwrap_or_default();
    bar.finish_and_clear();

    let mut run = Run {
        options: options.clone(),
        started_at,
        admission_elapsed,
        sent,
        polled: None,
        poll_elapsed: Duration::ZERO,
        upstream: None,
    };
    if !options.no_poll {
        let tickets: Vec<(String, Instant)> = run
            .tickets()
            .map(|(s, t)| (t.id.clone(), started + s.answered_at + t.retry_after))
            .collect();
        let bar = progress(&options, tickets.len() as u64, "polling");
        let poll_started = Instant::now();
        run.polled = Some(poll::poll_all(&options, &target, tickets, &bar).await);
        run.poll_elapsed = poll_started.elapsed();
        bar.finish_and_clear();
    }
    if let (Some(base), Some(before)) = (upstream_base, before) {
        let after = read_stats(&base, options.timeout).await?;
        let keys = read_keys(&base, options.timeout).await?;
        run.upstream = Some(UpstreamView {
            before,
            after,
            keys,
        });
    }

    let report = report::build(&run);
    if let Some(path) = &options.report {
        let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
        write(path, &json)?;
    }
    if let Some(path) = &options.chart {
        write(path, chart::render(&report).as_bytes())?;
    }
    Ok(report)
}

fn validate(options: &Options) -> Result<(), BurstError> {
    let invalid = |m: &str| Err(BurstError::Invalid(m.to_string()));
    if options.requests == 0 {
        return invalid("--requests must be at least 1");
    }
    if options.concurrency == 0 || options.poll_concurrency == 0 {
        return invalid("--concurrency and --poll-concurrency must be at least 1");
    }
    if let Some(rate) = options.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return invalid("--rate must be a positive number of requests per second");
        }
    }
    if !options.path.starts_with('/') {
        return invalid("--path must start with /");
    }
    Ok(())
}

async fn preflight(target: &Target) -> Result<(), BurstError> {
    tokio::net::TcpStream::connect(&target.authority)
        .await
        .map(drop)
        .map_err(|source| {
            BurstError::Target(ClientError::Connect {
                addr: target.authority.clone(),
                source,
            })
        })
}

/// Accepts the upstream's base URL or its `/stats` URL.
fn upstream_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    url.strip_suffix("/stats").unwrap_or(url).to_string()
}

async fn read_stats(base: &str, timeout: Duration) -> Result<Stats, BurstError> {
    let fail = |detail: String| BurstError::Upstream {
        what: "stats",
        detail,
    };
    let answer = client::get(&format!("{base}/stats"), timeout)
        .await
        .map_err(|e| fail(chain(&e)))?;
    if !answer.status.is_success() {
        return Err(fail(format!("status {}", answer.status)));
    }
    serde_json::from_slice(&answer.body).map_err(|e| fail(e.to_string()))
}

async fn read_keys(base: &str, timeout: Duration) -> Result<HashSet<String>, BurstError> {
    let fail = |detail: String| BurstError::Upstream {
        what: "keys",
        detail,
    };
    let answer = client::get(&format!("{base}/keys"), timeout)
        .await
        .map_err(|e| fail(chain(&e)))?;
    if !answer.status.is_success() {
        return Err(fail(format!("status {}", answer.status)));
    }
    let text = std::str::from_utf8(&answer.body).map_err(|e| fail(e.to_string()))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn write(path: &PathBuf, bytes: &[u8]) -> Result<(), BurstError> {
    std::fs::write(path, bytes).map_err(|source| BurstError::Write {
        path: path.clone(),
        source,
    })
}

fn progress(options: &Options, len: u64, what: &'static str) -> ProgressBar {
    if options.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

#[cfg(test)]
mod tests;
