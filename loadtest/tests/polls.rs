//! Ticket-poll load against the fake gateway: counts and statuses come from
//! what the server answered.

mod support;

use flashgate_loadtest::polls::{self, Options, PollReport, PollsError};
use flashgate_loadtest::upstream;
use support::Behaviour;

async fn polls_through(tweak: impl FnOnce(&mut Options)) -> Result<PollReport, PollsError> {
    let upstream = upstream::start(&upstream::Options::default())
        .await
        .expect("upstream starts");
    let gateway = support::start(&upstream.url(), Behaviour::default()).await;
    let mut options = Options::new(gateway.url(), Vec::new(), 200, 4);
    tweak(&mut options);
    polls::run(options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_tickets_are_polled_round_robin_and_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("polls.json");
    let report = polls_through(|o| {
        o.admit = 5;
        o.report = Some(json.clone());
    })
    .await
    .expect("polls run");

    assert_eq!(
        (report.tickets, report.sent, report.answered),
        (5, 200, 200)
    );
    assert_eq!(report.statuses.get(&200), Some(&200));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.latency_ms.count, 200);
    assert!(report.throughput_per_second > 0.0);
    assert!(report.latency_ms.p50 <= report.latency_ms.p99);

    let written: PollReport =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).expect("JSON");
    assert_eq!(written.answered, 200);
    assert!(polls::table(&report).contains("200: 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tickets_from_a_file_are_counted_as_404() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tickets.txt");
    std::fs::write(&file, "nope-1\n\nnope-2\n").expect("write tickets");
    let report = polls_through(|o| {
        o.tickets = Some(file.clone());
        o.admit = 1;
        o.requests = 30;
    })
    .await
    .expect("polls run");

    // Round robin over [nope-1, nope-2, admitted]: two thirds are unknown.
    assert_eq!(report.tickets, 3);
    assert_eq!(report.statuses.get(&404), Some(&20));
    assert_eq!(report.statuses.get(&200), Some(&10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tickets_is_an_invalid_option() {
    let err = polls_through(|_| {}).await.expect_err("nothing to poll");
    assert!(matches!(err, PollsError::Invalid(_)), "{err}");
}
