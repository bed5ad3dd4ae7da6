//! The client experience (issue #8): `Prefer: wait`, long-polls on the change
//! feed, server-sent events, cancel, the raw response and CORS — against a
//! private redis-server and a recording mock upstream.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use support::*;

/// Total commands the Redis server has processed (the INFO call included).
const COMMANDS: &str = "total_commands_processed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_wait_answers_with_the_upstream_response_when_the_drain_is_fast() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 200\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();

    // Fast drain: the upstream's own 201, as if there were no queue.
    let a = c.admit_with(&[("prefer", "wait=10")], "{\"n\":1}").await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let ticket = a.header("x-flashgate-ticket").to_string();
    assert!(!ticket.is_empty());
    let body = a.json();
    assert_eq!(body["order"], ticket.as_str(), "the mock names the key");
    assert_eq!(a.header("x-order-service"), "mock");
    assert_eq!(upstream.received().len(), 1);

    // respond-async: always the ticket.
    let a = c
        .admit_with(&[("prefer", "respond-async, wait=10")], "{}")
        .await;
    assert_eq!(a.status, 202);

    // A stopped drain: the wait runs out and the ticket is the answer.
    c.patch_knobs(r#"{"paused": true}"#).await;
    let started = Instant::now();
    let a = c.admit_with(&[("prefer", "wait=1")], "{\"n\":2}").await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["status"], "queued");
    assert!(a.json()["position"].is_u64());
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_when_the_ticket_changes() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 100\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    c.patch_knobs(r#"{"paused": true}"#).await;
    let ticket = c.ticket("{}").await;

    // Nothing changes: the long-poll answers at its deadline, still queued.
    let started = Instant::now();
    let a = c.get(&format!("/tickets/{ticket}?wait=1")).await;
    assert_eq!(a.json()["status"], "queued");
    assert!(started.elapsed() >= Duration::from_secs(1));

    // A change answers it at once.
    let poll = tokio::spawn({
        let (c, path) = (c.clone(), format!("/tickets/{ticket}?wait=30"));
        async move {
            let a = c.get(&path).await;
            (a, Instant::now())
        }
    });
    eventually(Duration::from_secs(5), "the long-poll to wait", || async {
        (gw.app().queues[0].feed.waiting_clients() == 1).then_some(())
    })
    .await;
    c.patch_knobs(r#"{"paused": false}"#).await;
    let (a, answered) = poll.await.unwrap();
    let sent = eventually(Duration::from_secs(10), "the dispatch", || async {
        upstream.received().first().map(|r| r.at)
    })
    .await;
    let status = a.json()["status"].as_str().unwrap().to_string();
    assert!(
        status == "in_flight" || status == "completed",
        "answered {status}"
    );
    println!(
        "long-poll answered {:?} after the upstream received the request",
        answered.saturating_duration_since(sent)
    );
    assert!(answered.saturating_duration_since(sent) < Duration::from_secs(5));

    // Bad waits are refused, not clamped silently.
    let a = c.get(&format!("/tickets/{ticket}?wait=61")).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["code"], "bad_request");
}

/// A thousand clients long-polling cost the Redis server nothing while they
/// wait: they sit on the instance's one change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_long_polls_add_no_redis_load_per_client() {
    raise_open_files_limit();
    const CLIENTS: usize = 1000;
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    c.patch_knobs(r#"{"paused": true}"#).await;
    let mut tickets = Vec::new();
    for i in 0..10 {
        tickets.push(c.ticket(format!("{{\"n\":{i}}}")).await);
    }
    // Background load with nobody waiting: gauges, knobs, upkeep, reads.
    let window = Duration::from_secs(3);
    let before = redis.stat(COMMANDS).await;
    tokio::time::sleep(window).await;
    let idle = redis.stat(COMMANDS).await - before;

    let before_polls = redis.stat(COMMANDS).await;
    let mut polls = Vec::new();
    for i in 0..CLIENTS {
        let path = format!("/tickets/{}?wait=30", tickets[i % tickets.len()]);
        let c = c.clone();
        polls.push(tokio::spawn(async move {
            let a = c.get(&path).await;
            a.json()["status"].as_str().unwrap().to_string()
        }));
    }
    let feed = gw.app().queues[0].feed.clone();
    eventually(
        Duration::from_secs(30),
        "every long-poll to wait",
        || async { (feed.waiting_clients() == CLIENTS).then_some(()) },
    )
    .await;
    // Subscribed first, then one read each (HGETALL + HGET, pipelined; or
    // none, once the ticket's queued record is in the feed's cache): the
    // window starts once the first reads are done and the count settles.
    let mut last = redis.stat(COMMANDS).await;
    let start_of_wait = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = redis.stat(COMMANDS).await;
        // Settled: no more than the background's few a second.
        if n - last <= 10 {
            break n;
        }
        last = n;
    };
    tokio::time::sleep(window).await;
    let waiting = redis.stat(COMMANDS).await - start_of_wait;
    let per_client_setup = (start_of_wait - before_polls) as f64 / CLIENTS as f64;
    println!(
        "redis commands in {window:?}: {idle} with no waiters, {waiting} with {CLIENTS} waiting; \
         {per_client_setup:.2} commands per client to start its long-poll"
    );
    // Waiting costs nothing per client: the same background as idle (the
    // slack covers a gauge tick more or less), never one call per client.
    assert!(
        waiting <= idle + 20,
        "{waiting} commands while {CLIENTS} clients waited vs {idle} idle"
    );
    assert!(per_client_setup < 3.0, "{per_client_setup} per client");

    // Resuming answers every one of them.
    c.patch_knobs(r#"{"paused": false}"#).await;
    for p in polls {
        let status = p.await.unwrap();
        assert!(status == "in_flight" || status == "completed", "{status}");
    }
}

