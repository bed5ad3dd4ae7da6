//! The gateway's TLS paths end to end, against real parts: a throw-away CA
//! and server certificates made with the `openssl` CLI, a private
//! TLS-only redis-server with an ACL user and password (`rediss://`), an
//! HTTPS mock order service (tokio-rustls) and the built `flashgate` binary,
//! which trusts the test CA through `SSL_CERT_FILE` only.
//!
//! With the CA trusted, orders go through the TLS Redis to the HTTPS
//! upstream, and the Redis password never appears in logs or `check-config`.
//! With another CA trusted, a Redis whose certificate does not verify stops
//! the gateway at start with a clear error, and an upstream whose
//! certificate does not verify never receives an order.

mod support;

use std::path::Path;
use std::time::Duration;

use support::pki::{pki, Pki};
use support::*;

const USER: &str = "flash";
const PASSWORD: &str = "s3cret-pass";

/// A TLS-only redis-server with this PKI's certificate, whose one user is
/// `USER`.
fn tls_redis(pki: &Pki) -> Redis {
    Redis::builder()
        .tls(&pki.cert, &pki.key, &pki.ca)
        .user(USER, PASSWORD)
        .start()
}

/// `flashgate serve` trusting only the CA in `ca` (`SSL_CERT_FILE`; no
/// `SSL_CERT_DIR`), logging at info into `log`.
fn serve(upstream: &MockUpstream, redis: &Redis, ca: &Path, log: &Path) -> GatewayBuilder {
    Gateway::builder()
        .upstream(upstream)
        .redis(redis)
        .env("SSL_CERT_FILE", ca)
        .env_remove("SSL_CERT_DIR")
        .log(Some("info"))
        .log_file(log)
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap()
}

fn assert_no_password(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the Redis password:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_go_through_a_tls_redis_to_an_https_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "trusted");
    let redis = tls_redis(&pki);
    let upstream = MockUpstream::builder()
        .tls(&pki.cert, &pki.key)
        .start()
        .await;
    assert!(upstream.url().starts_with("https://localhost:"));
    let log = dir.path().join("gateway.log");
    let mut gw = serve(&upstream, &redis, &pki.ca, &log).process().await;
    let c = gw.client();

    let n = 5;
    let (tickets, refused) = c.admit_many(n, "tls").await;
    assert!(refused.is_empty(), "refused: {refused:?}\n{}", read(&log));
    assert_eq!(tickets.len(), n);
    let out = c.outcome(&tickets, &[&upstream]).await;
    assert_eq!(out.completed, n, "{out:?}\n{}", read(&log));
    assert_eq!((out.lost, out.redelivered), (0, 0), "{out:?}");
    for t in &tickets {
        let done = c.until_terminal(t, Duration::from_secs(10)).await;
        assert_eq!(done["response"]["status"], 201, "{done}");
        assert_eq!(done["response"]["headers"]["x-order-service"], "mock");
    }
    let by_key = upstream.by_key();
    assert_eq!(by_key.len(), n, "one key per order");
    for t in &tickets {
        let got = &by_key[t];
        assert_eq!(got.len(), 1, "ticket {t} delivered {} times", got.len());
        assert_eq!(got[0].path, "/checkout");
    }
    assert_eq!(upstream.tls_failures(), 0);

    // The queue lives in the TLS Redis: the shared ticket secret, the
    // admission counter and every ticket, read over TLS as the ACL user.
    let mut c = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("flashgate:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        keys.contains(&"flashgate:ticket-secret".to_string()),
        "{keys:?}"
    );
    let admitted: Option<u64> = redis::cmd("HGET")
        .arg("flashgate:{checkout}:counters")
        .arg("admitted")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(admitted, Some(n as u64), "{keys:?}");
    for t in &tickets {
        let key = format!("flashgate:{{checkout}}:ticket:{t}");
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }

    // The URL is shown, its password never.
    let check = flashgate()
        .args(["check-config", "--upstream", &upstream.url()])
        .args(["--redis-url", &redis.url()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "rediss://{USER}:<redacted>@127.0.0.1:{}",
            redis.port
        )),
        "{shown}"
    );
    assert_no_password("check-config", &shown);
    // A configuration error echoes the offending URL, redacted: here an
    // https upstream with credentials and a query (refused).
    let bad = flashgate()
        .arg("check-config")
        .arg("--upstream")
        .arg(format!(
            "https://{USER}:{PASSWORD}@localhost:{}/?x=1",
            upstream.addr.port()
        ))
        .args(["--redis-url", &redis.url()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!("https://{USER}:<redacted>@localhost")),
        "{said}"
    );
    assert_no_password("a config error", &said);

    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    let logged = read(&log);
    assert!(
        logged.contains(&format!(
            "rediss://{USER}:<redacted>@127.0.0.1:{}",
            redis.port
        )),
        "the backend line names the redacted URL:\n{logged}"
    );
    assert_no_password("the gateway's log", &logged);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_certificate_from_an_untrusted_ca_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(dir.path(), "server");
    let other = pki(dir.path(), "other");
    let redis = tls_redis(&server);
    let upstream = MockUpstream::start().await;
    let log = dir.path().join("gateway.log");
    let mut gw = serve(&upstream, &redis, &other.ca, &log).spawn();
    // It keeps trying to read the shared ticket secret for a bounded time,
    // then gives up.
    let code = gw.wait_exit(Duration::from_secs(30));
    let logged = read(&log);
    assert_eq!(code, Some(1), "{logged}");
    assert!(
        logged.contains("ticket secret") && logged.to_lowercase().contains("certificate"),
        "the error says what failed:\n{logged}"
    );
    assert_no_password("the gateway's log", &logged);
    assert!(upstream.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_certificate_from_an_untrusted_ca_never_gets_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = pki(dir.path(), "trusted");
    let rogue = pki(dir.path(), "rogue");
    let redis = tls_redis(&trusted);
    let upstream = MockUpstream::builder()
        .tls(&rogue.cert, &rogue.key)
        .start()
        .await;
    let log = dir.path().join("gateway.log");
    let attempts = 2;
    let gw = serve(&upstream, &redis, &trusted.ca, &log)
        .args(&["--max-attempts", &attempts.to_string()])
        .process()
        .await;
    let c = gw.client();

    let n = 2;
    let (tickets, refused) = c.admit_many(n, "rogue").await;
    assert!(refused.is_empty(), "refused: {refused:?}\n{}", read(&log));
    for t in &tickets {
        let done = c.until_terminal(t, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "failed", "{done}");
        let detail = done["error"]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("certificate"),
            "the failure names the certificate: {done}"
        );
    }
    assert!(
        upstream.received().is_empty(),
        "an unverified server got an order"
    );
    // Every attempt reached the server and was refused in the handshake.
    assert!(
        upstream.tls_failures() >= n * attempts,
        "{} failed handshakes",
        upstream.tls_failures()
    );
    let text = c.metrics().await;
    let errors = text.sum(
        "flashgate_upstream_responses_total",
        &["code_class=\"error\""],
    );
    assert_eq!(errors, (n * attempts) as f64, "{text}");
    assert_no_password("the gateway's log", &read(&log));
}
