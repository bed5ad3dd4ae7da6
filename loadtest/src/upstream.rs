//! The mock order service: it records every `Idempotency-Key`, applies each
//! order once, answers redeliveries with the first answer, and can be made
//! slow, flaky or sold out on demand.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::server::{self, Running, ServerError};

/// Window of `rate_last_5s`.
const RATE_WINDOW_SECS: u64 = 5;

/// `flashgate-loadtest upstream` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Time spent before each answer, e.g. `5ms`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Probability (0 to 1) of answering an order with an injected 503.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub error_rate: f64,
    /// Orders that can be applied before every new one gets 410; absent = unlimited.
    #[arg(long)]
    pub stock: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: "127.0.0.1:0".to_string(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            stock: None,
        }
    }
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not between 0 and 1"))
    }
}

/// `GET /stats`: counters since the server started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Order requests received, redeliveries and injected failures included.
    pub received: u64,
    /// Distinct idempotency keys that got a final answer (201 or 410).
    pub distinct: u64,
    /// Requests repeating a key that already had a final answer.
    pub duplicates: u64,
    /// Requests answered with an injected 503 (their key is not applied).
    pub errors_injected: u64,
    /// Orders applied (stock taken), requests without a key included.
    pub applied: u64,
    /// New orders refused with 410 because the stock was exhausted.
    pub sold_out: u64,
    /// Order requests that carried no `Idempotency-Key` (applied every time).
    pub without_key: u64,
    /// Stock left; `null` when unlimited.
    pub stock_left: Option<u64>,
    /// Order requests per second over the last five whole seconds.
    pub rate_last_5s: f64,
    /// Seconds since the server started.
    pub uptime_seconds: f64,
}

/// What the service remembers about one idempotency key.
struct Order {
    /// The final answer, replayed to every redelivery; `None` while the key
    /// has only seen injected failures.
    answer: Option<(StatusCode, Bytes)>,
}

/// Everything the service knows, behind one lock that is never held across
/// an await.
struct Ledger {
    orders: HashMap<String, Order>,
    stats: Stats,
    next_order: u64,
    /// Requests per whole second since start, oldest first.
    seconds: VecDeque<(u64, u64)>,
}

struct Service {
    options: Options,
    started: Instant,
    ledger: Mutex<Ledger>,
    /// Seed of the lock-free generator that decides injected failures.
    dice: AtomicU64,
}

/// Starts the mock upstream in the background.
pub async fn start(options: &Options) -> Result<Running, ServerError> {
    let listener = server::bind(&options.listen).await?;
    let service = Arc::new(Service {
        options: options.clone(),
        started: Instant::now(),
        ledger: Mutex::new(Ledger {
            orders: HashMap::new(),
            stats: Stats {
                stock_left: options.stock,
                ..Stats::default()
            },
            next_order: 0,
            seconds: VecDeque::new(),
        }),
        dice: AtomicU64::new(seed()),
    });
    server::spawn(listener, move |req| {
        let service = service.clone();
        async move { service.handle(req).await }
    })
}

impl Service {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/stats") => {
                let stats = self.stats();
                let body = serde_json::to_vec(&stats).unwrap_or_default();
                server::json(StatusCode::OK, body)
            }
            (&Method::GET, "/keys") => {
                let mut resp = Response::new(Full::new(Bytes::from(self.keys())));
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain"),
                );
                resp
            }
            _ => self.order(req).await,
        }
    }

    /// Any other request is an order.
    async fn order(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The body is read as a real service would, but its content does not
        // change the order's effect.
        let _ = req.into_body().collect().await;
        if !self.options.latency.is_zero() {
            tokio::time::sleep(self.options.latency).await;
        }
        let fail = self.roll() < self.options.error_rate;
        let (status, body) = self.ledger().apply(key, fail, self.started.elapsed());
        let mut resp = server::json(status, body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Short, so the gateway's retry is prompt and the test stays fast.
            resp.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        resp
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves counters that are still
        // usable for a test tool: carry on with them.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> Stats {
        let now = self.started.elapsed();
        let mut ledger = self.ledger();
        let current = now.as_secs();
        let recent: u64 = ledger
            .seconds
            .iter()
            .filter(|(s, _)| *s < current && *s + RATE_WINDOW_SECS >= current)
            .map(|(_, n)| n)
            .sum();
        ledger.prune(current);
        let mut stats = ledger.stats.clone();
        stats.rate_last_5s = recent as f64 / RATE_WINDOW_SECS as f64;
        stats.uptime_seconds = now.as_secs_f64();
        stats
    }

    fn keys(&self) -> String {
        let ledger = self.ledger();
        let mut out = String::with_capacity(ledger.orders.len() * 32);
        for key in ledger.orders.keys() {
            out.push_str(key);
            out.push('\n');
        }
        out
    }

    /// A uniform number in [0, 1): splitmix64 over an atomic counter, so
    /// concurrent requests never contend on a lock for it.
    fn roll(&self) -> f64 {
        let mut z = self
            .dice
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Ledger {
    /// Decides one order's answer and updates the counters.
    fn apply(&mut self, key: Option<String>, fail: bool, at: Duration) -> (StatusCode, Bytes) {
        self.stats.received += 1;
        self.count_second(at.as_secs());
        let Some(key) = key else {
            self.stats.without_key += 1;
            return self.take_stock(None);
        };
        if let Some(Order {
            answer: Some(answer),
        }) = self.orders.get(&key)
        {
            self.stats.duplicates += 1;
            return answer.clone();
        }
        if fail {
            self.stats.errors_injected += 1;
            // Remembered so `/keys` shows the delivery reached us.
            self.orders.entry(key).or_insert(Order { answer: None });
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(br#"{"error":"injected_failure"}"#),
            );
        }
        let answer = self.take_stock(Some(&key));
        self.stats.distinct += 1;
        self.orders.insert(
            key,
            Order {
                answer: Some(answer.clone()),
            },
        );
        answer
    }

    /// Applies a new order: 201 with an order id, or 410 once sold out.
    fn take_stock(&mut self, key: Option<&str>) -> (StatusCode, Bytes) {
        if let Some(left) = self.stats.stock_left.as_mut() {
            if *left == 0 {
                self.stats.sold_out += 1;
                return (
                    StatusCode::GONE,
                    Bytes::from_static(br#"{"error":"sold_out"}"#),
                );
            }
            *left -= 1;
        }
        self.stats.applied += 1;
        self.next_order += 1;
        let body = serde_json::json!({
            "order_id": format!("ord-{}", self.next_order),
            "idempotency_key": key,
        });
        (StatusCode::CREATED, Bytes::from(body.to_string()))
    }

    fn count_second(&mut self, second: u64) {
        match self.seconds.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.seconds.push_back((second, 1)),
        }
        self.prune(second);
    }

    fn prune(&mut self, current: u64) {
        while let Some((s, _)) = self.seconds.front() {
            if *s + RATE_WINDOW_SECS < current {
                self.seconds.pop_front();
            } else {
                break;
            }
        }
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
}
