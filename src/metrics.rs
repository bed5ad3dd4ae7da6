//! Every metric of SPEC §6, owned by one struct with its own registry.
//!
//! - [`process`]: the standard `process_*` metrics, CPU time to the tick.

pub mod process;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Admission outcomes (`flashgate_admissions_total{outcome}`).
pub const ADMISSION_OUTCOMES: &[&str] = &[
    "admitted",
    "duplicate",
    "rate_limited",
    "queue_full",
    "sold_out",
    "not_open",
    "rejected",
    "unavailable",
    // A fair sale: 429 client_quota_exceeded, 404 unknown_product.
    "quota_exceeded",
    "unknown_product",
    "pow_failed",
];
/// Why a proof of work was refused (`flashgate_pow_failures_total{reason}`).
pub const POW_FAILURES: &[&str] = &["required", "invalid", "expired", "insufficient", "reused"];
/// Dispatch outcomes (`flashgate_dispatches_total{outcome}`).
pub const DISPATCH_OUTCOMES: &[&str] = &["completed", "retried", "failed", "dead_lettered"];
/// Upstream answer classes (`flashgate_upstream_responses_total{code_class}`).
pub const CODE_CLASSES: &[&str] = &["2xx", "3xx", "4xx", "5xx", "error"];

/// Redis primaries switched to after a Sentinel failover, counted by the
/// connections that follow them (src/backend/redis/sentinel.rs); process-wide,
/// registered with every [`Metrics`].
pub static REDIS_FAILOVERS: std::sync::LazyLock<IntCounter> = std::sync::LazyLock::new(|| {
    IntCounter::new(
        "flashgate_redis_failovers_total",
        "Switches to another Redis primary named by Sentinel after a failover.",
    )
    .expect("valid metric")
});
/// 1 for the Redis primary Sentinel named last (`address` = host:port); no
/// series without Sentinel.
pub static REDIS_PRIMARY: std::sync::LazyLock<IntGaugeVec> = std::sync::LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "flashgate_redis_primary",
            "1 for the Redis primary Sentinel named last (redis+sentinel:// only).",
        ),
        &["address"],
    )
    .expect("valid metric")
});

/// The registry and a handle on every metric.
pub struct Metrics {
    registry: Registry,
    pub admissions: IntCounterVec,
    /// Admissions refused for their proof of work, by reason.
    pub pow_failures: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub queue_in_flight: IntGaugeVec,
    pub queue_oldest_age: GaugeVec,
    pub drain_rate_limit: GaugeVec,
    pub dispatches: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub upstream_responses: IntCounterVec,
    pub queue_wait: HistogramVec,
    pub eta_error: HistogramVec,
    pub queue_up: IntGaugeVec,
    pub cancelled: IntCounterVec,
    pub drain_skipped: IntCounterVec,
    pub waiters: IntGaugeVec,
    /// Stock not yet admitted (queue-wide); no series while the stock is
    /// unlimited.
    pub stock_left: IntGaugeVec,
    /// A fair sale's units left per configured product.
    pub product_stock_left: IntGaugeVec,
    /// 1 while the queue is paused (queue-wide).
    pub queue_paused: IntGaugeVec,
    /// 1 while the queue is flipped sold out (queue-wide).
    pub queue_sold_out: IntGaugeVec,
    /// 1 for the sale's current phase, 0 for the others (`queue`, `phase`).
    pub sale_phase: IntGaugeVec,
    /// Public connections answered 503 and closed at once, over
    /// `--max-connections`.
    pub connections_shed: IntCounter,
    /// Entries of the work stream each consumer group has not read yet
    /// (`queue`, `group`; a bounded number of groups per queue).
    pub stream_group_lag: IntGaugeVec,
    /// Entries trimmed by `stream_retention` before every group had
    /// finished them.
    pub stream_retention_trimmed: IntCounterVec,
    /// Dead letters kept for the queue, waiting for an operator to replay
    /// or discard them (queue-wide: every instance reports the same).
    pub dead_letters: IntGaugeVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub build_info: IntGaugeVec,
    /// Reloads (SIGHUP) by `result` = success, failure.
    pub config_reloads: IntCounterVec,
    /// When the configuration was last loaded whole: start-up, then each
    /// successful reload (Unix seconds).
    pub config_last_reload_success: GaugeVec,
    /// Access log lines dropped because the sink fell behind and the
    /// buffer was full (or a write failed).
    pub access_log_dropped: IntCounter,
}

