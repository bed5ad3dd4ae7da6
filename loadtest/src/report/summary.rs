//! The report's sections, each computed from the raw run.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::Histogram;

use super::{Admission, AnswerCount, Drain, EtaError, Percentiles, Tickets, Upstream};
use crate::burst::{Fate, Polled, Run, Ticket};

/// Largest value a histogram holds (one hour in microseconds); larger
/// values are clamped to it.
const HISTOGRAM_MAX: u64 = 3_600_000_000;

pub(super) fn admission(run: &Run) -> Admission {
    let mut latency = histogram();
    let mut answers: BTreeMap<(u16, Option<String>), u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut admitted = 0;
    for sent in &run.sent {
        latency.saturating_record(sent.latency.as_micros() as u64);
        match &sent.result {
            Ok(a) => {
                *answers.entry((a.status, a.code.clone())).or_default() += 1;
                if a.ticket.is_some() {
                    admitted += 1;
                }
            }
            Err(kind) => *errors.entry(kind.to_string()).or_default() += 1,
        }
    }
    let answered: u64 = answers.values().sum();
    let secs = run.admission_elapsed.as_secs_f64();
    let per_second = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Admission {
        sent: run.sent.len() as u64,
        answered,
        admitted,
        duration_seconds: secs,
        throughput_per_second: per_second(answered),
        admitted_per_second: per_second(admitted),
        latency_ms: percentiles(&latency, 1e-3),
        answers: answers
            .into_iter()
            .map(|((status, code), count)| AnswerCount {
                status,
                code,
                count,
            })
            .collect(),
        errors,
    }
}

pub(super) fn tickets(run: &Run) -> Option<Tickets> {
    let polled = run.polled.as_ref()?;
    let mut t = Tickets {
        total: polled.len() as u64,
        poll_seconds: run.poll_elapsed.as_secs_f64(),
        ..Tickets::default()
    };
    for p in polled {
        match p.fate {
            Fate::Completed => t.completed += 1,
            Fate::Failed => t.failed += 1,
            Fate::Cancelled => t.cancelled += 1,
            Fate::Expired => t.expired += 1,
            Fate::Vanished => t.vanished += 1,
            Fate::NeverFinished => t.never_finished += 1,
        }
        if let Some(status) = p.upstream_status {
            *t.upstream_statuses.entry(status.to_string()).or_default() += 1;
        }
        t.max_attempts = t.max_attempts.max(p.attempts.unwrap_or(0));
    }
    Some(t)
}

/// Completed tickets with their admission-time promise.
fn completed(run: &Run) -> impl Iterator<Item = (&Ticket, &Polled)> {
    let polled = run.polled.as_deref().unwrap_or_default();
    run.tickets()
        .map(|(_, t)| t)
        .zip(polled)
        .filter(|(_, p)| p.fate == Fate::Completed)
}

/// Milliseconds from admission to completion, as the gateway stamped them.
fn wait_ms(p: &Polled) -> Option<i64> {
    Some(p.completed_at_ms? - p.admitted_at_ms?).filter(|w| *w >= 0)
}

pub(super) fn waits(run: &Run) -> Option<Percentiles> {
    let mut h = histogram();
    for (_, p) in completed(run) {
        if let Some(ms) = wait_ms(p) {
            h.saturating_record(ms as u64 * 1000);
        }
    }
    (!h.is_empty()).then(|| percentiles(&h, 1e-6))
}

pub(super) fn eta_error(run: &Run) -> Option<EtaError> {
    let mut errors: Vec<f64> = completed(run)
        .filter_map(|(t, p)| Some(wait_ms(p)? as f64 / 1000.0 - t.eta_seconds?))
        .collect();
    if errors.is_empty() {
        return None;
    }
    errors.sort_by(f64::total_cmp);
    let n = errors.len() as f64;
    Some(EtaError {
        count: errors.len() as u64,
        mean: errors.iter().sum::<f64>() / n,
        mean_absolute: errors.iter().map(|e| e.abs()).sum::<f64>() / n,
        p50: rank(&errors, 0.50),
        p90: rank(&errors, 0.90),
        p99: rank(&errors, 0.99),
    })
}

pub(super) fn drain(run: &Run) -> Option<Drain> {
    let polled = run.polled.as_ref()?;
    let mut done: Vec<i64> = polled.iter().filter_map(|p| p.completed_at_ms).collect();
    done.sort_unstable();
    let (first, last) = (*done.first()?, *done.last()?);
    let seconds = (last - first) as f64 / 1000.0;
    Some(Drain {
        completions: done.len() as u64,
        first_at: rfc3339(first),
        last_at: rfc3339(last),
        seconds,
        // n completions span n-1 intervals; one completion has no rate.
        rate_per_second: if seconds > 0.0 {
            (done.len() - 1) as f64 / seconds
        } else {
            0.0
        },
    })
}

pub(super) fn upstream(run: &Run) -> Option<Upstream> {
    let view = run.upstream.as_ref()?;
    let (b, a) = (&view.before, &view.after);
    let mut not_seen = 0;
    let mut lost = 0;
    let mut lost_examples = Vec::new();
    let fates = run.polled.as_deref();
    for (i, (_, ticket)) in run.tickets().enumerate() {
        if view.keys.contains(&ticket.id) {
            continue;
        }
        not_seen += 1;
        let fate = fates.and_then(|f| f.get(i)).map(|p| p.fate);
        // At-least-once delivery excuses failed and cancelled tickets, and an
        // unfinished ticket may yet be delivered.
        let excused = matches!(
            fate,
            None | Some(Fate::Failed | Fate::Cancelled | Fate::NeverFinished)
        );
        if !excused {
            lost += 1;
            if lost_examples.len() < 5 {
                lost_examples.push(ticket.id.clone());
            }
        }
    }
    Some(Upstream {
        received: a.received.saturating_sub(b.received),
        distinct: a.distinct.saturating_sub(b.distinct),
        duplicates: a.duplicates.saturating_sub(b.duplicates),
        errors_injected: a.errors_injected.saturating_sub(b.errors_injected),
        not_seen,
        lost: fates.map(|_| lost),
        lost_examples,
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX, 3).expect("constant bounds are valid")
}

/// Percentiles of a microsecond histogram, multiplied by `scale`.
fn percentiles(h: &Histogram<u64>, scale: f64) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let at = |q: f64| h.value_at_quantile(q) as f64 * scale;
    Percentiles {
        count: h.len(),
        mean: h.mean() * scale,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: h.max() as f64 * scale,
    }
}

/// Nearest-rank quantile of sorted values.
fn rank(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
