//! Admission answers: idempotency, capacity, limits, problem+json errors, a
//! Redis outage, passthrough and the admin listener.

mod support;

use std::time::Duration;

use support::*;

fn problem(a: &Answer, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(a.status, status, "{}", a.text());
    assert_eq!(a.header("content-type"), "application/problem+json");
    let v = a.json();
    assert_eq!(v["status"], status);
    assert_eq!(v["code"], code, "{v}");
    assert!(v["type"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(v["detail"].as_str().is_some());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_ticket_or_refuses_reuse() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let key = [("idempotency-key", "order-123")];
    let first = c.admit_with(&key, "{\"sku\":1}").await;
    assert_eq!(first.status, 202);
    let again = c.admit_with(&key, "{\"sku\":1}").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), "true");
    assert_eq!(again.json()["ticket"], first.json()["ticket"]);
    assert_eq!(again.header("location"), first.header("location"));
    let other = c.admit_with(&key, "{\"sku\":2}").await;
    problem(&other, 422, "idempotency_key_reused");
    c.until_terminal(&first.ticket(), Duration::from_secs(20))
        .await;
    // Replayed after completion: same ticket, terminal status, no Retry-After.
    let late = c.admit_with(&key, "{\"sku\":1}").await;
    assert_eq!(late.status, 200);
    assert_eq!(late.json()["status"], "completed");
    assert_eq!(
        upstream.received().len(),
        1,
        "a replay enqueued a second order"
    );
    let too_long = "k".repeat(256);
    let bad = c.admit_with(&[("idempotency-key", &too_long)], "{}").await;
    problem(&bad, 400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    // One dispatch per 100 s: the queue fills and stays full.
    let gw = Gateway::builder()
        .toml("drain_rate = 0.01\nmax_queue = 3\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(c.admit("{}").await);
    }
    let admitted = statuses.iter().filter(|a| a.status == 202).count();
    // 3 wait in the queue; at most one more was taken by the drain.
    assert!((3..=4).contains(&admitted), "admitted {admitted}");
    let full = statuses.last().unwrap();
    problem(full, 503, "queue_full");
    assert!(full.header("retry-after").parse::<u64>().unwrap() >= 1);
    let metrics = c.metrics().await;
    assert!(
        metrics.contains(r#"flashgate_admissions_total{outcome="queue_full",queue="checkout"} "#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_json() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("max_body = \"1KiB\"\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();

    problem(&c.get("/nope").await, 404, "not_found");
    let wrong = c.get("/checkout").await;
    problem(&wrong, 405, "method_not_allowed");
    assert_eq!(wrong.header("allow"), "POST, OPTIONS");
    let big = c.admit(vec![b'x'; 2048]).await;
    problem(&big, 413, "body_too_large");

    // Unknown, malformed and other queues' tickets: the same 404 body.
    let other_queue = {
        let gw2 = Gateway::builder()
            .toml("queue = \"other\"\n")
            .upstream(&upstream)
            .start()
            .await;
        gw2.client().admit("{}").await.ticket()
    };
    let mine = c.admit("{}").await.ticket();
    let mut flipped = mine.clone().into_bytes();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let mut bodies = Vec::new();
    for id in [
        other_queue.as_str(),
        flipped.as_str(),
        "short",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "%2e%2etc",
        &format!("{mine}x"),
    ] {
        let a = c.poll(id).await;
        problem(&a, 404, "ticket_not_found");
        // The same but for the request's own id.
        let mut body = a.json();
        assert_eq!(body["request_id"], a.header("x-request-id"));
        body.as_object_mut().unwrap().remove("request_id");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "404 bodies differ");
    // An encoded `/` is ambiguous: refused before routing.
    problem(&c.poll("%2e%2e%2fetc").await, 400, "bad_request");
    assert_eq!(c.poll(&mine).await.status, 200);
    problem(
        &c.send("PUT", &format!("/tickets/{mine}"), &[], "").await,
        405,
        "method_not_allowed",
    );
}

/// A chunked body has no Content-Length: the limit holds while streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_is_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("max_body = \"1KiB\"\n")
        .upstream(&upstream)
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(gw.public_addr)
        .await
        .unwrap();
    let chunk = "x".repeat(600);
    let req = format!(
        "POST /checkout HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("body_too_large"), "{head}");
}

/// With Redis gone, admissions are refused with 503 — never a 202 that was
/// not stored — and readiness says so; both recover when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_answers_503_unavailable_then_recovers() {
    let mut redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    assert_eq!(c.admin_get("/readyz").await.status, 200);
    assert_eq!(c.admit("{}").await.status, 202);

    redis.kill();
    for _ in 0..3 {
        let a = c.admit("{}").await;
        problem(&a, 503, "unavailable");
        assert!(a.header("retry-after").parse::<u64>().unwrap() >= 1);
    }
    assert_eq!(c.admin_get("/readyz").await.status, 503);
    assert_eq!(c.admin_get("/healthz").await.status, 200);

    redis.restart();
    let a = eventually(
        Duration::from_secs(20),
        "admission after Redis is back",
        || async {
            let a = c.admit("{}").await;
            (a.status == 202).then_some(a)
        },
    )
    .await;
    let done = c.until_terminal(&a.ticket(), Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "the drain resumed by itself");
    assert_eq!(c.admin_get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_proxies_other_paths_only_when_enabled() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("passthrough = true\n")
        .upstream(&upstream)
        .start()
        .await;
    let a = gw
        .client()
        .send(
            "GET",
            "/products/42?color=red",
            &[("host", "evil.example"), ("x-forwarded-for", "6.6.6.6")],
            "",
        )
        .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.header("x-order-service"), "mock");
    let got = upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/products/42?color=red");
    assert_eq!(got[0].header("host"), upstream.addr.to_string());
    assert_eq!(got[0].header("x-forwarded-for"), "127.0.0.1");
    gw.stop().await;

    let closed = Gateway::builder().upstream(&upstream).start().await;
    let a = closed.client().get("/products/42").await;
    problem(&a, 404, "not_found");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_metrics_health_and_guarded_queues() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("admin_token = \"s3cret\"\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    c.admit("{}").await;

    let m = c.admin_get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .starts_with("text/plain; version=0.0.4"));
    let text = m.text();
    for name in [
        "flashgate_admissions_total",
        "flashgate_queue_depth",
        "flashgate_queue_in_flight",
        "flashgate_queue_oldest_age_seconds",
        "flashgate_drain_rate_limit",
        "flashgate_dispatches_total",
        "flashgate_upstream_request_duration_seconds",
        "flashgate_upstream_responses_total",
        "flashgate_queue_wait_seconds",
        "flashgate_http_requests_total",
        "flashgate_http_request_duration_seconds",
        "flashgate_build_info",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    assert!(text.contains(r#"flashgate_admissions_total{outcome="admitted",queue="checkout"} 1"#));
    assert!(text.contains(r#"flashgate_drain_rate_limit{queue="checkout"} 100"#));

    assert_eq!(c.admin_get("/healthz").await.status, 200);
    assert_eq!(c.admin_get("/readyz").await.status, 200);
    problem(&c.admin_get("/admin/queues").await, 401, "unauthorized");
    let wrong = c
        .admin(
            "GET",
            "/admin/queues",
            &[("authorization", "Bearer s3cre")],
            "",
        )
        .await;
    assert_eq!(wrong.status, 401);
    let ok = c
        .admin(
            "GET",
            "/admin/queues",
            &[("authorization", "Bearer s3cret")],
            "",
        )
        .await;
    assert_eq!(ok.status, 200);
    let q = &ok.json()["queues"][0];
    assert_eq!(q["name"], "checkout");
    assert_eq!(q["drain_rate"], 100.0);
    assert_eq!(q["paused"], false);
    // The admin API is never served on the public listener.
    assert_eq!(c.get("/admin/queues").await.status, 404);
    assert_eq!(c.get("/metrics").await.status, 404);
}
