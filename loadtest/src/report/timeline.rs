//! Admissions, drain and queue depth over time, in buckets sized so that a
//! chart of any run has a readable number of points.

use serde::{Deserialize, Serialize};

use crate::burst::Run;

/// Bucket widths to choose from, seconds.
const WIDTHS: [f64; 14] = [
    0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 300.0, 600.0,
];
/// Most buckets in a timeline.
const MAX_POINTS: f64 = 150.0;

/// Series over time, from the burst's start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Width of each bucket, seconds.
    pub bucket_seconds: f64,
    /// One point per bucket, in time order.
    pub points: Vec<Point>,
}

/// One bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Start of the bucket, seconds since the burst started.
    pub t: f64,
    /// Tickets handed out per second in this bucket.
    pub admitted_per_second: f64,
    /// Tickets completed (or failed) per second, from their `completed_at`.
    pub drained_per_second: f64,
    /// Admitted minus drained so far, at the end of the bucket: an estimate
    /// of the queue's depth (only this run's tickets).
    pub depth: u64,
}

pub(super) fn build(run: &Run) -> Timeline {
    let admitted: Vec<f64> = run
        .tickets()
        .map(|(s, _)| s.answered_at.as_secs_f64())
        .collect();
    // completed_at is the gateway's clock, admissions ours: both are wall
    // clocks of (usually) one machine, so they share an origin.
    let origin_ms = run
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let drained: Vec<f64> = run
        .polled
        .iter()
        .flatten()
        .filter_map(|p| p.completed_at_ms)
        .map(|ms| ((ms - origin_ms) as f64 / 1000.0).max(0.0))
        .collect();
    bucket(&admitted, &drained)
}

/// Buckets event times (seconds since start) into a timeline.
pub fn bucket(admitted: &[f64], drained: &[f64]) -> Timeline {
    let span = admitted
        .iter()
        .chain(drained)
        .copied()
        .fold(0.0_f64, f64::max);
    if admitted.is_empty() && drained.is_empty() {
        return Timeline::default();
    }
    let width = WIDTHS
        .iter()
        .copied()
        .find(|w| span / w < MAX_POINTS)
        .unwrap_or(WIDTHS[WIDTHS.len() - 1]);
    let n = (span / width).floor() as usize + 1;
    let mut ins = vec![0u64; n];
    let mut outs = vec![0u64; n];
    for (times, counts) in [(admitted, &mut ins), (drained, &mut outs)] {
        for t in times {
            let i = ((t / width).floor() as usize).min(n - 1);
            counts[i] += 1;
        }
    }
    let mut depth: i64 = 0;
    let points = (0..n)
        .map(|i| {
            depth += ins[i] as i64 - outs[i] as i64;
            Point {
                t: i as f64 * width,
                admitted_per_second: ins[i] as f64 / width,
                drained_per_second: outs[i] as f64 / width,
                // Clock skew can put a completion before its admission.
                depth: depth.max(0) as u64,
            }
        })
        .collect();
    Timeline {
        bucket_seconds: width,
        points,
    }
}
