//! Scale-out with real processes: several built gateways on one private
//! redis-server, a recording mock upstream. The drain rate is one rate
//! across all instances (never N times it), survives the loss of an
//! instance, and the adaptive drain finds an upstream's knee.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

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

/// The dispatches an instance completed, from its `/metrics`.
async fn completed(gw: &GatewayProcess) -> f64 {
    let metrics = gw.client().metrics().await;
    let labels = [r#"outcome="completed""#, r#"queue="checkout""#];
    metrics.sum("flashgate_dispatches_total", &labels)
}

/// Pauses or resumes the queue, and waits until every instance knows.
async fn set_paused(gws: &[GatewayProcess], paused: bool) {
    let knobs = format!(r#"{{"paused": {paused}}}"#);
    gws[0].client().patch_knobs(knobs).await;
    for gw in gws {
        let c = gw.client();
        eventually(
            Duration::from_secs(10),
            "every instance sees it",
            || async { (c.queue().await["paused"] == paused).then_some(()) },
        )
        .await;
    }
}

/// `instances` gateways at one `--drain-rate` drain one backlog (admitted
/// while paused): the upstream sees that rate in total, and every instance
/// takes a share of the work.
async fn instances_share_one_rate(instances: usize, rate: f64, tickets: usize) {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let instance = Gateway::builder().upstream(&upstream).redis(&redis).args(&[
        "--drain-rate",
        &rate.to_string(),
        "--max-in-flight",
        "64",
    ]);
    let gws: Vec<GatewayProcess> = (0..instances)
        .map(|i| instance.clone().consumer(&format!("n{i}")).spawn())
        .collect();
    for gw in &gws {
        gw.up().await;
    }
    set_paused(&gws, true).await;
    let (admitted, refused) = gws[0].client().admit_many(tickets, "n").await;
    assert!(refused.is_empty(), "{refused:?}");
    set_paused(&gws, false).await;
    let last = gws[instances - 1].client();
    let o = last.outcome(&admitted, &[&upstream]).await;
    assert_eq!((o.completed, o.lost), (tickets, 0), "{o:?}");

    let at = arrivals(&upstream);
    let observed = observed_rate(&at);
    let busiest = busiest_second(&at);
    let mut shares = Vec::new();
    for gw in &gws {
        shares.push(completed(gw).await as u64);
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
    let redis = Redis::builder().durable().start();
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(50))
        .start()
        .await;
    let instance = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .args(&["--drain-rate", "50", "--max-in-flight", "8"])
        .args(&["--claim-idle", "2s"]);
    let mut a = instance.clone().consumer("node-a").spawn();
    let b = instance.consumer("node-b").spawn();
    a.up().await;
    b.up().await;
    let (tickets, refused) = b.client().admit_many(TICKETS, "k").await;
    assert!(refused.is_empty(), "{refused:?}");
    eventually(
        Duration::from_secs(30),
        "both instances draining",
        || async { (completed(&a).await >= 10.0).then_some(()) },
    )
    .await;
    a.crash();
    let killed = Instant::now();
    let o = b.client().outcome(&tickets, &[&upstream]).await;
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
    let redis = Redis::start();
    let knee = Arc::new(AtomicU64::new(40));
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(5))
        .knee(knee.clone())
        .start()
        .await;
    let instance = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .args(&["--drain-rate", "20", "--adaptive"])
        .args(&["--adaptive-floor", "5", "--adaptive-ceiling", "100"])
        .args(&["--max-in-flight", "32"]);
    let gws = [
        instance.clone().consumer("a").spawn(),
        instance.consumer("b").spawn(),
    ];
    for gw in &gws {
        gw.up().await;
    }
    let clients = [gws[0].client(), gws[1].client()];
    // A backlog that outlasts the test: 3000 tickets at under 45/s.
    let started = Instant::now();
    for i in 0..3000 {
        let a = clients[i % 2].admit(format!("{{\"n\":{i}}}")).await;
        assert_eq!(a.status, 202);
    }
    let rate_now = || async { clients[1].queue().await["drain_rate"].as_f64() };
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
    let q = clients[1].queue().await;
    assert_eq!(q["adaptive"]["ceiling"], CEILING);
    assert_eq!(q["adaptive"]["floor"], 5.0);
    // Both instances follow the one shared rate.
    let metrics = clients[0].metrics().await;
    let gauge = metrics.sum("flashgate_drain_rate_limit", &[r#"queue="checkout""#]);
    assert!(gauge > 0.0 && gauge <= CEILING, "{gauge}");
}