/// Upstream calls: a few ms to the 10 s default timeout and beyond.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Time in the queue: sub-second to hours.
const WAIT_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
/// ETA error, signed: positive when the wait was longer than promised.
const ETA_ERROR_BUCKETS: &[f64] = &[
    -600.0, -60.0, -10.0, -5.0, -1.0, -0.5, -0.1, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 600.0,
];
/// Gateway answers: sub-millisecond admissions to slow passthroughs.
const HTTP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Metrics {
    /// Registers everything and pre-creates the series of each queue so
    /// dashboards see zeros rather than gaps.
    pub fn new(queues: &[String]) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let m = Metrics {
            admissions: counter(
                "flashgate_admissions_total",
                "Admission decisions by outcome.",
                &["queue", "outcome"],
            ),
            pow_failures: counter(
                "flashgate_pow_failures_total",
                "Admissions refused for their proof of work, by reason.",
                &["queue", "reason"],
            ),
            queue_depth: int_gauge(
                "flashgate_queue_depth",
                "Tickets admitted and not yet dispatched (queue-wide).",
                &["queue"],
            ),
            queue_in_flight: int_gauge(
                "flashgate_queue_in_flight",
                "Tickets dispatched and not yet finished (queue-wide).",
                &["queue"],
            ),
            queue_oldest_age: gauge(
                "flashgate_queue_oldest_age_seconds",
                "Age of the oldest undispatched ticket (queue-wide).",
                &["queue"],
            ),
            drain_rate_limit: gauge(
                "flashgate_drain_rate_limit",
                "The governed drain rate now, requests per second.",
                &["queue"],
            ),
            dispatches: counter(
                "flashgate_dispatches_total",
                "Upstream dispatch results by outcome.",
                &["queue", "outcome"],
            ),
            upstream_duration: histogram(
                "flashgate_upstream_request_duration_seconds",
                "Duration of one upstream attempt.",
                &["queue"],
                UPSTREAM_BUCKETS,
            ),
            upstream_responses: counter(
                "flashgate_upstream_responses_total",
                "Upstream answers by status class; `error` when none came.",
                &["queue", "code_class"],
            ),
            queue_wait: histogram(
                "flashgate_queue_wait_seconds",
                "Time from admission to first dispatch.",
                &["queue"],
                WAIT_BUCKETS,
            ),
            eta_error: histogram(
                "flashgate_eta_error_seconds",
                "Real wait before first dispatch minus the wait predicted at admission.",
                &["queue"],
                ETA_ERROR_BUCKETS,
            ),
            queue_up: int_gauge(
                "flashgate_queue_up",
                "1 when the queue backend answered the last refresh, else 0.",
                &["queue"],
            ),
            cancelled: counter(
                "flashgate_tickets_cancelled_total",
                "Tickets cancelled by their client while queued.",
                &["queue"],
            ),
            drain_skipped: counter(
                "flashgate_drain_skipped_total",
                "Entries the drain removed without sending them, by reason.",
                &["queue", "reason"],
            ),
            waiters: int_gauge(
                "flashgate_ticket_waiters",
                "Clients waiting on a ticket change now (long-poll, event stream, Prefer: wait).",
                &["queue"],
            ),
            stock_left: int_gauge(
                "flashgate_stock_left",
                "Stock not yet admitted (queue-wide); absent while the stock is unlimited.",
                &["queue"],
            ),
            product_stock_left: int_gauge(
                "flashgate_product_stock_left",
                "Units of a product not yet admitted (queue-wide), for each configured product of a queue with product_from.",
                &["queue", "product"],
            ),
            queue_paused: int_gauge(
                "flashgate_queue_paused",
                "1 while the queue is paused: admissions go on, nothing is sent upstream (queue-wide).",
                &["queue"],
            ),
            queue_sold_out: int_gauge(
                "flashgate_queue_sold_out",
                "1 while the queue is sold out: admissions get 410, waiting tickets fail unsent (queue-wide).",
                &["queue"],
            ),
            sale_phase: int_gauge(
                "flashgate_sale_phase",
                "1 for the sale's current phase (not_open, prequeue, open, closed), 0 for the others (queue-wide).",
                &["queue", "phase"],
            ),
            connections_shed: {
                let c = IntCounter::new(
                    "flashgate_connections_shed_total",
                    "Public connections answered 503 unavailable and closed unread: --max-connections were open.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            stream_group_lag: int_gauge(
                "flashgate_stream_group_lag",
                "Entries of the queue's work stream a consumer group has not read yet (ours is `flashgate`).",
                &["queue", "group"],
            ),
            stream_retention_trimmed: counter(
                "flashgate_stream_retention_trimmed_total",
                "Work-stream entries trimmed by stream_retention before every consumer group had finished them.",
                &["queue"],
            ),
            dead_letters: int_gauge(
                "flashgate_dead_letters",
                "Dead letters kept for the queue: requests the drain gave up on, waiting to be replayed or discarded (queue-wide).",
                &["queue"],
            ),
            http_requests: counter(
                "flashgate_http_requests_total",
                "Answers on the public listener by route and status code.",
                &["route", "code"],
            ),
            http_duration: histogram(
                "flashgate_http_request_duration_seconds",
                "Time to answer on the public listener.",
                &["route"],
                HTTP_BUCKETS,
            ),
            build_info: int_gauge(
                "flashgate_build_info",
                "Always 1; the version in a label.",
                &["version"],
            ),
            config_reloads: counter(
                "flashgate_config_reloads_total",
                "Configuration reloads (SIGHUP) by result.",
                &["result"],
            ),
            config_last_reload_success: gauge(
                "flashgate_config_last_reload_success_timestamp_seconds",
                "When the configuration in force was loaded (start-up or the last successful reload), Unix seconds.",
                &[],
            ),
            access_log_dropped: {
                let c = IntCounter::new(
                    "flashgate_access_log_dropped_total",
                    "Access log lines dropped: the sink fell behind and the buffer was full, or a write failed.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            registry,
        };
        // CPU, memory and file descriptors of this process.
        registry_register(&m.registry, Box::new(process::ProcessCollector::new()));
        registry_register(&m.registry, Box::new(REDIS_FAILOVERS.clone()));
        registry_register(&m.registry, Box::new(REDIS_PRIMARY.clone()));
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for q in queues {
            for outcome in ADMISSION_OUTCOMES {
                m.admissions.with_label_values(&[q.as_str(), outcome]);
            }
            for reason in POW_FAILURES {
                m.pow_failures.with_label_values(&[q.as_str(), reason]);
            }
            for outcome in DISPATCH_OUTCOMES {
                m.dispatches.with_label_values(&[q.as_str(), outcome]);
            }
            for class in CODE_CLASSES {
                m.upstream_responses.with_label_values(&[q.as_str(), class]);
            }
            m.upstream_duration.with_label_values(&[q]);
            m.queue_wait.with_label_values(&[q]);
            m.eta_error.with_label_values(&[q]);
            m.queue_up.with_label_values(&[q]);
            m.cancelled.with_label_values(&[q]);
            m.drain_skipped.with_label_values(&[q, "cancelled"]);
            m.waiters.with_label_values(&[q]);
            m.stream_retention_trimmed.with_label_values(&[q]);
            m.dead_letters.with_label_values(&[q]);
            m.drain_rate_limit.with_label_values(&[q]);
            m.queue_depth.with_label_values(&[q]);
            m.queue_in_flight.with_label_values(&[q]);
            m.queue_oldest_age.with_label_values(&[q]);
            m.queue_paused.with_label_values(&[q]);
            m.queue_sold_out.with_label_values(&[q]);
        }
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m.config_loaded();
        for route in ["admission", "ticket", "passthrough", "other"] {
            m.http_duration.with_label_values(&[route]);
        }
        m
    }

    /// Counts one admission decision.
    pub fn admission(&self, queue: &str, outcome: &str) {
        self.admissions.with_label_values(&[queue, outcome]).inc();
    }

    /// Counts one dispatch result.
    pub fn dispatch(&self, queue: &str, outcome: &str) {
        self.dispatches.with_label_values(&[queue, outcome]).inc();
    }

    /// Sets the last-successful-load time to now.
    pub fn config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_last_reload_success
            .with_label_values::<&str>(&[])
            .set(now.as_secs_f64());
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

fn registry_register(registry: &Registry, c: Box<dyn prometheus::core::Collector>) {
    // Only fails on a duplicate name, which a fresh registry cannot have.
    let _ = registry.register(c);
}

/// `2xx`..`5xx` for a status code.
pub fn code_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
