//! The adaptive drain (`adaptive = true`): finds the rate the upstream can
//! take instead of making the operator guess it. AIMD, as TCP does: each
//! instance judges its own upstream answers in one-second windows; an
//! overloaded window multiplies the queue's rate by 0.7, a healthy window
//! with a backlog adds a twentieth of the `[floor, ceiling]` range. The rate
//! is the shared `drain_rate` knob, stepped by the backend so that any
//! number of instances judging the same overload take one step, not N.
//!
//! Overloaded means: at least [`OVERLOAD_SHARE`] of the answers were 429,
//! 502, 503, 504, timeouts or refused connections, or the median latency
//! exceeded three times the lowest median seen plus [`LATENCY_SLACK`] (an
//! upstream that queues before it fails).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::events::ADAPTIVE_ACTOR;
use crate::backend::knobs::RateStep;
use crate::config::AdaptiveBounds;
use crate::metrics::Metrics;
use crate::queue::Queue;

/// How often each instance judges its window.
const WINDOW: Duration = Duration::from_secs(1);
/// Overload answers that make a window overloaded.
const OVERLOAD_SHARE: f64 = 0.05;
/// Latency growth below this is noise, not queueing.
const LATENCY_SLACK: Duration = Duration::from_millis(50);
/// Answers a window needs before its latency means anything.
const MIN_SAMPLES: usize = 3;

/// One queue's observations on this instance.
pub struct Adaptive {
    bounds: AdaptiveBounds,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Latencies of this window's answers that were not overload answers.
    latencies: Vec<Duration>,
    answers: usize,
    overloaded: usize,
    /// The lowest window median seen: the upstream's unloaded latency.
    baseline: Option<Duration>,
}

/// What a window says about the upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Slow down; why.
    Overloaded(String),
    /// Healthy and there is a backlog: speed up.
    Healthy,
    /// Too few answers, or nothing waiting: stay.
    Hold,
}

impl Adaptive {
    pub fn new(bounds: AdaptiveBounds) -> Self {
        Adaptive {
            bounds,
            window: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Counters only; a panic cannot leave them unusable.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one upstream attempt.
    pub fn record(&self, latency: Duration, overloaded: bool) {
        let mut w = self.lock();
        w.answers += 1;
        if overloaded {
            w.overloaded += 1;
        } else {
            w.latencies.push(latency);
        }
    }

    /// Judges the window that ends now and starts the next.
    pub fn judge(&self, backlog: bool) -> Verdict {
        let mut w = self.lock();
        let (answers, overloaded) = (w.answers, w.overloaded);
        let mut latencies = std::mem::take(&mut w.latencies);
        w.answers = 0;
        w.overloaded = 0;
        if answers == 0 {
            return Verdict::Hold;
        }
        let share = overloaded as f64 / answers as f64;
        if share >= OVERLOAD_SHARE {
            return Verdict::Overloaded(format!(
                "{overloaded} of {answers} answers were overload answers"
            ));
        }
        if latencies.len() < MIN_SAMPLES {
            return Verdict::Hold;
        }
        latencies.sort_unstable();
        let median = latencies[latencies.len() / 2];
        let baseline = *w.baseline.get_or_insert(median);
        w.baseline = Some(baseline.min(median));
        if median > baseline * 3 + LATENCY_SLACK {
            return Verdict::Overloaded(format!(
                "median latency {median:?}, unloaded {baseline:?}"
            ));
        }
        if backlog {
            Verdict::Healthy
        } else {
            Verdict::Hold
        }
    }

    fn step(&self, down: bool, configured: f64) -> RateStep {
        RateStep {
            down,
            floor: self.bounds.floor,
            ceiling: self.bounds.ceiling,
            configured,
        }
    }
}

/// Judges the window every second and steps the shared rate, until `stop`.
pub async fn run(
    queue: Arc<Queue>,
    adaptive: Arc<Adaptive>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let name = queue.name.as_str();
    let mut tick = tokio::time::interval(WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let backlog = metrics.queue_depth.with_label_values(&[name]).get() > 0;
        let (down, why) = match adaptive.judge(backlog) {
            Verdict::Hold => continue,
            Verdict::Overloaded(why) => (true, why),
            Verdict::Healthy => (false, "healthy with a backlog".to_string()),
        };
        let before = queue.knobs().drain_rate(&queue.config());
        let step = adaptive.step(down, queue.config().drain_rate);
        match queue.backend.adapt_rate(&step).await {
            Ok(Some(knobs)) => {
                failing = false;
                let after = knobs.drain_rate(&queue.config());
                queue.update_knobs(knobs);
                info!(queue = name, actor = ADAPTIVE_ACTOR, from = before, to = after, %why, "adaptive drain rate changed");
            }
            // Another instance stepped within the last second.
            Ok(None) => failing = false,
            Err(e) => {
                if !failing {
                    warn!(queue = name, error = %e, "cannot step the adaptive drain rate; retrying");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive() -> Adaptive {
        Adaptive::new(AdaptiveBounds {
            floor: 10.0,
            ceiling: 110.0,
        })
    }

    fn answers(a: &Adaptive, n: usize, ms: u64, overloaded: usize) {
        for i in 0..n {
            a.record(Duration::from_millis(ms), i < overloaded);
        }
    }

    #[test]
    fn overload_answers_or_queueing_latency_mean_overloaded() {
        let a = adaptive();
        answers(&a, 100, 5, 4);
        assert_eq!(a.judge(true), Verdict::Healthy, "4% is noise");
        answers(&a, 100, 5, 5);
        assert!(matches!(a.judge(true), Verdict::Overloaded(_)), "5% is not");
        answers(&a, 100, 60, 0);
        assert_eq!(a.judge(true), Verdict::Healthy, "60 ms < 3 × 5 + 50");
        answers(&a, 100, 70, 0);
        assert!(matches!(a.judge(true), Verdict::Overloaded(w) if w.contains("median")));
    }

    #[test]
    fn no_backlog_or_no_answers_hold() {
        let a = adaptive();
        assert_eq!(a.judge(true), Verdict::Hold);
        answers(&a, 50, 5, 0);
        assert_eq!(a.judge(false), Verdict::Hold, "idle capacity says nothing");
    }

    #[test]
    fn steps_are_multiplicative_down_additive_up_and_bounded() {
        let a = adaptive();
        assert_eq!(a.step(true, 100.0).apply(100.0), 70.0);
        assert_eq!(a.step(false, 100.0).apply(70.0), 75.0);
        assert_eq!(a.step(false, 100.0).apply(108.0), 110.0, "ceiling");
        assert_eq!(a.step(true, 100.0).apply(12.0), 10.0, "floor");
    }
}
