//! When the drain tries again: which upstream answers are retried, how long
//! a retry waits (backoff, the upstream's `Retry-After`), and backend writes
//! retried until they land.

use std::future::Future;
use std::time::Duration;

use tracing::warn;

use super::Drain;
use crate::backend::QueueError;
use crate::upstream::{Answer, UpstreamError};

/// First retry delay; doubled per attempt, with full jitter.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest wait between attempts, whatever the upstream's Retry-After says.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(30);
/// Longest wait between tries of a failed queue-backend call.
pub(super) const BACKEND_RETRY_MAX: Duration = Duration::from_secs(5);

/// 429, 502, 503 and 504 ask to be retried (SPEC §4); any other status is final.
pub(super) fn is_retryable(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// Whether an attempt's outcome says the upstream is overloaded: the
/// retryable statuses, a timeout or a failed connection.
pub(super) fn is_overload(result: &Result<Answer, UpstreamError>) -> bool {
    match result {
        Ok(answer) => is_retryable(answer.status),
        Err(UpstreamError::Timeout(_) | UpstreamError::Connect(_)) => true,
        Err(UpstreamError::Body(_)) => false,
    }
}

/// `Retry-After` in seconds (HTTP dates are rare from APIs and ignored).
pub(super) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Exponential backoff with full jitter: uniform in [base·2ⁿ⁻¹/2, base·2ⁿ⁻¹].
pub(super) fn backoff(attempt: u32, max: Duration) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(max);
    let jitter = getrandom::u64().unwrap_or(u64::MAX / 2) as f64 / u64::MAX as f64;
    ceiling.mul_f64(0.5 + jitter / 2.0)
}

/// How long a retry after `attempt` waits: the upstream's `Retry-After`
/// when it asks for longer than the backoff, never over [`RETRY_MAX`].
pub(super) fn retry_wait(attempt: u32, after: Option<Duration>) -> Duration {
    after
        .unwrap_or(Duration::ZERO)
        .max(backoff(attempt, RETRY_MAX))
        .min(RETRY_MAX)
}

impl Drain {
    /// Runs a backend write until it succeeds; false if shutdown came first
    /// (the entry then stays pending and is redelivered).
    pub(super) async fn persist<F, Fut>(&self, op: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), QueueError>>,
    {
        self.persist_value(op).await.is_some()
    }

    /// [`Drain::persist`] for a write that answers something.
    pub(super) async fn persist_value<T, F, Fut>(&self, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        let mut failures = 0;
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 30 == 0 {
                        warn!(queue = %self.name(), error = %e, "cannot record dispatch state; retrying");
                    }
                    if !self.pause(backoff(failures, BACKEND_RETRY_MAX)).await {
                        return None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..20 {
            let d = backoff(attempt, RETRY_MAX);
            assert!(d <= RETRY_MAX, "{attempt}: {d:?}");
            let exp = RETRY_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(RETRY_MAX);
            assert!(d >= exp / 2, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn only_overload_statuses_are_retried() {
        for code in [429, 502, 503, 504] {
            assert!(is_retryable(http::StatusCode::from_u16(code).unwrap()));
        }
        for code in [200, 201, 400, 409, 410, 422, 500] {
            assert!(!is_retryable(http::StatusCode::from_u16(code).unwrap()));
        }
    }

    #[test]
    fn retry_after_wins_over_the_backoff_up_to_the_cap() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(retry_wait(1, secs(2)), Duration::from_secs(2));
        assert_eq!(retry_wait(1, secs(3600)), RETRY_MAX);
        // Shorter than the backoff: the backoff.
        let short = retry_wait(3, secs(0));
        assert!(
            short >= RETRY_BASE * 2 && short <= RETRY_BASE * 4,
            "{short:?}"
        );
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(retry_after(&h), secs(7));
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2026 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
