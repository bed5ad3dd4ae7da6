//! The burst against a fake gateway and the mock upstream: every number in
//! the report comes from what happened, including the faults injected.

mod support;

use std::time::Duration;

use flashgate_loadtest::burst::{self, BurstError, Options};
use flashgate_loadtest::report::Report;
use flashgate_loadtest::{ceiling, upstream};
use support::Behaviour;

/// A burst of `n` through a fake gateway with `behaviour` in front of a fresh
/// mock upstream.
async fn burst_through(n: u64, behaviour: Behaviour, tweak: impl FnOnce(&mut Options)) -> Report {
    let upstream = upstream::start(&upstream::Options::default())
        .await
        .expect("upstream starts");
    let gateway = support::start(&upstream.url(), behaviour).await;
    let mut options = Options::new(gateway.url(), n, 8);
    options.upstream_stats = Some(format!("{}/stats", upstream.url()));
    options.poll_timeout = Duration::from_secs(20);
    tweak(&mut options);
    burst::run(options).await.expect("burst runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_burst_is_admitted_completed_and_delivered_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (json, svg) = (dir.path().join("r.json"), dir.path().join("c.svg"));
    let report = burst_through(50, Behaviour::default(), |o| {
        o.report = Some(json.clone());
        o.chart = Some(svg.clone());
    })
    .await;

    let a = &report.admission;
    assert_eq!((a.sent, a.answered, a.admitted), (50, 50, 50));
    assert_eq!(a.latency_ms.count, 50);
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    assert_eq!(a.answers.len(), 1);
    assert_eq!((a.answers[0].status, a.answers[0].count), (202, 50));

    let t = report.tickets.as_ref().expect("tickets polled");
    assert_eq!(
        (t.total, t.completed, t.failed, t.never_finished),
        (50, 50, 0, 0)
    );
    assert_eq!(t.upstream_statuses.get("201"), Some(&50));
    assert_eq!(report.wait_seconds.as_ref().map(|w| w.count), Some(50));
    assert_eq!(report.eta_error_seconds.as_ref().map(|e| e.count), Some(50));
    assert_eq!(report.drain.as_ref().map(|d| d.completions), Some(50));

    let u = report.upstream.as_ref().expect("upstream checked");
    assert_eq!((u.received, u.distinct, u.duplicates), (50, 50, 0));
    assert_eq!((u.not_seen, u.lost), (0, Some(0)));

    // The timeline accounts for every ticket and ends with an empty queue.
    let points = &report.timeline.points;
    let width = report.timeline.bucket_seconds;
    let admitted: f64 = points.iter().map(|p| p.admitted_per_second * width).sum();
    assert_eq!(admitted.round() as u64, 50);
    assert_eq!(points.last().map(|p| p.depth), Some(0));

    let written: Report = serde_json::from_slice(&std::fs::read(&json).expect("report written"))
        .expect("report is JSON");
    assert_eq!(written.admission.admitted, 50);
    let chart = std::fs::read_to_string(&svg).expect("chart written");
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    assert!(chart.contains("admissions/s") && chart.contains("queue depth"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_that_never_reached_the_upstream_are_lost() {
    let behaviour = Behaviour {
        forget_every: Some(10),
        ..Behaviour::default()
    };
    let report = burst_through(50, behaviour, |_| {}).await;
    let t = report.tickets.as_ref().expect("tickets polled");
    assert_eq!(t.completed, 50, "the fake gateway claims all completed");
    let u = report.upstream.as_ref().expect("upstream checked");
    assert_eq!((u.not_seen, u.lost), (5, Some(5)));
    assert_eq!(u.distinct, 45);
    assert_eq!(u.lost_examples.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tickets_are_not_lost_and_redeliveries_are_duplicates() {
    let behaviour = Behaviour {
        fail_every: Some(5),
        deliveries: 2,
        ..Behaviour::default()
    };
    let report = burst_through(50, behaviour, |_| {}).await;
    let t = report.tickets.as_ref().expect("tickets polled");
    assert_eq!((t.completed, t.failed), (40, 10));
    let u = report.upstream.as_ref().expect("upstream checked");
    assert_eq!((u.received, u.distinct, u.duplicates), (80, 40, 40));
    assert_eq!((u.not_seen, u.lost), (10, Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_counted_by_status_and_code() {
    let behaviour = Behaviour {
        stock: Some(30),
        ..Behaviour::default()
    };
    let report = burst_through(50, behaviour, |_| {}).await;
    let a = &report.admission;
    assert_eq!((a.answered, a.admitted), (50, 30));
    let sold_out = a
        .answers
        .iter()
        .find(|c| c.status == 410)
        .expect("410 counted");
    assert_eq!(
        (sold_out.code.as_deref(), sold_out.count),
        (Some("sold_out"), 20)
    );
    assert_eq!(report.tickets.as_ref().map(|t| t.completed), Some(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pow_each_admission_carries_a_solved_challenge() {
    let behaviour = Behaviour {
        pow: Some(10),
        ..Behaviour::default()
    };
    let solved = burst_through(20, behaviour.clone(), |o| o.pow = true).await;
    assert_eq!(
        (solved.admission.answered, solved.admission.admitted),
        (20, 20)
    );
    let unsolved = burst_through(5, behaviour, |o| o.no_poll = true).await;
    let a = &unsolved.admission;
    assert_eq!(a.admitted, 0);
    let refused = a.answers.iter().find(|c| c.status == 403).expect("403s");
    assert_eq!(
        (refused.code.as_deref(), refused.count),
        (Some("pow_required"), 5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stops_at_its_deadline_and_counts_unfinished_tickets() {
    let behaviour = Behaviour {
        stall_every: Some(2),
        ..Behaviour::default()
    };
    let report = burst_through(20, behaviour, |o| {
        o.poll_timeout = Duration::from_millis(1500);
    })
    .await;
    let t = report.tickets.as_ref().expect("tickets polled");
    assert_eq!((t.completed, t.never_finished), (10, 10));
    let u = report.upstream.as_ref().expect("upstream checked");
    // Unfinished tickets may still be delivered: not seen, but not lost.
    assert_eq!((u.not_seen, u.lost), (10, Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_model_sends_every_request_and_says_so() {
    let ceiling = ceiling::start(&ceiling::Options {
        listen: "127.0.0.1:0".into(),
    })
    .await
    .expect("ceiling starts");
    let mut options = Options::new(ceiling.url(), 40, 4);
    options.rate = Some(400.0);
    options.no_poll = true;
    let report = burst::run(options).await.expect("burst runs");
    assert_eq!(report.model, "open");
    assert_eq!(
        (report.admission.answered, report.admission.admitted),
        (40, 40)
    );
    assert!(report.tickets.is_none() && report.upstream.is_none());
}

#[tokio::test]
async fn an_unreachable_target_is_a_setup_error() {
    // Bind then drop, so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let err = burst::run(Options::new(format!("http://127.0.0.1:{port}"), 5, 1))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, BurstError::Target(_)), "{err}");

    let err = burst::run(Options::new("http://127.0.0.1:1", 0, 1))
        .await
        .expect_err("zero requests");
    assert!(matches!(err, BurstError::Invalid(_)), "{err}");
}
