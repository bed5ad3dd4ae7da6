//! The mock order service: dedup, stock, injected failures, `/stats`, `/keys`.

use std::time::Duration;

use bytes::Bytes;
use flashgate_loadtest::client::{self, Answer, Connection, Target};
use flashgate_loadtest::server::Running;
use flashgate_loadtest::upstream::{self, Stats};
use hyper::header::HeaderValue;
use hyper::Method;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn start(options: upstream::Options) -> Running {
    upstream::start(&options).await.expect("upstream starts")
}

async fn order(conn: &mut Connection, key: Option<&str>) -> Answer {
    let mut req = conn
        .target()
        .request(
            Method::POST,
            "/checkout",
            Bytes::from_static(b"{\"sku\":\"a\"}"),
        )
        .expect("request");
    if let Some(key) = key {
        req.headers_mut()
            .insert("idempotency-key", HeaderValue::from_str(key).expect("key"));
    }
    conn.send(req).await.expect("answer")
}

async fn stats(server: &Running) -> Stats {
    let answer = client::get(&format!("{}/stats", server.url()), TIMEOUT)
        .await
        .expect("stats");
    serde_json::from_slice(&answer.body).expect("stats JSON")
}

fn connect(server: &Running) -> Connection {
    Connection::new(Target::parse(&server.url()).expect("url"), TIMEOUT)
}

#[tokio::test]
async fn a_redelivered_key_is_applied_once_and_counted_as_duplicate() {
    let server = start(upstream::Options::default()).await;
    let mut conn = connect(&server);
    let first = order(&mut conn, Some("k1")).await;
    let again = order(&mut conn, Some("k1")).await;
    assert_eq!(first.status, 201);
    assert_eq!(again.status, 201);
    assert_eq!(first.body, again.body, "a redelivery gets the first answer");

    let s = stats(&server).await;
    assert_eq!(
        (s.received, s.distinct, s.duplicates, s.applied),
        (2, 1, 1, 1)
    );

    let keys = client::get(&format!("{}/keys", server.url()), TIMEOUT)
        .await
        .expect("keys");
    assert_eq!(keys.body, Bytes::from_static(b"k1\n"));
}

#[tokio::test]
async fn orders_beyond_the_stock_are_sold_out() {
    let server = start(upstream::Options {
        stock: Some(1),
        ..upstream::Options::default()
    })
    .await;
    let mut conn = connect(&server);
    assert_eq!(order(&mut conn, Some("a")).await.status, 201);
    let refused = order(&mut conn, Some("b")).await;
    assert_eq!(refused.status, 410);
    assert_eq!(refused.body, Bytes::from_static(br#"{"error":"sold_out"}"#));
    // The key that got the last unit keeps it on redelivery.
    assert_eq!(order(&mut conn, Some("a")).await.status, 201);

    let s = stats(&server).await;
    assert_eq!((s.applied, s.sold_out, s.duplicates), (1, 1, 1));
    assert_eq!(s.stock_left, Some(0));
}

#[tokio::test]
async fn injected_failures_answer_503_and_apply_nothing() {
    let server = start(upstream::Options {
        error_rate: 1.0,
        ..upstream::Options::default()
    })
    .await;
    let mut conn = connect(&server);
    let answer = order(&mut conn, Some("x")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.retry_after(), Some(Duration::from_secs(1)));

    let s = stats(&server).await;
    assert_eq!(
        (s.received, s.errors_injected, s.applied, s.distinct),
        (1, 1, 0, 0)
    );
    // The delivery still shows as seen, so it is not reported as lost.
    let keys = client::get(&format!("{}/keys", server.url()), TIMEOUT)
        .await
        .expect("keys");
    assert_eq!(keys.body, Bytes::from_static(b"x\n"));
}

#[tokio::test]
async fn orders_without_a_key_are_applied_every_time() {
    let server = start(upstream::Options::default()).await;
    let mut conn = connect(&server);
    order(&mut conn, None).await;
    order(&mut conn, None).await;
    let s = stats(&server).await;
    assert_eq!((s.applied, s.without_key, s.distinct), (2, 2, 0));
}

#[tokio::test]
async fn a_stopped_server_no_longer_answers() {
    let server = start(upstream::Options::default()).await;
    let url = server.url();
    server.stop();
    assert!(client::get(&format!("{url}/stats"), TIMEOUT).await.is_err());
}
