//! The drain's pacer: spaces upstream requests evenly at the governed rate.
//!
//! Why not a GCRA limiter (governor) here: with a burst of 1, GCRA drops
//! whatever time a waiter oversleeps, and tokio's timer oversleeps by up to a
//! millisecond, so a drain set to 1000/s ran at ~730/s. The pacer keeps an
//! absolute schedule instead: permit n is due at `start + n·period`, and a
//! waiter that wakes late is caught up within a small tolerance. After an
//! idle spell at most `burst` permits are due at once.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Lateness the schedule absorbs without losing rate: timer granularity
/// plus scheduling stalls on a busy machine. Over any window longer than
/// this the upstream sees at most the configured rate.
const CATCH_UP: Duration = Duration::from_millis(20);

/// An evenly spaced permit schedule shared by one queue's drain tasks.
pub struct Pacer {
    state: Mutex<State>,
}

struct State {
    period: Duration,
    burst: u32,
    /// When the next permit is due.
    next: Instant,
}

/// A granted permit: when it was due.
#[derive(Debug, Clone, Copy)]
pub struct Permit {
    due: Instant,
}

impl Pacer {
    /// `rate` permits per second, at most `burst` back to back.
    pub fn new(rate: f64, burst: u32) -> Self {
        Pacer {
            state: Mutex::new(State {
                period: period(rate),
                burst: burst.max(1),
                next: Instant::now(),
            }),
        }
    }

    /// Changes the rate from the next permit on.
    pub fn set_rate(&self, rate: f64, burst: u32) {
        let mut s = self.lock();
        s.period = period(rate);
        s.burst = burst.max(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two numbers; a panic cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the next permit is due and takes it.
    pub async fn ready(&self) -> Permit {
        let due = {
            let mut s = self.lock();
            let now = Instant::now();
            // Behind by more than the tolerance (idle, or stalled): restart
            // the schedule so that at most `burst` permits are due now.
            let backlog = s.period * (s.burst - 1);
            let earliest = now.checked_sub(backlog.max(CATCH_UP)).unwrap_or(now);
            if s.next < earliest {
                s.next = now.checked_sub(backlog).unwrap_or(now);
            }
            let due = s.next;
            let period = s.period;
            s.next += period;
            due
        };
        tokio::time::sleep_until(due).await;
        Permit { due }
    }

    /// Records that a permit was used now. A permit held long after it was
    /// due (while waiting for an entry) counts from its use, so the request
    /// after an idle spell keeps its distance.
    pub fn used(&self, permit: Permit) {
        let now = Instant::now();
        let mut s = self.lock();
        if now > permit.due + CATCH_UP {
            // As if this permit had been taken now, after an idle spell.
            let backlog = s.period * (s.burst - 1);
            let spaced = (now + s.period).checked_sub(backlog).unwrap_or(now);
            if s.next < spaced {
                s.next = spaced;
            }
        }
    }

    /// Permits due over `window` at the current rate (at least 1).
    pub fn per(&self, window: Duration) -> usize {
        let s = self.lock();
        (window.as_nanos() / s.period.as_nanos().max(1)).max(1) as usize
    }
}

fn period(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time is simulated (paused clock): the schedule is exact.
    #[tokio::test(start_paused = true)]
    async fn spaces_permits_evenly_and_keeps_the_rate() {
        let pacer = Pacer::new(1000.0, 1);
        let start = Instant::now();
        for _ in 0..1000 {
            let p = pacer.ready().await;
            pacer.used(p);
        }
        let took = Instant::now() - start;
        assert_eq!(took, Duration::from_millis(999), "1000 permits at 1000/s");
    }

    #[tokio::test(start_paused = true)]
    async fn late_waiters_catch_up_within_the_tolerance() {
        let pacer = Pacer::new(1000.0, 1);
        let start = Instant::now();
        for i in 0..100 {
            let p = pacer.ready().await;
            pacer.used(p);
            if i % 10 == 0 {
                // A stall shorter than the tolerance costs no permits.
                tokio::time::advance(Duration::from_millis(3)).await;
            }
        }
        assert_eq!(Instant::now() - start, Duration::from_millis(99));
    }

    #[tokio::test(start_paused = true)]
    async fn after_idle_only_burst_permits_are_due_at_once() {
        let pacer = Pacer::new(100.0, 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        let start = Instant::now();
        for _ in 0..3 {
            pacer.ready().await;
        }
        assert_eq!(Instant::now(), start, "three back to back");
        pacer.ready().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_held_while_idle_keeps_its_distance() {
        let pacer = Pacer::new(10.0, 1);
        let p = pacer.ready().await;
        // Waiting a second for an entry, then sending it.
        tokio::time::advance(Duration::from_secs(1)).await;
        let sent = Instant::now();
        pacer.used(p);
        pacer.ready().await;
        assert_eq!(Instant::now() - sent, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_changes_apply_to_the_next_permit() {
        let pacer = Pacer::new(10.0, 1);
        pacer.ready().await;
        pacer.set_rate(100.0, 1);
        let t = Instant::now();
        pacer.ready().await; // due at 100 ms under the old rate
        pacer.ready().await;
        assert_eq!(Instant::now() - t, Duration::from_millis(110));
    }
}
