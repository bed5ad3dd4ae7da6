//! The burst's numbers: computed from what was measured, serialised as the
//! JSON report, and rendered as a table for people.

mod summary;
mod table;
mod timeline;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::burst::Run;

pub use table::render as table;
pub use timeline::{Point, Timeline};

/// Everything a burst found out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The gateway's base URL.
    pub target: String,
    /// `closed` (as fast as answers come back) or `open` (fixed arrival rate).
    pub model: String,
    /// Requests asked for.
    pub requests: u64,
    /// Connections used for admissions.
    pub concurrency: usize,
    /// Open model's arrivals per second.
    pub rate: Option<f64>,
    /// When the burst started, RFC 3339.
    pub started_at: String,
    /// The burst's answers.
    pub admission: Admission,
    /// How the tickets ended; absent with `--no-poll`.
    pub tickets: Option<Tickets>,
    /// Admission to completion of completed tickets, seconds.
    pub wait_seconds: Option<Percentiles>,
    /// Actual wait minus the `eta_seconds` promised at admission, seconds
    /// (positive: later than promised).
    pub eta_error_seconds: Option<EtaError>,
    /// Completions per second while the queue drained.
    pub drain: Option<Drain>,
    /// The mock upstream's view, with `--upstream-stats`.
    pub upstream: Option<Upstream>,
    /// Admissions, drain and queue depth over time.
    pub timeline: Timeline,
}

/// The admission phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admission {
    /// Requests sent.
    pub sent: u64,
    /// Requests that got an HTTP answer (any status).
    pub answered: u64,
    /// Answers that carried a ticket.
    pub admitted: u64,
    /// From the first request to the last answer, seconds.
    pub duration_seconds: f64,
    /// HTTP answers per second over `duration_seconds`.
    pub throughput_per_second: f64,
    /// Tickets per second over `duration_seconds`.
    pub admitted_per_second: f64,
    /// Answer latency, milliseconds (open model: from the intended send time).
    pub latency_ms: Percentiles,
    /// Answers by status and problem `code`.
    pub answers: Vec<AnswerCount>,
    /// Requests that got no HTTP answer, by kind (`connect`, `timeout`, `http`).
    pub errors: BTreeMap<String, u64>,
}

/// Percentiles of one quantity, in the unit its field name says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values measured.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
}

/// How many answers had this status and code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerCount {
    /// HTTP status.
    pub status: u16,
    /// problem+json `code` (`no_ticket`: a 2xx without a usable ticket).
    pub code: Option<String>,
    /// Answers.
    pub count: u64,
}

/// How the admitted tickets ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tickets {
    /// Tickets polled.
    pub total: u64,
    /// `completed`: the upstream gave a final answer.
    pub completed: u64,
    /// `failed`: the gateway gave up.
    pub failed: u64,
    /// `cancelled`.
    pub cancelled: u64,
    /// `expired`.
    pub expired: u64,
    /// Polls answered 404: the gateway no longer knew the ticket.
    pub vanished: u64,
    /// Not terminal when `--poll-timeout` ran out.
    pub never_finished: u64,
    /// Time spent polling, seconds.
    pub poll_seconds: f64,
    /// Completed tickets by the upstream's final status.
    pub upstream_statuses: BTreeMap<String, u64>,
    /// Most upstream attempts any ticket needed.
    pub max_attempts: u64,
}

/// Error of the admission-time promise, seconds. The gateway promises the
/// wait before dispatch; the actual wait here ends at completion, so it also
/// holds the upstream's answer time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EtaError {
    /// Tickets with both a promise and a completion.
    pub count: u64,
    /// Mean of actual minus promised.
    pub mean: f64,
    /// Mean of the absolute error.
    pub mean_absolute: f64,
    /// Median of actual minus promised.
    pub p50: f64,
    /// 90th percentile of actual minus promised.
    pub p90: f64,
    /// 99th percentile of actual minus promised.
    pub p99: f64,
}

/// The drain as seen from the tickets' `completed_at`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    /// Tickets with a completion time.
    pub completions: u64,
    /// First completion, RFC 3339.
    pub first_at: String,
    /// Last completion, RFC 3339.
    pub last_at: String,
    /// From the first completion to the last, seconds.
    pub seconds: f64,
    /// Completions per second over that period (intervals, so n-1 of them).
    pub rate_per_second: f64,
}

/// What the mock upstream saw during the run (differences of its counters).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    /// Order requests received.
    pub received: u64,
    /// New distinct keys answered.
    pub distinct: u64,
    /// Redeliveries of a key already answered.
    pub duplicates: u64,
    /// Injected 503s.
    pub errors_injected: u64,
    /// Admitted tickets whose key the upstream never received.
    pub not_seen: u64,
    /// Of those, tickets that should have reached it: not `failed` or
    /// `cancelled` (allowed by at-least-once delivery) and not unfinished.
    /// Absent with `--no-poll`.
    pub lost: Option<u64>,
    /// A few lost tickets, to look up in the gateway's logs.
    pub lost_examples: Vec<String>,
}

/// Summarises a run.
pub fn build(run: &Run) -> Report {
    let options = &run.options;
    Report {
        target: options.target.clone(),
        model: if options.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_string(),
        requests: options.requests,
        concurrency: options.concurrency,
        rate: options.rate,
        started_at: humantime::format_rfc3339_millis(run.started_at).to_string(),
        admission: summary::admission(run),
        tickets: summary::tickets(run),
        wait_seconds: summary::waits(run),
        eta_error_seconds: summary::eta_error(run),
        drain: summary::drain(run),
        upstream: summary::upstream(run),
        timeline: timeline::build(run),
    }
}

#[cfg(test)]
mod tests;
