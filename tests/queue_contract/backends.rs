//! The backends every contract suite runs over, and what a suite needs to
//! know about each: the embedded queue, Redis streams (a private
//! redis-server), and one queue partitioned over three Redis partitions.
//!
//! A partitioned queue keeps FIFO, sequence numbers and counts per
//! partition and gives each partition its share of every limit. So that one
//! suite holds for all three, a suite's tickets and Idempotency-Keys are
//! drawn into one partition (the middle one: routing that fell back to
//! partition 0 would show), and its limits are written per partition
//! ([`Backend::limit`]). What is shared queue-wide — knobs, the slot
//! schedule, the change feed — lives on partition 0 or on all of them, so
//! the suites cover the routing too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flashgate::backend::{
    partition_of_claim, AdmitLimits, Delivery, EventSettings, IdempotencyClaim, Line, MemoryQueue,
    Partitioned, Prequeue, QueueBackend, QueuedRequest, RedisQueue, RedisQueueConfig,
};
use flashgate::ticket::{QueueTag, TicketId};

use crate::support::Redis;

/// How long `next` waits for an entry in the suites.
pub const BLOCK: Duration = Duration::from_millis(200);

/// How long `next` waits on a partitioned queue: it waits on one partition
/// at a time, a slice each, and Redis ends a blocking read only on its
/// timer (every 100 ms at the default `hz 10`), so a round over three
/// partitions can take 300 ms. The drain's own block is a second.
const PARTITIONED_BLOCK: Duration = Duration::from_secs(1);

/// Partitions of the partitioned backend.
const PARTS: u32 = 3;

/// A backend under test.
pub struct Backend {
    /// The queue, as one instance sees it.
    pub q: Arc<dyn QueueBackend>,
    /// How many partitions it has.
    parts: u32,
    /// The partition the suite's tickets and keys are drawn into.
    home: u32,
    /// How long `next` may take to find an entry that is there.
    block: Duration,
    /// The Redis server behind it, stopped when the backend is dropped.
    redis: Option<Redis>,
}

impl Backend {
    /// The embedded queue.
    pub fn memory() -> Self {
        Backend {
            q: memory_queue(Some(EVENTS_RETENTION)),
            parts: 1,
            home: 0,
            block: BLOCK,
            redis: None,
        }
    }

    /// Redis streams on a private redis-server.
    pub fn redis() -> Self {
        let server = Redis::start();
        Backend {
            q: Arc::new(redis_queue(&server, "c1", 0, 1)),
            parts: 1,
            home: 0,
            block: BLOCK,
            redis: Some(server),
        }
    }

    /// One queue over three Redis partitions on a private redis-server.
    pub fn partitioned() -> Self {
        let server = Redis::start();
        Backend {
            q: partitioned(&server, "c1"),
            parts: PARTS,
            home: 1,
            block: PARTITIONED_BLOCK,
            redis: Some(server),
        }
    }

    /// Another instance of the same queue (a consumer of its own, the same
    /// store). The embedded queue lives in one process: it is its own other
    /// instance.
    pub fn instance(&self, consumer: &str) -> Arc<dyn QueueBackend> {
        match &self.redis {
            None => self.q.clone(),
            Some(server) if self.parts == 1 => Arc::new(redis_queue(server, consumer, 0, 1)),
            Some(server) => partitioned(server, consumer),
        }
    }

    /// Another instance of the same queue that writes events with this
    /// retention (`None`: none). The embedded queue's is a new queue.
    pub fn instance_with_events(
        &self,
        consumer: &str,
        events: Option<Duration>,
    ) -> Arc<dyn QueueBackend> {
        match &self.redis {
            None => memory_queue(events),
            Some(server) if self.parts == 1 => {
                Arc::new(redis_queue_with(server, consumer, 0, 1, events))
            }
            Some(server) => partitioned_with(server, consumer, events),
        }
    }

    /// A request whose ticket lives in the suite's partition.
    pub fn request(&self, n: u8) -> QueuedRequest {
        QueuedRequest {
            ticket: self.ticket(),
            method: "POST".into(),
            path: format!("/checkout?n={n}"),
            // As admission stores them: JSON `[name, value]` pairs, a byte
            // per character (0xe9 is `\xc3\xa9` in the JSON's UTF-8).
            headers: Bytes::from_static(
                b"[[\"content-type\",\"application/json\"],[\"x-bin\",\"caf\xc3\xa9\"]]",
            ),
            body: Bytes::from(vec![n, 0, 255]),
            idempotency_key: Some(format!("cart-{n}")),
            client: "ip:127.0.0.1".into(),
            forwarded_for: "127.0.0.1".into(),
            forwarded_proto: "http".into(),
            admitted_at_ms: 1_700_000_000_000 + u64::from(n),
            product: None,
        }
    }

    /// A fresh ticket id in the suite's partition, never admitted.
    pub fn ticket(&self) -> TicketId {
        TicketId::generate_in(QueueTag::of("contract"), self.home, self.parts)
    }

