//! `scripts/soak` (issue 22): a steady admission and ticket-poll load on one
//! gateway process and a private redis-server for minutes, printing every
//! 30 s the gateway's RSS and open descriptors, Redis's used_memory, the
//! p99 latencies and the queue depth — to see that they stay flat once the
//! backlog is steady. Ticket state lives `SOAK_TICKET_TTL` (1m), lifecycle
//! events `--events-retention 1m` and finished entries `--stream-retention
//! 30s`, so Redis reaches its steady size within the run. Ignored in the
//! suite: it takes minutes.

mod support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::load::{quantile_ms, Admission, Attempts, Shopper};
use support::*;

/// How often a line is printed.
const EVERY: Duration = Duration::from_secs(30);
/// Recent tickets the pollers pick from.
const RECENT: usize = 10_000;

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not valid")),
        Err(_) => default,
    }
}

/// What the load shares with the reporter.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    admitted: AtomicU64,
    refused: AtomicU64,
    polls: AtomicU64,
    poll_errors: AtomicU64,
    recent: Mutex<VecDeque<String>>,
    /// This interval's latencies.
    admit_ms: Mutex<Vec<Duration>>,
    poll_ms: Mutex<Vec<Duration>>,
}

/// One client connection sending `per_second` requests a second until told
/// to stop: admissions, or polls of recent tickets.
async fn client(shopper: Shopper, shared: Arc<Shared>, per_second: f64, id: usize, admit: bool) {
    let counts = Attempts::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0usize.. {
        tick.tick().await;
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        if admit {
            let (end, took) = shopper.admit(&format!("soak-{id}"), i, &counts).await;
            shared.admit_ms.lock().unwrap().push(took);
            match end {
                Admission::Ticket(t) => {
                    shared.admitted.fetch_add(1, Ordering::Relaxed);
                    let mut recent = shared.recent.lock().unwrap();
                    if recent.len() == RECENT {
                        recent.pop_front();
                    }
                    recent.push_back(t);
                }
                Admission::Refused(_) => {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            let ticket = {
                let recent = shared.recent.lock().unwrap();
                match recent.len() {
                    0 => continue,
                    len => recent[(i * 7919 + id) % len].clone(),
                }
            };
            let (state, took) = shopper.status(&ticket, 0).await;
            shared.poll_ms.lock().unwrap().push(took);
            shared.polls.fetch_add(1, Ordering::Relaxed);
            if state.is_none() {
                shared.poll_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `used_memory` of `INFO memory`, in bytes.
async fn redis_used_memory(redis: &Redis) -> u64 {
    let mut c = redis.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "minutes long: run by scripts/soak"]
async fn soak() {
    let minutes: f64 = env("SOAK_MINUTES", 10.0);
    let rate: f64 = env("SOAK_RATE", 500.0);
    let connections: usize = env("SOAK_CONNECTIONS", 64);
    let ticket_ttl: String = env("SOAK_TICKET_TTL", "1m".to_string());
    // Twice the admissions by default: the backlog stays near empty, and
    // steady, even when a busy machine keeps the drain below its limit.
    let drain_rate: f64 = env("SOAK_DRAIN", 2.0 * rate);
    raise_open_files_limit();

    let redis = Redis::builder().durable().start();
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(2))
        .start()
        .await;
    let drain = drain_rate.to_string();
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .consumer("soak")
        .args(&["--drain-rate", &drain, "--ticket-ttl", &ticket_ttl])
        .args(&["--stream-retention", "30s", "--events-retention", "1m"])
        .process()
        .await;
    let admin = gw.client();

    let shared = Arc::new(Shared::default());
    let per_client = rate / connections as f64;
    let mut tasks = Vec::new();
    for id in 0..connections {
        for admit in [true, false] {
            let shopper = Shopper::new(&[gw.base()]);
            let shared = shared.clone();
            tasks.push(tokio::spawn(client(shopper, shared, per_client, id, admit)));
        }
    }

    println!(
        "soak: {minutes} min, {rate} admissions/s and {rate} polls/s over {connections}+{connections} connections, drain {drain_rate}/s, ticket ttl {ticket_ttl}, release={}",
        !cfg!(debug_assertions)
    );
    println!(
        "soak: {:>6} {:>9} {:>9} {:>6} {:>10} {:>12} {:>11} {:>7}",
        "t s", "admitted", "RSS MiB", "fds", "Redis MiB", "p99 admit ms", "p99 poll ms", "depth"
    );
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(minutes * 60.0);
    let mut rows = Vec::new();
    while Instant::now() < end {
        let next = (started + EVERY * (rows.len() as u32 + 1)).min(end);
        tokio::time::sleep_until(next.into()).await;
        let admit_p99 = quantile_ms(
            &mut std::mem::take(&mut *shared.admit_ms.lock().unwrap()),
            0.99,
        );
        let poll_p99 = quantile_ms(
            &mut std::mem::take(&mut *shared.poll_ms.lock().unwrap()),
            0.99,
        );
        let row = (
            started.elapsed().as_secs_f64(),
            shared.admitted.load(Ordering::Relaxed),
            gw.rss_kib() as f64 / 1024.0,
            open_fds(gw.pid()),
            redis_used_memory(&redis).await as f64 / (1024.0 * 1024.0),
            admit_p99,
            poll_p99,
            admin.queue().await["depth"].as_u64().unwrap_or_default(),
        );
        println!(
            "soak: {:>6.0} {:>9} {:>9.1} {:>6} {:>10.1} {:>12.2} {:>11.2} {:>7}",
            row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7
        );
        rows.push(row);
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a client task");
    }
    let refused = shared.refused.load(Ordering::Relaxed);
    let poll_errors = shared.poll_errors.load(Ordering::Relaxed);
    println!(
        "soak: {} admitted, {refused} refused, {} polls ({poll_errors} unanswered)",
        shared.admitted.load(Ordering::Relaxed),
        shared.polls.load(Ordering::Relaxed)
    );
    assert!(!rows.is_empty() && rows[0].1 > 0, "nothing was admitted");
    assert_eq!((refused, poll_errors), (0, 0), "a steady load is served");
}
