//! The edge as a keep-alive client and a forging client meet it: early
//! refusals keep the connection usable, the gateway's own headers and
//! underscore names never reach the upstream, an idempotent retry meets its
//! ticket whatever would refuse a new request, and `OPTIONS` says exactly
//! what a path allows.

mod support;

use std::time::{Duration, SystemTime};

use support::raw::Conn;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// A path with a ticket's shape (48 base64url characters), not a real one.
static SHAPED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("/tickets/{}", "A".repeat(48)));

fn post(path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: shop\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339(t).to_string()
}

/// Three queues whose refusals differ: `/checkout` (client rate 1, burst 2,
/// body limit 1 KiB), `/later` (opens in an hour), `/over` (closed).
async fn three_queues(upstream: &MockUpstream) -> Gateway {
    let now = SystemTime::now();
    let toml = format!(
        "client_key = \"header:x-client\"\nclient_rate = 1\nclient_burst = 2\nmax_body = \"1KiB\"\n\
         drain_rate = 1000\n\
         [[queue]]\nname = \"checkout\"\nroutes = [\"POST /checkout\"]\n\
         [[queue]]\nname = \"later\"\nroutes = [\"POST /later\"]\nopens_at = \"{}\"\n\
         [[queue]]\nname = \"over\"\nroutes = [\"POST /over\"]\nopens_at = \"{}\"\ncloses_at = \"{}\"\n",
        rfc3339(now + Duration::from_secs(3600)),
        rfc3339(now - Duration::from_secs(7200)),
        rfc3339(now - Duration::from_secs(3600)),
    );
    Gateway::builder()
        .toml(&toml)
        .upstream(upstream)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_early_refusal_leaves_a_keep_alive_connection_usable() {
    let upstream = MockUpstream::start().await;
    let gw = three_queues(&upstream).await;
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    let body = r#"{"sku":"sneaker-42"}"#;
    let mine = "X-Client: a\r\n";
    // The client's two admissions of its burst.
    for _ in 0..2 {
        assert_eq!(
            conn.ask(&post("/checkout", mine, body))
                .await
                .unwrap()
                .status,
            202
        );
    }
    let cases: Vec<(&str, String, u16)> = vec![
        ("429 rate_limited", post("/checkout", mine, body), 429),
        ("410 sale_closed", post("/over", "", body), 410),
        ("503 sale_not_open", post("/later", "", body), 503),
        (
            "413 body_too_large",
            post("/checkout", "X-Client: b\r\n", &"x".repeat(2000)),
            413,
        ),
        ("404 not_found", post("/nope", "", body), 404),
        (
            "405 method_not_allowed",
            format!(
                "PUT /checkout HTTP/1.1\r\nHost: shop\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            405,
        ),
        (
            "400 bad Idempotency-Key",
            post("/checkout", "X-Client: c\r\nIdempotency-Key: \r\n", body),
            400,
        ),
        (
            "404 ticket",
            format!(
                "DELETE /tickets/nope HTTP/1.1\r\nHost: shop\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            404,
        ),
    ];
    let mut table = Vec::new();
    for (i, (what, request, want)) in cases.iter().enumerate() {
        let refused = conn.ask(request).await.unwrap();
        assert_eq!(refused.status, *want, "{what}: {}", refused.head);
        assert_ne!(
            refused.header("connection"),
            Some("close"),
            "{what}: a small prompt body is read, the connection kept"
        );
        // A normal admission on the same connection.
        let next = conn
            .ask(&post("/checkout", &format!("X-Client: next-{i}\r\n"), body))
            .await
            .unwrap_or_else(|e| panic!("after {what}, the connection broke: {e}"));
        assert_eq!(next.status, 202, "after {what}: {}", next.head);
        table.push(format!(
            "{what:<26} -> next request on the same connection: {}",
            next.status
        ));
    }
    println!("{}", table.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_cannot_read_the_body_say_connection_close() {
    let upstream = MockUpstream::start().await;
    let gw = three_queues(&upstream).await;
    // Declared far over the limit: not read, and the answer says so.
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    let big =
        "POST /checkout HTTP/1.1\r\nHost: shop\r\nX-Client: a\r\nContent-Length: 10000000\r\n\r\n";
    let r = conn.ask(big).await.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        conn.closed().await,
        "the connection is closed after the 413"
    );
    // Expect: 100-continue on a refused request: the body is never asked for.
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    let expect =
        "POST /over HTTP/1.1\r\nHost: shop\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    let r = conn.ask(expect).await.unwrap();
    assert_eq!(r.status, 410);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(conn.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_meets_its_ticket_whatever_would_refuse_a_new_request() {
    let upstream = MockUpstream::start().await;
    let toml =
        "client_key = \"header:x-client\"\nclient_rate = 1\nclient_burst = 1\ndrain_rate = 1000\n";
    let gw = Gateway::builder()
        .toml(toml)
        .upstream(&upstream)
        .start()
        .await;
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    let keyed = "X-Client: a\r\nIdempotency-Key: order-1\r\n";
    let first = conn.ask(&post("/checkout", keyed, "{}")).await.unwrap();
    assert_eq!(first.status, 202);
    let ticket = first.json()["ticket"].as_str().unwrap().to_string();
    // Over the client's rate: a new request is refused, the retry is not.
    let other = conn
        .ask(&post("/checkout", "X-Client: a\r\n", "{}"))
        .await
        .unwrap();
    assert_eq!(other.status, 429);
    let retry = conn.ask(&post("/checkout", keyed, "{}")).await.unwrap();
    assert_eq!(retry.status, 200, "{}", retry.head);
    assert_eq!(retry.json()["ticket"], ticket.as_str());
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    // The sale closes: the retry still meets its ticket, a new key does not.
    gw.client().patch_knobs(r#"{"open": false}"#).await;
    let retry = conn.ask(&post("/checkout", keyed, "{}")).await.unwrap();
    assert_eq!(retry.status, 200, "{}", retry.head);
    assert_eq!(retry.json()["ticket"], ticket.as_str());
    let fresh = "X-Client: b\r\nIdempotency-Key: order-2\r\n";
    assert_eq!(
        conn.ask(&post("/checkout", fresh, "{}"))
            .await
            .unwrap()
            .status,
        410
    );
    // The same key with another body is not a retry: the refusal stands.
    let changed = conn
        .ask(&post("/checkout", keyed, "{\"x\":1}"))
        .await
        .unwrap();
    assert_eq!(changed.status, 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_forge_gateway_headers_or_smuggle_underscores() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\npassthrough = true\n")
        .upstream(&upstream)
        .start()
        .await;
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    let forged = "X-Flashgate-Ticket: forged\r\nX-Flashgate-Attempt: 9\r\nX_Forwarded_For: 6.6.6.6\r\n\
                  Idempotency_Key: k\r\nTransfer_Encoding: chunked\r\nForwarded: for=6.6.6.6\r\nX-Kept: 1\r\n";
    let queued = conn.ask(&post("/checkout", forged, "{}")).await.unwrap();
    assert_eq!(queued.status, 202);
    let passed = conn.ask(&post("/elsewhere", forged, "{}")).await.unwrap();
    assert_eq!(passed.status, 201);
    let got = eventually(WAIT, "both requests upstream", || async {
        let got = upstream.received();
        (got.len() == 2).then_some(got)
    })
    .await;
    for r in &got {
        assert_eq!(r.header("x-kept"), "1", "{}", r.path);
        for name in [
            "x_forwarded_for",
            "idempotency_key",
            "transfer_encoding",
            "forwarded",
        ] {
            assert!(r.headers.get(name).is_none(), "{name} reached {}", r.path);
        }
        assert_eq!(r.header("x-forwarded-for"), "127.0.0.1");
    }
    let delivery = got.iter().find(|r| r.path == "/checkout").unwrap();
    assert_eq!(
        delivery.header("x-flashgate-ticket"),
        queued.json()["ticket"].as_str().unwrap()
    );
    assert_eq!(delivery.header("x-flashgate-attempt"), "1");
    let proxied = got.iter().find(|r| r.path == "/elsewhere").unwrap();
    assert!(proxied.headers.get("x-flashgate-ticket").is_none());
    assert!(proxied.headers.get("x-flashgate-attempt").is_none());
    gw.stop().await;

    // With `underscore_headers = "reject"` such a request is refused.
    let gw = Gateway::builder()
        .toml("underscore_headers = \"reject\"\n")
        .upstream(&upstream)
        .start()
        .await;
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    let r = conn
        .ask(&post("/checkout", "X_Client: a\r\n", "{}"))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("x_client"));
    assert_eq!(
        conn.ask(&post("/checkout", "", "{}")).await.unwrap().status,
        202
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_says_what_a_path_allows_and_asterisk_form_is_answered_by_the_gateway() {
    let upstream = MockUpstream::start().await;
    let toml = "cors_origins = [\"https://shop.example\"]\n";
    let gw = Gateway::builder()
        .toml(toml)
        .upstream(&upstream)
        .start()
        .await;
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    let options =
        |path: &str, extra: &str| format!("OPTIONS {path} HTTP/1.1\r\nHost: shop\r\n{extra}\r\n");
    let cases = [
        ("/checkout".to_string(), "POST, OPTIONS"),
        (SHAPED.clone(), "GET, HEAD, DELETE, OPTIONS"),
        (format!("{}/response", *SHAPED), "GET, HEAD, OPTIONS"),
        ("/openapi.json".to_string(), "GET, HEAD, OPTIONS"),
        ("*".to_string(), "GET, HEAD, POST, DELETE, OPTIONS"),
    ];
    for (path, allow) in cases {
        let r = conn.ask(&options(&path, "")).await.unwrap();
        assert_eq!((r.status, r.header("allow")), (204, Some(allow)), "{path}");
        assert!(r.header("access-control-allow-origin").is_none(), "{path}");
    }
    let preflight = "Origin: https://shop.example\r\nAccess-Control-Request-Method: DELETE\r\n\
                     Access-Control-Request-Headers: >m\r\n";
    let r = conn.ask(&options(&SHAPED, preflight)).await.unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, HEAD, DELETE, OPTIONS")
    );
    assert!(
        r.header("access-control-allow-headers").is_none(),
        "an invalid name is never echoed"
    );
    // Not a route: no preflight grant.
    for path in ["/tickets/a/b", "/tickets/not-a-ticket"] {
        let r = conn.ask(&options(path, preflight)).await.unwrap();
        assert!(r.status == 404 || r.status == 405, "{path}: {}", r.head);
        assert!(r.header("access-control-allow-methods").is_none());
    }
    let r = conn
        .ask("POST * HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(upstream.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_ends_in_failure_says_why_instead_of_202() {
    // Sold out upstream: every order answered 410, which the queue treats
    // as sold out; and one that is never delivered (503, one attempt).
    let sold = MockUpstream::builder()
        .fail_first(100)
        .fail_status(410)
        .start()
        .await;
    // The first order is answered 410 and flips the queue to sold out; the
    // second, waiting behind it, then fails unsent while its client waits.
    let toml = "drain_rate = 5\nmax_in_flight = 1\nsold_out_statuses = [410]\n";
    let gw = Gateway::builder().toml(toml).upstream(&sold).start().await;
    let c = gw.client();
    c.patch_knobs(r#"{"paused": true}"#).await;
    let mut first = Conn::open(gw.public_addr, WAIT).await;
    let r = first.ask(&post("/checkout", "", "{}")).await.unwrap();
    assert_eq!(r.status, 202);
    let public = gw.public_addr;
    let waiting = tokio::spawn(async move {
        let mut conn = Conn::open(public, WAIT).await;
        let wait = post("/checkout", "Prefer: wait=10\r\n", "{}");
        conn.ask(&wait).await.unwrap()
    });
    eventually(WAIT, "two queued", || async {
        (c.queue().await["depth"] == 2).then_some(())
    })
    .await;
    c.patch_knobs(r#"{"paused": false}"#).await;
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 410, "{}", r.head);
    assert_eq!(r.json()["code"], "sold_out");
    let content_type = r.header("content-type").unwrap();
    assert!(content_type.starts_with("application/problem+json"));
    let ticket = r.header("x-flashgate-ticket").unwrap().to_string();
    let location = format!("/tickets/{ticket}");
    assert_eq!(r.header("location"), Some(location.as_str()));
    gw.stop().await;

    let down = MockUpstream::builder()
        .fail_first(100)
        .fail_status(503)
        .start()
        .await;
    let toml = "drain_rate = 1000\nmax_attempts = 1\n";
    let gw = Gateway::builder().toml(toml).upstream(&down).start().await;
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    let r = conn
        .ask(&post("/checkout", "Prefer: wait=5\r\n", "{}"))
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.head);
    assert_eq!(r.json()["code"], "bad_gateway");
}

/// An upstream that answers every request in HTTP/1.0 and closes.
async fn http10_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let answer =
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_answers_in_its_own_http_version() {
    let upstream = http10_upstream().await;
    let toml = "passthrough = true\n";
    let gw = Gateway::builder()
        .toml(toml)
        .upstream(&format!("http://{upstream}"))
        .start()
        .await;
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    for _ in 0..2 {
        let r = conn
            .ask("GET /catalogue HTTP/1.1\r\nHost: shop\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.head.starts_with("HTTP/1.1 200"), "{}", r.head);
        assert_eq!(r.body, b"ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_request_whose_client_left_is_still_counted() {
    let upstream = MockUpstream::builder()
        .latency(Duration::from_secs(2))
        .start()
        .await;
    let gw = Gateway::builder()
        .toml("passthrough = true\n")
        .upstream(&upstream)
        .start()
        .await;
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    conn.stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: shop\r\n\r\n")
        .await
        .unwrap();
    eventually(WAIT, "the request upstream", || async {
        (!upstream.received().is_empty()).then_some(())
    })
    .await;
    drop(conn);
    let c = gw.client();
    let line = r#"flashgate_http_requests_total{code="499",route="passthrough"} 1"#;
    eventually(WAIT, "the 499 counted", || async {
        c.metrics().await.contains(line).then_some(())
    })
    .await;
}