    /// An Idempotency-Key claim whose tickets live in the suite's partition:
    /// `key` itself, or (partitioned) the first of `key#1`, `key#2`, … that
    /// falls there — the same one every time.
    pub fn claim(&self, key: &str, fingerprint: &str) -> IdempotencyClaim {
        let mut claim = IdempotencyClaim {
            key: key.into(),
            fingerprint: fingerprint.into(),
            partition: None,
        };
        let mut n = 0;
        while partition_of_claim(&claim, self.parts) != self.home {
            n += 1;
            claim.key = format!("{key}#{n}");
        }
        claim
    }

    /// A queue-wide limit (capacity, stock, a release batch) whose share in
    /// one partition is `n`.
    pub fn limit(&self, n: u64) -> u64 {
        n * u64::from(self.parts)
    }

    /// Admission limits: capacity `max_queue` in the suite's partition, no
    /// stock, a pre-queue configured but over.
    pub fn cap(&self, max_queue: u64) -> AdmitLimits {
        AdmitLimits {
            max_queue: self.limit(max_queue),
            stock: None,
            prequeue: Prequeue::Configured,
            fair: Default::default(),
            pow: None,
        }
    }

    /// Up to `max` entries, or none after the block; each comes from the
    /// partition its ticket names.
    pub async fn next(&self, max: usize) -> Vec<Delivery> {
        let got = self.q.next(self.block, max).await.unwrap();
        for d in &got {
            assert_eq!(
                d.partition, self.home,
                "entry {} from another partition",
                d.entry_id
            );
        }
        got
    }

    /// One entry, or none after the block.
    pub async fn next1(&self) -> Option<Delivery> {
        let mut got = self.next(1).await;
        assert!(got.len() <= 1, "asked for one entry, got {}", got.len());
        got.pop()
    }

    /// The Redis key of a ticket of the suite's partition.
    pub fn ticket_key(&self, ticket: &TicketId) -> String {
        match self.parts {
            1 => format!("flashgate:{{contract}}:ticket:{ticket}"),
            _ => format!("flashgate:{{contract:{}}}:ticket:{ticket}", self.home),
        }
    }

    /// The Redis server, for the suites that look behind the backend.
    pub fn redis_server(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }
}

/// One entry of `q`, or none after `block`.
pub async fn next1(q: &dyn Line, block: Duration) -> Option<Delivery> {
    let mut got = q.next(block, 1).await.unwrap();
    assert!(got.len() <= 1, "asked for one entry, got {}", got.len());
    got.pop()
}

/// How long the suites' queues keep their events.
pub const EVENTS_RETENTION: Duration = Duration::from_secs(3600);

/// The embedded queue `contract`, writing events with this retention.
fn memory_queue(events: Option<Duration>) -> Arc<dyn QueueBackend> {
    let q = MemoryQueue::new(Duration::from_secs(3600));
    Arc::new(match events {
        Some(retention) => q.with_events(EventSettings {
            queue: "contract".into(),
            retention,
        }),
        None => q,
    })
}

/// Partition `partition` of `partitions` of the queue `contract`.
pub fn redis_queue(redis: &Redis, consumer: &str, partition: u32, partitions: u32) -> RedisQueue {
    redis_queue_with(
        redis,
        consumer,
        partition,
        partitions,
        Some(EVENTS_RETENTION),
    )
}

fn redis_queue_with(
    redis: &Redis,
    consumer: &str,
    partition: u32,
    partitions: u32,
    events: Option<Duration>,
) -> RedisQueue {
    RedisQueue::connect(
        &RedisQueueConfig {
            url: redis.url(),
            prefix: "flashgate".into(),
            queue: "contract".into(),
            consumer: consumer.into(),
            ticket_ttl: Duration::from_secs(3600),
            partition,
            partitions,
            events,
            replicated: None,
        },
        PARTITIONED_BLOCK,
    )
    .unwrap()
}

fn partitioned(redis: &Redis, consumer: &str) -> Arc<dyn QueueBackend> {
    partitioned_with(redis, consumer, Some(EVENTS_RETENTION))
}

fn partitioned_with(
    redis: &Redis,
    consumer: &str,
    events: Option<Duration>,
) -> Arc<dyn QueueBackend> {
    let parts = (0..PARTS)
        .map(|i| {
            Arc::new(redis_queue_with(redis, consumer, i, PARTS, events)) as Arc<dyn QueueBackend>
        })
        .collect();
    Arc::new(Partitioned::new(parts))
}

/// Runs the suite `async fn $suite(Backend)` over every backend: a module
/// named after the suite with one test per backend (`line::burst::redis`).
macro_rules! over_every_backend {
    ($($suite:ident),+ $(,)?) => {$(
        mod $suite {
            use crate::backends::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$suite(Backend::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$suite(Backend::redis()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn partitioned() {
                super::$suite(Backend::partitioned()).await;
            }
        }
    )+};
}
pub(crate) use over_every_backend;
