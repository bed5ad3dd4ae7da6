//! End to end: admission → ticket → governed drain → upstream → completed,
//! on every queue backend, with a real redis-server and real HTTP.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// Admits `n` checkouts from `concurrency` clients at once, each answered
/// 202 with its ticket's Location and a Retry-After.
async fn admit_concurrently(
    c: &Client,
    n: usize,
    concurrency: usize,
) -> Vec<(usize, serde_json::Value)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, next) = (c.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return out;
                }
                let a = c
                    .send(
                        "POST",
                        &format!("/checkout?item={i}&src=test"),
                        &[
                            ("content-type", "application/json"),
                            ("x-customer", &format!("c{i}")),
                            ("connection", "keep-alive, x-hop"),
                            ("x-hop", "must not reach the upstream"),
                        ],
                        format!(r#"{{"sku":"sneaker","n":{i}}}"#),
                    )
                    .await;
                assert_eq!(a.status, 202, "{}", a.text());
                let v = a.json();
                assert_eq!(
                    a.header("location"),
                    format!("/tickets/{}", v["ticket"].as_str().unwrap())
                );
                assert!(a.header("retry-after").parse::<u64>().unwrap() >= 1);
                out.push((i, v));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn burst_is_delivered_exactly_once_intact(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let toml = "drain_rate = 500\nmax_in_flight = 16\n";
    let gw = Gateway::builder()
        .backend(backend)
        .toml(toml)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let n = 120;
    let admitted = admit_concurrently(&c, n, 24).await;
    assert_eq!(admitted.len(), n);
    let tickets: HashSet<&str> = admitted
        .iter()
        .map(|(_, v)| v["ticket"].as_str().unwrap())
        .collect();
    assert_eq!(tickets.len(), n, "every admission gets its own ticket");
    for (_, v) in &admitted {
        assert_eq!(v["queue"], "checkout");
        assert_eq!(v["status"], "queued");
        assert!(v["position"].as_u64().is_some() && v["eta_seconds"].as_f64().is_some());
    }

    for (i, v) in &admitted {
        let ticket = v["ticket"].as_str().unwrap();
        let done = c.until_terminal(ticket, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempts"], 1);
        assert!(done["completed_at"].as_str().unwrap().ends_with('Z'));
        let resp = &done["response"];
        assert_eq!(resp["status"], 201);
        assert_eq!(resp["body_encoding"], "utf8");
        assert_eq!(resp["headers"]["x-order-service"], "mock");
        assert!(
            resp["headers"].get("connection").is_none(),
            "hop-by-hop kept: {resp}"
        );
        let body: serde_json::Value = serde_json::from_str(resp["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["order"], ticket);
        assert_eq!(body["path"], format!("/checkout?item={i}&src=test"));
    }

    let by_key = upstream.by_key();
    assert_eq!(by_key.len(), n, "each ticket reached the upstream");
    for (i, v) in &admitted {
        let ticket = v["ticket"].as_str().unwrap();
        let got = &by_key[ticket];
        assert_eq!(
            got.len(),
            1,
            "ticket {ticket} delivered {} times",
            got.len()
        );
        let r = &got[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/checkout?item={i}&src=test"));
        assert_eq!(r.body, format!(r#"{{"sku":"sneaker","n":{i}}}"#));
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-customer"), format!("c{i}"));
        assert_eq!(r.header("x-flashgate-ticket"), ticket);
        assert_eq!(r.header("x-flashgate-attempt"), "1");
        assert_eq!(r.header("x-forwarded-for"), "127.0.0.1");
        assert_eq!(r.header("x-forwarded-proto"), "http");
        assert!(
            r.headers.get("x-hop").is_none(),
            "Connection-named header forwarded"
        );
    }
}

backends!(burst_is_delivered_exactly_once_intact);

/// The upstream never sees more than the drain rate nor more than
/// max-in-flight at once. Only upper bounds are asserted: a slow machine can
/// make the drain slower, never faster.
async fn drain_respects_rate_and_concurrency(backend: Backend) {
    let rate = 40.0;
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(60))
        .start()
        .await;
    let toml = "drain_rate = 40\nmax_in_flight = 2\n";
    let gw = Gateway::builder()
        .backend(backend)
        .toml(toml)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let n = 50;
    let admitted = admit_concurrently(&c, n, 10).await;
    for (_, v) in &admitted {
        c.until_terminal(v["ticket"].as_str().unwrap(), Duration::from_secs(60))
            .await;
    }
    let mut times: Vec<_> = upstream.received().iter().map(|r| r.at).collect();
    times.sort();
    assert_eq!(times.len(), n);
    let span = times[n - 1].duration_since(times[0]).as_secs_f64();
    let observed = (n - 1) as f64 / span;
    // drain_burst = 1 spaces requests evenly: allow 10% for clock granularity.
    assert!(
        observed <= rate * 1.1,
        "observed {observed:.1}/s over a limit of {rate}/s"
    );
    assert!(
        upstream.max_in_flight() <= 2,
        "max in flight {}",
        upstream.max_in_flight()
    );
}

backends!(drain_respects_rate_and_concurrency);

async fn retries_keep_the_idempotency_key(backend: Backend) {
    let upstream = MockUpstream::builder()
        .fail_first(2)
        .fail_status(503)
        .start()
        .await;
    let gw = Gateway::builder()
        .backend(backend)
        .toml("drain_rate = 200\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let admitted = admit_concurrently(&c, 3, 3).await;
    for (_, v) in &admitted {
        let ticket = v["ticket"].as_str().unwrap();
        let done = c.until_terminal(ticket, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempts"], 3);
        let got = &upstream.by_key()[ticket];
        let attempts: Vec<&str> = got
            .iter()
            .map(|r| r.header("x-flashgate-attempt"))
            .collect();
        assert_eq!(attempts, ["1", "2", "3"]);
        assert!(got.iter().all(|r| r.header("x-flashgate-ticket") == ticket));
    }
}

backends!(retries_keep_the_idempotency_key);

/// The Redis keys of the checkout queue's `what` (`stream`, `dead`): one,
/// or one per partition.
fn keys(backend: Backend, what: &str) -> Vec<String> {
    match backend {
        Backend::Partitioned => (0..3)
            .map(|p| format!("flashgate:{{checkout:{p}}}:{what}"))
            .collect(),
        _ => vec![format!("flashgate:{{checkout}}:{what}")],
    }
}

async fn exhausted_attempts_fail_and_dead_letter(backend: Backend) {
    let upstream = MockUpstream::builder()
        .fail_always()
        .fail_status(502)
        .start()
        .await;
    let gw = Gateway::builder()
        .backend(backend)
        .toml("drain_rate = 200\nmax_attempts = 2\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let admitted = admit_concurrently(&c, 1, 1).await;
    let ticket = admitted[0].1["ticket"].as_str().unwrap();
    let done = c.until_terminal(ticket, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "upstream_unavailable");
    assert!(done.get("response").is_none());
    assert_eq!(upstream.by_key()[ticket].len(), 2);
    if let Some(redis) = gw.redis() {
        let mut conn = redis.conn().await;
        let mut dead = 0;
        for key in keys(backend, "dead") {
            let entries: Vec<redis::Value> = redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap();
            dead += entries.len();
        }
        assert_eq!(dead, 1);
        // Finished entries are trimmed by the queue's upkeep, every second.
        eventually(
            Duration::from_secs(10),
            "dead-lettered entry trimmed from the work stream",
            || {
                let mut conn = conn.clone();
                async move {
                    let mut len = 0;
                    for key in keys(backend, "stream") {
                        let n: u64 = redis::cmd("XLEN")
                            .arg(key)
                            .query_async(&mut conn)
                            .await
                            .ok()?;
                        len += n;
                    }
                    (len == 0).then_some(())
                }
            },
        )
        .await;
    }
    let text = c.metrics().await;
    assert!(
        text.contains(r#"flashgate_dispatches_total{outcome="dead_lettered",queue="checkout"} 1"#),
        "{text}"
    );
}

backends!(exhausted_attempts_fail_and_dead_letter);

/// A final non-2xx answer is the ticket's response, not a failure, and a
/// binary body comes back base64-encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_answers_are_base64_in_the_ticket() {
    let upstream = MockUpstream::builder()
        .body(bytes::Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]))
        .start()
        .await;
    let gw = Gateway::builder()
        .backend(Backend::Redis)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let admitted = admit_concurrently(&c, 1, 1).await;
    let done = c
        .until_terminal(
            admitted[0].1["ticket"].as_str().unwrap(),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(done["response"]["body_encoding"], "base64");
    assert_eq!(done["response"]["body"], "3q2+7w==");
}

/// Position and ETA count the tickets ahead, from counters; polls while
/// queued carry Retry-After; the keys of SPEC §7 exist in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tickets_show_position_and_eta() {
    // One request per 10 s: the first ticket is dispatched at once, the
    // next ones wait for their permits long after this test has looked.
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .backend(Backend::Redis)
        .toml("drain_rate = 0.1\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let first = admit_concurrently(&c, 1, 1).await.remove(0).1;
    c.until_terminal(first["ticket"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    let mut tickets = Vec::new();
    for expected in 0..3u64 {
        let t = admit_concurrently(&c, 1, 1).await.remove(0).1;
        assert_eq!(t["position"], expected, "{t}");
        assert_eq!(t["eta_seconds"], expected as f64 * 10.0, "{t}");
        tickets.push(t);
    }
    let last = tickets[2]["ticket"].as_str().unwrap();
    let poll = c.poll(last).await;
    assert_eq!(poll.status, 200);
    let v = poll.json();
    assert_eq!(v["status"], "queued");
    assert_eq!(v["position"], 2);
    assert_eq!(v["eta_seconds"], 20.0);
    assert_eq!(poll.header("retry-after"), "20");
    assert_eq!(v["attempts"], 0);
    assert!(v["completed_at"].is_null());
    assert!(v.get("response").is_none() && v.get("error").is_none());

    let redis = gw.redis().unwrap();
    let mut c = redis.conn().await;
    let ty: String = redis::cmd("TYPE")
        .arg("flashgate:{checkout}:stream")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ty, "stream");
    let ty: String = redis::cmd("TYPE")
        .arg(format!("flashgate:{{checkout}}:ticket:{last}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(ty, "hash");
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("flashgate:{{checkout}}:ticket:{last}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 23 * 3600, "ticket TTL {ttl}");
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("flashgate:{checkout}:stream")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(groups.len(), 1);
}
