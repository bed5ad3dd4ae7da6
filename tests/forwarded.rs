//! What the upstream is told about the client: `X-Forwarded-For` and
//! `X-Forwarded-Proto` come from a trusted proxy's `X-Forwarded-*` or
//! `Forwarded`, and from nobody else; otherwise the scheme is the gateway's
//! own.

mod support;

use std::time::Duration;

use support::raw::Conn;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn post(path: &str, headers: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: shop\r\n{headers}Content-Length: 2\r\n\r\n{{}}")
}

/// Sends a queued and a passed-through request with `headers` and returns
/// what the upstream received for each: (queued, passed through).
async fn both(gw: &Gateway, upstream: &MockUpstream, headers: &str) -> (Received, Received) {
    let before = upstream.received().len();
    let mut conn = Conn::open(gw.public_addr, WAIT).await;
    assert_eq!(
        conn.ask(&post("/checkout", headers)).await.unwrap().status,
        202
    );
    assert_eq!(
        conn.ask(&post("/elsewhere", headers)).await.unwrap().status,
        201
    );
    let got = eventually(WAIT, "both requests upstream", || async {
        let got = upstream.received();
        (got.len() == before + 2).then(|| got[before..].to_vec())
    })
    .await;
    let pick = |path: &str| got.iter().find(|r| r.path == path).unwrap().clone();
    (pick("/checkout"), pick("/elsewhere"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_says_who_the_client_is_and_which_scheme_it_used() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\npassthrough = true\ntrusted_proxies = [\"127.0.0.1\"]\n")
        .upstream(&upstream)
        .start()
        .await;

    // A TLS load balancer speaking X-Forwarded-*.
    let xff = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n";
    for r in <[Received; 2]>::from(both(&gw, &upstream, xff).await) {
        assert_eq!(
            r.header("x-forwarded-for"),
            "203.0.113.9, 127.0.0.1",
            "{}",
            r.path
        );
        assert_eq!(r.header("x-forwarded-proto"), "https", "{}", r.path);
    }

    // One speaking RFC 7239: the element naming the client gives its scheme.
    let fwd = "Forwarded: for=\"198.51.100.4:5555\";proto=https, for=127.0.0.1;proto=http\r\n";
    for r in <[Received; 2]>::from(both(&gw, &upstream, fwd).await) {
        assert_eq!(
            r.header("x-forwarded-for"),
            "198.51.100.4, 127.0.0.1, 127.0.0.1",
            "{}",
            r.path
        );
        assert_eq!(r.header("x-forwarded-proto"), "https", "{}", r.path);
        assert!(r.headers.get("forwarded").is_none(), "{}", r.path);
    }

    // A proxy that says nothing of the scheme: the gateway's own.
    let silent = "X-Forwarded-For: 203.0.113.9\r\n";
    for r in <[Received; 2]>::from(both(&gw, &upstream, silent).await) {
        assert_eq!(r.header("x-forwarded-proto"), "http", "{}", r.path);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_cannot_claim_an_address_or_a_scheme() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\npassthrough = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n")
        .upstream(&upstream)
        .start()
        .await;
    let forged = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
                  Forwarded: for=198.51.100.4;proto=https\r\n";
    for r in <[Received; 2]>::from(both(&gw, &upstream, forged).await) {
        assert_eq!(r.header("x-forwarded-for"), "127.0.0.1", "{}", r.path);
        assert_eq!(r.header("x-forwarded-proto"), "http", "{}", r.path);
        assert!(r.headers.get("forwarded").is_none(), "{}", r.path);
    }
    gw.stop().await;
}
