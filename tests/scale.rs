//! Scale-out with real processes: several built gateways on one private
//! redis-server, a recording mock upstream. The drain rate is one rate
//! across all instances (never N times it), survives the loss of an
//! instance, and the adaptive drain finds an upstream's knee.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{admit, outcome, GatewayProcess};
use common::*;

/// The rate the upstream saw: the least-squares slope of arrival count over
/// arrival time. Unlike (n - 1) / (last - first) it does not swing when the
/// first or last arrival is recorded late on a starved machine.
fn observed_rate(arrivals: &[Instant]) -> f64 {
    let t0 = arrivals[0];
    let ts: Vec<f64> = arrivals.iter().map(|t| (*t - t0).as_secs_f64()).collect();
    let n = ts.len() as f64;
    let mean_t = ts.iter().sum::<f64>() / n;
    let mean_i = (n - 1.0) / 2.0;
    let (mut cov, mut var) = (0.0, 0.0);
    for (i, t) in ts.iter().enumerate() {
        cov += (t - mean_t) * (i as f64 - mean_i);
        var += (t - mean_t) * (t - mean_t);
    }
    cov / var
}

fn arrivals(upstream: &MockUpstream) -> Vec<Instant> {
    let mut at: Vec<Instant> = upstream.received().iter().map(|r| r.at).collect();
    at.sort();
    at
}

