//! The drain tests' parts: a recording fake upstream answering from a
//! script, and a harness holding one queue on the embedded backend, its
//! drain and its metrics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Admit, AdmitLimits, Line, MemoryQueue, Prequeue, QueuedRequest, TicketStore};
use crate::clock::TestClock;
use crate::config::QueueConfig;
use crate::http::body::Body;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::ticket::{QueueTag, TicketId, TicketRecord};
use crate::upstream::{Answer, Upstream, UpstreamError};

/// What the fake upstream does with one call.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) retry_after: Option<u64>,
    /// How long it takes to answer.
    pub(super) delay: Duration,
    /// No answer: the connection is refused.
    pub(super) refused: bool,
    pub(super) body: &'static str,
}

impl Reply {
    pub(super) fn status(status: u16) -> Self {
        Reply {
            status,
            retry_after: None,
            delay: Duration::ZERO,
            refused: false,
            body: "",
        }
    }

    pub(super) fn refused() -> Self {
        Reply {
            refused: true,
            ..Reply::status(0)
        }
    }

    pub(super) fn retry_after(self, secs: u64) -> Self {
        Reply {
            retry_after: Some(secs),
            ..self
        }
    }

    pub(super) fn taking(self, delay: Duration) -> Self {
        Reply { delay, ..self }
    }

    pub(super) fn body(self, body: &'static str) -> Self {
        Reply { body, ..self }
    }
}

/// One request as the fake upstream received it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Call {
    /// Paused-clock time since the test started.
    pub(super) at: Duration,
    pub(super) ticket: String,
    /// `X-Flashgate-Attempt`.
    pub(super) attempt: u32,
}

/// A recording upstream: answers from its script, then `otherwise`.
pub(super) struct FakeUpstream {
    pub(super) start: Instant,
    pub(super) script: Mutex<VecDeque<Reply>>,
    pub(super) otherwise: Reply,
    pub(super) calls: Mutex<Vec<Call>>,
    pub(super) in_flight: AtomicUsize,
    pub(super) most_in_flight: AtomicUsize,
}

impl FakeUpstream {
    pub(super) fn new(script: Vec<Reply>, otherwise: Reply) -> Self {
        FakeUpstream {
            start: Instant::now(),
            script: Mutex::new(script.into()),
            otherwise,
            calls: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        }
    }

    pub(super) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// When each call arrived, in milliseconds since the start.
    pub(super) fn arrivals_ms(&self) -> Vec<u128> {
        self.calls().iter().map(|c| c.at.as_millis()).collect()
    }
}

#[async_trait]
impl Upstream for FakeUpstream {
    async fn call(&self, req: Request<Body>, _timeout: Duration) -> Result<Answer, UpstreamError> {
        let header = |name: &str| req.headers()[name].to_str().unwrap().to_string();
        self.calls.lock().unwrap().push(Call {
            at: Instant::now() - self.start,
            ticket: header("x-flashgate-ticket"),
            attempt: header("x-flashgate-attempt").parse().unwrap(),
        });
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.otherwise.clone());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(reply.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if reply.refused {
            return Err(UpstreamError::Connect("connection refused".into()));
        }
        let mut headers = HeaderMap::new();
        if let Some(secs) = reply.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        Ok(Answer {
            status: StatusCode::from_u16(reply.status).unwrap(),
            headers,
            body: Bytes::from_static(reply.body.as_bytes()),
        })
    }
}

/// One queue, its drain (once started) and what they report.
pub(super) struct Harness {
    pub(super) queue: Arc<Queue>,
    pub(super) backend: Arc<MemoryQueue>,
    pub(super) upstream: Arc<FakeUpstream>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) shutdown: CancellationToken,
    pub(super) tracker: TaskTracker,
    pub(super) drain: Option<JoinHandle<()>>,
}

/// A queue `q` at 10/s, one at a time back to back.
pub(super) fn config() -> QueueConfig {
    QueueConfig {
        name: "q".into(),
        upstream: "http://upstream.test".into(),
        drain_rate: 10.0,
        ..QueueConfig::default()
    }
}

/// The wall time the tests' sales run at.
pub(super) fn sale_day() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

impl Harness {
    pub(super) fn new(config: QueueConfig, script: Vec<Reply>, otherwise: Reply) -> Self {
        let backend = Arc::new(MemoryQueue::new(Duration::from_secs(3600)));
        let queue = Queue::new(config, QueueTag::of("q"), backend.clone())
            .with_clock(Arc::new(TestClock::new(sale_day())));
        Harness {
            queue: Arc::new(queue),
            backend,
            upstream: Arc::new(FakeUpstream::new(script, otherwise)),
            metrics: Arc::new(Metrics::new(&["q".to_string()])),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            drain: None,
        }
    }

    /// Admits `n` tickets, in order, as admission would.
    pub(super) async fn admit(&self, n: usize) -> Vec<TicketId> {
        let mut out = Vec::new();
        for _ in 0..n {
            let ticket = TicketId::generate(self.queue.tag);
            let request = QueuedRequest {
                ticket: ticket.clone(),
                method: "POST".into(),
                path: "/checkout".into(),
                headers: Bytes::new(),
                body: Bytes::from_static(b"{}"),
                idempotency_key: None,
                client: "c".into(),
                forwarded_for: "127.0.0.1".into(),
                forwarded_proto: "http".into(),
                admitted_at_ms: self.queue.clock.now_ms(),
                product: None,
            };
            let limits = AdmitLimits {
                max_queue: 1000,
                stock: None,
                prequeue: Prequeue::None,
                fair: Default::default(),
                pow: None,
            };
            let admit = self.backend.admit(request, None, limits).await.unwrap();
            assert!(matches!(admit, Admit::Admitted { .. }), "{admit:?}");
            out.push(ticket);
        }
        out
    }

    pub(super) fn start(&mut self) {
        self.drain = Some(tokio::spawn(crate::drain::run(
            self.queue.clone(),
            self.upstream.clone(),
            self.metrics.clone(),
            self.tracker.clone(),
            self.shutdown.clone(),
        )));
    }

    pub(super) async fn record(&self, id: &TicketId) -> TicketRecord {
        self.backend.ticket(id).await.unwrap().unwrap().0
    }

    /// Waits (on the paused clock) until every one of `ids` is final.
    pub(super) async fn settled(&self, ids: &[TicketId]) {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let mut done = true;
            for id in ids {
                done &= self.record(id).await.status.is_terminal();
            }
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tickets not final by the deadline"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (on the paused clock) until the upstream has had `n` calls.
    pub(super) async fn calls_reach(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while self.upstream.calls().len() < n {
            assert!(
                Instant::now() < deadline,
                "{n} calls not made by the deadline"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Dispatch results counted for the queue.
    pub(super) fn dispatched(&self, outcome: &str) -> u64 {
        self.metrics
            .dispatches
            .with_label_values(&["q", outcome])
            .get()
    }

    /// Stops the drain and waits for its dispatches.
    pub(super) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(drain) = self.drain.take() {
            drain.await.unwrap();
        }
        self.tracker.close();
        self.tracker.wait().await;
    }
}
