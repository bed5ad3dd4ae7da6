//! Wall time, injected: the sale's phase (`opens_at`, `closes_at`), the
//! admitted and completed timestamps on tickets and the queue-wait metrics
//! read it through a [`Clock`], so tests can set it instead of waiting for
//! it. Monotonic time (deadlines, rates, timeouts) is `tokio::time::Instant`
//! everywhere, which `tokio::time::pause()` drives.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where wall time comes from.
pub trait Clock: Send + Sync {
    /// The time now.
    fn now(&self) -> SystemTime;

    /// Milliseconds since the Unix epoch, now (0 before it).
    fn now_ms(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock for tests: it starts where it is told and moves with tokio's
/// clock, so under `tokio::time::pause()` wall time and monotonic time stand
/// still and advance together; [`TestClock::set`] and
/// [`TestClock::advance`] step it on its own, as an NTP step would.
#[derive(Debug)]
pub struct TestClock {
    /// A wall time and the tokio instant it was true at.
    base: Mutex<(SystemTime, tokio::time::Instant)>,
}

impl TestClock {
    /// A clock that reads `start` now.
    pub fn new(start: SystemTime) -> Self {
        TestClock {
            base: Mutex::new((start, tokio::time::Instant::now())),
        }
    }

    fn base(&self) -> std::sync::MutexGuard<'_, (SystemTime, tokio::time::Instant)> {
        // Two plain values; a panic cannot leave them inconsistent.
        self.base.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the clock read `t` now.
    pub fn set(&self, t: SystemTime) {
        *self.base() = (t, tokio::time::Instant::now());
    }

    /// Steps the clock forward by `d`, without moving tokio's.
    pub fn advance(&self, d: Duration) {
        self.base().0 += d;
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        let (wall, at) = *self.base();
        wall + tokio::time::Instant::now().saturating_duration_since(at)
    }
}

/// The time between two events at `rate` per second: at least 1 ns, and at
/// most a year (a rate the admin API accepts, as small as `5e-324`, has no
/// period a `Duration` holds; a year is paused in all but name).
pub fn period(rate: f64) -> Duration {
    const LONGEST: f64 = 365.0 * 24.0 * 3600.0;
    Duration::from_secs_f64((1.0 / rate).min(LONGEST)).max(Duration::from_nanos(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_test_clock_moves_with_tokio_and_can_be_stepped() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = TestClock::new(start);
        assert_eq!(clock.now(), start);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), start + Duration::from_millis(1500));
        assert_eq!(clock.now_ms(), 1_800_000_001_500);
        clock.advance(Duration::from_secs(60));
        assert_eq!(clock.now(), start + Duration::from_millis(61_500));
        clock.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn the_period_of_a_vanishing_rate_is_a_year() {
        assert_eq!(period(5e-324), Duration::from_secs(365 * 24 * 3600));
        assert_eq!(
            period(f64::MIN_POSITIVE),
            Duration::from_secs(365 * 24 * 3600)
        );
        assert_eq!(period(4.0), Duration::from_millis(250));
        assert_eq!(period(1e12), Duration::from_nanos(1));
    }
}