/// Most arrivals in any one-second window.
fn busiest_second(arrivals: &[Instant]) -> usize {
    let mut most = 0;
    let mut start = 0;
    for (end, t) in arrivals.iter().enumerate() {
        while *t - arrivals[start] >= Duration::from_secs(1) {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// A counter's value in a Prometheus exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(gw: &GatewayProcess) -> String {
    let body = get(&format!("http://127.0.0.1:{}/metrics", gw.admin))
        .await
        .body;
    String::from_utf8_lossy(&body).into_owned()
}

const COMPLETED: &str = r#"flashgate_dispatches_total{outcome="completed",queue="checkout"}"#;

/// Pauses or resumes the queue, and waits until every instance knows.
async fn set_paused(gws: &[GatewayProcess], paused: bool) {
    let a = send(
        &client(),
        "PATCH",
        &format!("http://127.0.0.1:{}/admin/queues/checkout", gws[0].admin),
        &[("content-type", "application/json")],
        format!(r#"{{"paused": {paused}}}"#),
    )
    .await;
    assert_eq!(a.status, 200);
    for gw in gws {
        let url = format!("http://127.0.0.1:{}/admin/queues", gw.admin);
        eventually(Duration::from_secs(10), "every instance sees it", || {
            let url = url.clone();
            async move {
                let q = get(&url).await.json()["queues"][0].clone();
                (q["paused"] == paused).then_some(())
            }
        })
        .await;
    }
}

/// `instances` gateways at one `--drain-rate` drain one backlog (admitted
/// while paused): the upstream sees that rate in total, and every instance
/// takes a share of the work.
async fn instances_share_one_rate(instances: usize, rate: f64, tickets: usize) {
    let redis = RedisServer::start();
    let upstream = MockUpstream::start(Behaviour::default()).await;
    let flags = ["--drain-rate", &rate.to_string(), "--max-in-flight", "64"];
    let gws: Vec<GatewayProcess> = (0..instances)
        .map(|i| GatewayProcess::start(&upstream.url(), &redis.url(), &format!("n{i}"), &flags))
        .collect();
    for gw in &gws {
        gw.up().await;
    }
    set_paused(&gws, true).await;
    let (admitted, refused) = admit(&gws[0].base(), tickets, "n").await;
    assert!(refused.is_empty(), "{refused:?}");
    set_paused(&gws, false).await;
    let o = outcome(&gws[instances - 1].base(), &admitted, &[&upstream]).await;
    assert_eq!((o.completed, o.lost), (tickets, 0), "{o:?}");

    let at = arrivals(&upstream);
    let observed = observed_rate(&at);
    let busiest = busiest_second(&at);
    let mut shares = Vec::new();
    for gw in &gws {
        shares.push(metric(&scrape(gw).await, COMPLETED) as u64);
    }
    println!(
        "scale report: {instances} instances at {rate}/s: upstream saw {observed:.2}/s \
         ({:+.2}%), busiest second {busiest}, completed per instance {shares:?}",
        (observed / rate - 1.0) * 100.0
    );
    // The limit is a correctness property: N instances never send N times
    // the rate. Over the run the rate holds to 2%; within one second the
    // mock, on a starved machine, can record a few requests late and bunched,
    // so a quarter more is tolerated there — far from 2× or 4×.
    assert!(
        observed <= rate * 1.02,
        "{observed}/s from {instances} instances"
    );
    assert!(
        busiest <= (rate * 1.25) as usize + 1,
        "{busiest} in one second"
    );
    assert_eq!(shares.iter().sum::<u64>(), tickets as u64);
    assert!(
        shares.iter().all(|&n| n > 0),
        "every instance drains: {shares:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_rate() {
    instances_share_one_rate(2, 50.0, 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_share_one_rate() {
    instances_share_one_rate(4, 50.0, 250).await;
}

/// The combined rates for the record, at higher rates (a few seconds of
/// backlog each): `cargo test --release --test scale -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, ~1 min"]
async fn measure_combined_rates() {
    for (rate, tickets) in [(200.0, 1000), (1000.0, 5000)] {
        for instances in [1, 2, 4] {
            instances_share_one_rate(instances, rate, tickets).await;
        }
    }
}

/// Two instances drain at 50/s between them; one is killed with -9 mid-drain.
/// The other goes on at the same rate, takes over what the dead one held
/// after --claim-idle, and nothing answered 202 is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_draining_instance_loses_nothing() {
    const TICKETS: usize = 150;
    let redis = RedisServer::start_durable();
    let upstream = MockUpstream::start(Behaviour {
        latency: Duration::from_millis(50),
        ..Behaviour::default()
    })
    .await;
    let flags = [
        "--drain-rate",
        "50",
        "--max-in-flight",
        "8",
        "--claim-idle",
        "2s",
    ];
    let mut a = GatewayProcess::start(&upstream.url(), &redis.url(), "node-a", &flags);
    let b = GatewayProcess::start(&upstream.url(), &redis.url(), "node-b", &flags);
    a.up().await;
    b.up().await;
    let (tickets, refused) = admit(&b.base(), TICKETS, "k").await;
    assert!(refused.is_empty(), "{refused:?}");
    eventually(Duration::from_secs(30), "both instances draining", || {
        let a = &a;
        async move { (metric(&scrape(a).await, COMPLETED) >= 10.0).then_some(()) }
    })
    .await;
    a.crash();
    let killed = Instant::now();
    let o = outcome(&b.base(), &tickets, &[&upstream]).await;
    let after: Vec<Instant> = arrivals(&upstream)
        .into_iter()
        .filter(|t| *t > killed)
        .collect();
    let resumed = after[0] - killed;
    let rate = observed_rate(&after);
    println!(
        "scale report: kill -9 of one of two draining instances: next upstream request \
         {resumed:?} later, {rate:.2}/s after; admitted {}, completed {}, lost {}, redelivered {}",
        o.admitted, o.completed, o.lost, o.redelivered
    );
    assert_eq!((o.completed, o.failed, o.lost), (TICKETS, 0, 0), "{o:?}");
    assert!(rate <= 50.0 * 1.02, "{rate}/s");
}

/// Two adaptive instances in front of an order service that buckles above
/// 40/s (slow 503s): the shared rate climbs from 20/s to near the knee,
/// never past the ceiling, and backs off when the knee drops to 15/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_drain_finds_the_knee_and_backs_off() {
    const CEILING: f64 = 100.0;
    let redis = RedisServer::start();
    let knee = Arc::new(AtomicU64::new(40));
    let upstream = MockUpstream::start(Behaviour {
        latency: Duration::from_millis(5),
        knee: Some(knee.clone()),
        ..Behaviour::default()
    })
    .await;
    let flags = [
        "--drain-rate",
        "20",
        "--adaptive",
        "--adaptive-floor",
        "5",
        "--adaptive-ceiling",
        "100",
        "--max-in-flight",
        "32",
    ];
    let gws = [
        GatewayProcess::start(&upstream.url(), &redis.url(), "a", &flags),
        GatewayProcess::start(&upstream.url(), &redis.url(), "b", &flags),
    ];
    for gw in &gws {
        gw.up().await;
    }
    // A backlog that outlasts the test: 3000 tickets at under 45/s.
    let started = Instant::now();
    let c = client();
    for i in 0..3000 {
        let a = send(
            &c,
            "POST",
            &format!("{}/checkout", gws[i % 2].base()),
            &[],
            format!("{{\"n\":{i}}}"),
        )
        .await;
        assert_eq!(a.status, 202);
    }
    let admin = format!("http://127.0.0.1:{}/admin/queues", gws[1].admin);
    let rate_now = || {
        let admin = admin.clone();
        async move { get(&admin).await.json()["queues"][0]["drain_rate"].as_f64() }
    };
    let mut seen = Vec::new();
    // Converges: reaches 80% of the knee.
    loop {
        let r = rate_now().await.expect("a drain rate");
        seen.push(r);
        if r >= 32.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no convergence: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converged = started.elapsed();
    // Then holds around it for a few seconds: record where it goes.
    let mut around = Vec::new();
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(8) {
        around.push(rate_now().await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let window_start = Instant::now() - Duration::from_secs(6);
    let recent: Vec<Instant> = arrivals(&upstream)
        .into_iter()
        .filter(|t| *t > window_start)
        .collect();
    let sent = observed_rate(&recent);
    // The knee drops: the rate backs off below it.
    knee.store(15, Ordering::SeqCst);
    let dropped = Instant::now();
    eventually(
        Duration::from_secs(60),
        "rate below the new knee",
        || async { rate_now().await.filter(|r| *r < 15.0).map(|_| ()) },
    )
    .await;
    let backed_off = dropped.elapsed();
    let (lo, hi) = around
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!(
        "scale report: adaptive, 2 instances, knee 40/s: 20/s -> 32/s in {converged:?}, \
         then between {lo:.1} and {hi:.1}/s (upstream saw {sent:.1}/s over the last 6 s); \
         knee -> 15/s: below 15/s after {backed_off:?}"
    );
    assert!(
        seen.iter().chain(&around).all(|r| *r <= CEILING),
        "never above the ceiling"
    );
    let q = get(&admin).await.json()["queues"][0].clone();
    assert_eq!(q["adaptive"]["ceiling"], CEILING);
    assert_eq!(q["adaptive"]["floor"], 5.0);
    // Both instances follow the one shared rate.
    let metrics = scrape(&gws[0]).await;
    let gauge = metric(&metrics, r#"flashgate_drain_rate_limit{queue="checkout"}"#);
    assert!(gauge > 0.0 && gauge <= CEILING, "{gauge}");
}
