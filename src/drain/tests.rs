//! The drain on tokio's paused clock, over the embedded queue, sending to a
//! fake upstream that records when each request arrived and answers from a
//! script: rates, limits and retries are asserted exactly, and no test
//! waits in real time.

mod harness;

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::retry::RETRY_MAX;
use crate::backend::{KnobStore, TicketStore};
use crate::config::QueueConfig;
use crate::ticket::TicketStatus;
use harness::{config, sale_day, Harness, Reply};

#[tokio::test(start_paused = true)]
async fn sends_at_the_drain_rate_in_line_order() {
    let mut h = Harness::new(config(), vec![], Reply::status(200));
    let tickets = h.admit(5).await;
    h.start();
    h.settled(&tickets).await;
    assert_eq!(h.upstream.arrivals_ms(), [0, 100, 200, 300, 400], "10/s");
    let order: Vec<String> = h.upstream.calls().into_iter().map(|c| c.ticket).collect();
    let admitted: Vec<String> = tickets.iter().map(|t| t.to_string()).collect();
    assert_eq!(order, admitted);
    for id in &tickets {
        let record = h.record(id).await;
        assert_eq!(record.status, TicketStatus::Completed);
        assert_eq!(record.response.unwrap().status, 200);
    }
    assert_eq!(h.dispatched("completed"), 5);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_goes_back_to_back_then_the_rate_holds() {
    let config = QueueConfig {
        drain_burst: 3,
        ..config()
    };
    let mut h = Harness::new(config, vec![], Reply::status(200));
    let tickets = h.admit(5).await;
    h.start();
    h.settled(&tickets).await;
    assert_eq!(h.upstream.arrivals_ms(), [0, 0, 0, 100, 200]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn never_more_calls_at_once_than_max_in_flight() {
    let config = QueueConfig {
        drain_rate: 1000.0,
        max_in_flight: 2,
        ..config()
    };
    let slow = Reply::status(200).taking(Duration::from_secs(1));
    let mut h = Harness::new(config, vec![], slow);
    let tickets = h.admit(6).await;
    h.start();
    h.settled(&tickets).await;
    assert_eq!(h.upstream.most_in_flight.load(Ordering::SeqCst), 2);
    // The rate would allow one a millisecond: each next call waits for an
    // answer to come back.
    assert_eq!(h.upstream.arrivals_ms(), [0, 1, 1000, 1001, 2000, 2001]);
    let took = h.metrics.upstream_duration.with_label_values(&["q"]);
    assert_eq!(took.get_sample_count(), 6);
    assert_eq!(
        took.get_sample_sum(),
        6.0,
        "each call took 1 s on the paused clock"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reloaded_max_in_flight_holds_from_then_on() {
    let config = QueueConfig {
        drain_rate: 1000.0,
        max_in_flight: 1,
        ..config()
    };
    let slow = Reply::status(200).taking(Duration::from_secs(1));
    let mut h = Harness::new(config.clone(), vec![], slow);
    let tickets = h.admit(8).await;
    h.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Up while the first call is out: two more go at once.
    h.queue.set_config(QueueConfig {
        max_in_flight: 3,
        ..config.clone()
    });
    tokio::time::sleep(Duration::from_millis(750)).await;
    // Down while three are out: none goes until the last of them is back.
    h.queue.set_config(config);
    h.settled(&tickets).await;
    assert_eq!(
        h.upstream.arrivals_ms(),
        [0, 500, 501, 1000, 2000, 3000, 4000, 5000]
    );
    assert_eq!(h.upstream.most_in_flight.load(Ordering::SeqCst), 3);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_as_long_as_retry_after_asks() {
    let busy = Reply::status(503).retry_after(2);
    let mut h = Harness::new(config(), vec![busy], Reply::status(200));
    let tickets = h.admit(1).await;
    h.start();
    h.settled(&tickets).await;
    let calls = h.upstream.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].at, calls[0].attempt), (Duration::ZERO, 1));
    // Retry-After (2 s) is longer than the first backoff (at most 200 ms).
    assert_eq!((calls[1].at, calls[1].attempt), (Duration::from_secs(2), 2));
    assert_eq!(calls[1].ticket, calls[0].ticket);
    let record = h.record(&tickets[0]).await;
    assert_eq!(record.status, TicketStatus::Completed);
    assert_eq!(record.attempts, 2);
    assert_eq!(h.dispatched("retried"), 1);
    assert_eq!(h.dispatched("completed"), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_up_to_retry_max() {
    let busy = Reply::status(429).retry_after(3600);
    let mut h = Harness::new(config(), vec![busy], Reply::status(200));
    let tickets = h.admit(1).await;
    h.start();
    h.settled(&tickets).await;
    let calls = h.upstream.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].at, RETRY_MAX,
        "an hour asked for, RETRY_MAX waited"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_backing_off_retry_frees_its_slot_for_the_next_entry() {
    let config = QueueConfig {
        max_in_flight: 1,
        ..config()
    };
    let busy = Reply::status(503).retry_after(1);
    let mut h = Harness::new(config, vec![busy], Reply::status(200));
    let tickets = h.admit(3).await;
    h.start();
    h.settled(&tickets).await;
    let seen: Vec<(String, u32, u128)> = h
        .upstream
        .calls()
        .into_iter()
        .map(|c| (c.ticket, c.attempt, c.at.as_millis()))
        .collect();
    let t = |i: usize| tickets[i].to_string();
    // While the first ticket backs off, the other two go on its slot. Its
    // retry is due at 1 s, when the one slot is held by the read that began
    // at 300 ms; that read comes back empty at 1.3 s (READ_BLOCK) and the
    // slot goes to the retry before the next read.
    assert_eq!(super::READ_BLOCK, Duration::from_secs(1));
    assert_eq!(
        seen,
        [
            (t(0), 1, 0),
            (t(1), 1, 100),
            (t(2), 1, 200),
            (t(0), 2, 1300)
        ]
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn max_attempts_fail_the_ticket_and_dead_letter_it() {
    let config = QueueConfig {
        max_attempts: 3,
        ..config()
    };
    let mut h = Harness::new(config, vec![], Reply::refused());
    let tickets = h.admit(1).await;
    h.start();
    h.settled(&tickets).await;
    let calls = h.upstream.calls();
    let attempts: Vec<u32> = calls.iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "max_attempts calls, then no more");
    // Full-jitter backoff: 100-200 ms after the first, 200-400 ms after the second.
    let gap = |i: usize| calls[i].at - calls[i - 1].at;
    assert!((100..=200).contains(&gap(1).as_millis()), "{:?}", gap(1));
    assert!((200..=400).contains(&gap(2).as_millis()), "{:?}", gap(2));
    let record = h.record(&tickets[0]).await;
    assert_eq!(record.status, TicketStatus::Failed);
    let error = record.error.unwrap();
    assert_eq!(error.code, "upstream_unavailable");
    assert!(
        error.detail.contains("after 3 attempts"),
        "{}",
        error.detail
    );
    let dead = h.backend.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0.ticket, tickets[0]);
    assert_eq!(h.dispatched("retried"), 2);
    assert_eq!(h.dispatched("failed"), 1);
    assert_eq!(h.dispatched("dead_lettered"), 1);
    assert_eq!(h.dispatched("completed"), 0);
    let errors = h
        .metrics
        .upstream_responses
        .with_label_values(&["q", "error"]);
    assert_eq!(errors.get(), 3);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_sold_out_answer_fails_the_waiting_tickets_unsent() {
    let config = QueueConfig {
        sold_out_statuses: vec![410],
        ..config()
    };
    let gone = Reply::status(410).body("sold out");
    let mut h = Harness::new(config, vec![gone], Reply::status(200));
    let tickets = h.admit(4).await;
    h.start();
    h.settled(&tickets).await;
    assert_eq!(
        h.upstream.calls().len(),
        1,
        "only the first ticket was sent"
    );
    let first = h.record(&tickets[0]).await;
    assert_eq!(first.status, TicketStatus::Completed);
    assert_eq!(first.response.unwrap().status, 410);
    for id in &tickets[1..] {
        let record = h.record(id).await;
        assert_eq!(record.status, TicketStatus::Failed);
        assert_eq!(record.error.unwrap().code, "sold_out");
        assert_eq!(record.attempts, 0);
    }
    assert!(h.queue.knobs().sold_out, "this instance's view");
    assert!(
        h.backend.knobs().await.unwrap().sold_out,
        "every instance's"
    );
    assert_eq!(h.dispatched("completed"), 1);
    assert_eq!(h.dispatched("failed"), 3);
    assert!(h.backend.dead_letters().is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_tickets_permit_goes_to_the_next_entry() {
    let mut h = Harness::new(config(), vec![], Reply::status(200));
    let tickets = h.admit(4).await;
    h.backend.cancel(&tickets[1]).await.unwrap();
    h.start();
    h.settled(&tickets).await;
    let seen: Vec<(String, u128)> = h
        .upstream
        .calls()
        .into_iter()
        .map(|c| (c.ticket, c.at.as_millis()))
        .collect();
    let t = |i: usize| tickets[i].to_string();
    // The cancelled ticket's 100 ms slot is not lost: the next one takes it.
    assert_eq!(seen, [(t(0), 0), (t(2), 100), (t(3), 200)]);
    assert_eq!(h.record(&tickets[1]).await.status, TicketStatus::Cancelled);
    let skipped = h
        .metrics
        .drain_skipped
        .with_label_values(&["q", "cancelled"]);
    assert_eq!(skipped.get(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_sent_before_the_sale_opens() {
    let config = QueueConfig {
        opens_at: Some(sale_day() + Duration::from_secs(1)),
        ..config()
    };
    let mut h = Harness::new(config, vec![], Reply::status(200));
    let tickets = h.admit(2).await;
    h.start();
    h.calls_reach(2).await;
    assert_eq!(h.upstream.arrivals_ms(), [1000, 1100], "opens at 1 s");
    // The wait in line is read off the queue's clock: 1 s and 1.1 s.
    let waited = h.metrics.queue_wait.with_label_values(&["q"]);
    assert_eq!(waited.get_sample_count(), 2);
    assert!(
        (waited.get_sample_sum() - 2.1).abs() < 1e-9,
        "{}",
        waited.get_sample_sum()
    );
    h.settled(&tickets).await;
    h.stop().await;
}