/// Reads a server-sent event stream to its end: each event's `event` name
/// and its JSON data.
async fn read_events(url: &str, limit: Duration) -> Vec<(String, serde_json::Value)> {
    let req = http::Request::get(url)
        .header("accept", "text/event-stream")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = http_client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    tokio::time::timeout(limit, async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    })
    .await
    .expect("the event stream ends by itself");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_default()
                    .to_string()
            };
            let data = serde_json::from_str(&field("data: ")).expect("JSON data");
            (field("event: "), data)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_follows_the_ticket_to_its_answer_and_ends() {
    let redis = Redis::start();
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(300))
        .start()
        .await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    c.patch_knobs(r#"{"paused": true}"#).await;
    for i in 0..3 {
        c.ticket(format!("{{\"n\":{i}}}")).await;
    }
    let last = c.ticket("{\"n\":3}").await;
    c.patch_knobs(r#"{"paused": false}"#).await;

    let url = format!("{}/tickets/{last}", c.base());
    let events = read_events(&url, Duration::from_secs(30)).await;
    let statuses: Vec<&str> = events
        .iter()
        .map(|(_, d)| d["status"].as_str().unwrap())
        .collect();
    println!("event statuses: {statuses:?}");
    assert!(events.iter().all(|(name, _)| name == "status"));
    assert_eq!(statuses.first(), Some(&"queued"));
    assert_eq!(statuses.last(), Some(&"completed"));
    let positions: Vec<u64> = events
        .iter()
        .filter_map(|(_, d)| d["position"].as_u64())
        .collect();
    assert!(
        positions.len() >= 2,
        "positions while queued: {positions:?}"
    );
    assert!(
        positions.windows(2).all(|w| w[1] <= w[0]),
        "positions only come down: {positions:?}"
    );
    let (_, done) = events.last().unwrap();
    assert_eq!(done["response"]["status"], 201);
    assert_eq!(done["ticket"], last.as_str());

    // A browser reconnecting after the end is told to stop.
    let a = c
        .send(
            "GET",
            &format!("/tickets/{last}"),
            &[
                ("accept", "text/event-stream"),
                ("last-event-id", "completed"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_tickets_never_reach_the_upstream() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 100\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    c.patch_knobs(r#"{"paused": true}"#).await;
    let mut tickets = Vec::new();
    for i in 0..6 {
        tickets.push(c.ticket(format!("{{\"n\":{i}}}")).await);
    }
    let delete = |t: &str| {
        let (c, path) = (c.clone(), format!("/tickets/{t}"));
        async move { c.send("DELETE", &path, &[], Bytes::new()).await }
    };
    let cancelled = [&tickets[1], &tickets[4]];
    for t in cancelled {
        let a = delete(t).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.json()["status"], "cancelled");
        // Cancelling twice is harmless.
        assert_eq!(delete(t).await.status, 200);
    }
    // Before the answer exists: 202 with the ticket, its Location and
    // Retry-After (the asynchronous request-reply pattern).
    let a = c.get(&format!("/tickets/{}/response", tickets[0])).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.json()["status"], "queued");
    assert_eq!(a.header("location"), format!("/tickets/{}", tickets[0]));
    assert!(!a.header("retry-after").is_empty());

    c.patch_knobs(r#"{"paused": false}"#).await;
    for t in &tickets {
        let v = c.until_terminal(t, Duration::from_secs(20)).await;
        let want = if cancelled.contains(&t) {
            "cancelled"
        } else {
            "completed"
        };
        assert_eq!(v["status"], want, "{t}");
    }
    let keys: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").to_string())
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for t in cancelled {
        assert!(!keys.contains(t), "a cancelled ticket reached the upstream");
    }
    // Too late to cancel a completed ticket.
    let a = delete(&tickets[0]).await;
    assert_eq!(a.status, 409);
    assert_eq!(a.json()["code"], "ticket_not_cancellable");

    // The raw answer, verbatim; none for a cancelled ticket.
    let a = c.get(&format!("/tickets/{}/response", tickets[0])).await;
    assert_eq!(a.status, 201);
    assert_eq!(a.header("x-flashgate-ticket"), tickets[0]);
    assert_eq!(a.json()["order"], tickets[0].as_str());
    let a = c.get(&format!("/tickets/{}/response", tickets[1])).await;
    assert_eq!(a.status, 409);
    assert_eq!(a.json()["code"], "ticket_has_no_response");
    // Forged ids: the same 404 on every verb.
    // The last character changed (to one it is not: an id ending in `x`
    // made this the real ticket, one run in 64).
    let (head, last) = tickets[0].split_at(tickets[0].len() - 1);
    let forged = format!("{head}{}", if last == "x" { "y" } else { "x" });
    for (method, path) in [
        ("DELETE", format!("/tickets/{forged}")),
        ("GET", format!("/tickets/{forged}/response")),
    ] {
        let a = c.send(method, &path, &[], Bytes::new()).await;
        assert_eq!(a.status, 404, "{method} {path}");
        assert_eq!(a.json()["code"], "ticket_not_found");
    }

    let text = c.metrics().await;
    assert!(
        text.contains(r#"flashgate_drain_skipped_total{queue="checkout",reason="cancelled"} 2"#),
        "{text}"
    );
    // Two tickets, each cancelled twice: counted once each (a state change).
    assert!(text.contains(r#"flashgate_tickets_cancelled_total{queue="checkout"} 2"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_allowed_origins_get_cors_grants() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("cors_origins = [\"https://shop.example\"]\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let preflight = c
        .send(
            "OPTIONS",
            "/checkout",
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type, idempotency-key",
                ),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        "https://shop.example"
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        "content-type, idempotency-key"
    );
    let a = c
        .admit_with(&[("origin", "https://shop.example")], "{}")
        .await;
    assert_eq!(a.status, 202);
    assert_eq!(
        a.header("access-control-allow-origin"),
        "https://shop.example"
    );
    let exposed = a.header("access-control-expose-headers").to_lowercase();
    assert!(exposed.contains("location") && exposed.contains("retry-after"));
    let a = c
        .admit_with(&[("origin", "https://evil.example")], "{}")
        .await;
    assert_eq!(a.status, 202);
    assert!(a.headers.get("access-control-allow-origin").is_none());
}

/// Clients polling a queued ticket are answered from the instance's cache
/// of queued records (dropped at the ticket's next change, reported by the
/// feed), not with a Redis read per poll; and they see the change at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_a_queued_ticket_cost_no_redis_read_and_see_its_change() {
    const TICKETS: usize = 10;
    const POLLS: usize = 50;
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    c.patch_knobs(r#"{"paused": true}"#).await;
    let mut tickets = Vec::new();
    for i in 0..TICKETS {
        tickets.push(c.ticket(format!("{{\"n\":{i}}}")).await);
    }
    let before = redis.stat(COMMANDS).await;
    let started = std::time::Instant::now();
    for _ in 0..POLLS {
        for t in &tickets {
            let a = c.poll(t).await;
            assert_eq!(a.json()["status"], "queued");
        }
    }
    let took = started.elapsed();
    let used = redis.stat(COMMANDS).await - before;
    println!(
        "{} polls of {TICKETS} queued tickets in {took:?}: {used} Redis commands \
         (background included)",
        TICKETS * POLLS
    );
    // Two commands for each ticket's first read, the background's few a
    // second; without the cache it would be 2 per poll (1000).
    let background = 10 * (took.as_secs() + 1);
    assert!(
        used <= 2 * TICKETS as u64 + background,
        "{used} commands for {} polls",
        TICKETS * POLLS
    );
    // A cancel on this instance is read back at once; a change made
    // elsewhere (the drain) reaches the pollers through the feed.
    let cancelled = c
        .send("DELETE", &format!("/tickets/{}", tickets[0]), &[], "")
        .await;
    assert_eq!(cancelled.status, 200);
    let a = c.get(&format!("/tickets/{}", tickets[0])).await;
    assert_eq!(a.json()["status"], "cancelled");
    c.patch_knobs(r#"{"paused": false}"#).await;
    for t in &tickets[1..] {
        let done = c.until_terminal(t, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed");
    }
}
