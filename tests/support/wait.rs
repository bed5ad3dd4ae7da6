//! Waiting for a condition with a deadline: tests never sleep a guessed
//! time for something to happen.

use std::future::Future;
use std::time::{Duration, Instant};

/// Waits for `check` to return `Some`, polling every 25 ms, up to `limit`;
/// fails the test naming `what` when the deadline passes.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(limit, Duration::from_millis(25), what, check).await
}

/// [`eventually`], polling every `every`: for a server that need not be
/// asked more often (Prometheus evaluates once a second).
pub async fn eventually_every<T, F, Fut>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(every).await;
    }
}
