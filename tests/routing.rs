//! Routing on the normalized path, against the recording mock upstream:
//! every spelling of a queued route is admitted and forwarded as the route,
//! ambiguous paths get 400, passthrough forwards the normal form.
//! (tests/bypass.rs does the same against real web frameworks.)

mod support;

use std::time::Duration;

use support::raw::{request, RawAnswer};
use support::*;

fn refused(a: &RawAnswer, what: &str) {
    assert_eq!(
        a.status,
        400,
        "{what}: {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let v = a.json();
    assert_eq!(v["code"], "bad_request", "{what}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("ambiguous request path: ")),
        "{what}: {v}"
    );
}

/// Waits until the mock has received `n` requests and returns their paths.
async fn paths_received(upstream: &MockUpstream, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(20), "the drain to deliver", || async {
        let got = upstream.received();
        (got.len() >= n).then(|| got.into_iter().map(|r| r.path).collect())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_queued_route_is_stored_as_the_route() {
    let upstream = MockUpstream::start().await;
    let toml = "passthrough = true\ndrain_rate = 1000\n";
    let gw = Gateway::builder()
        .toml(toml)
        .upstream(&upstream)
        .start()
        .await;
    let spellings = [
        ("/checkout/", "/checkout"),
        ("//checkout", "/checkout"),
        ("/%63heckout", "/checkout"),
        ("/check%6Fut?x=1", "/checkout?x=1"),
        ("/./checkout", "/checkout"),
        ("/x/../checkout", "/checkout"),
        ("/x/%2e%2e/checkout", "/checkout"),
        ("/checkout;a=b", "/checkout"),
        ("/checkout/;a=b?x=%2F", "/checkout?x=%2F"),
        ("/checkout/.", "/checkout"),
    ];
    for (spelling, _) in spellings {
        let a = request(gw.public_addr, "POST", spelling, &[], "{}").await;
        assert_eq!(
            a.status,
            202,
            "{spelling}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    let mut got = paths_received(&upstream, spellings.len()).await;
    let mut want: Vec<String> = spellings.iter().map(|(_, p)| p.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_get_400_and_reach_nothing() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("passthrough = true\n")
        .upstream(&upstream)
        .start()
        .await;
    for spelling in [
        "/checkout%2f",
        "/checkout%2F",
        "/check%2Fout",
        "/..%2fcheckout",
        "/checkout%5C",
        "/checkout%00",
        "/checkout\\",
        "/check%zzout",
        "/checkout%4",
        "/%2E%2E/checkout",
        "/../checkout",
        "/x/..;/checkout",
        "/products%2F42",
    ] {
        for method in ["POST", "GET", "OPTIONS"] {
            let a = request(gw.public_addr, method, spelling, &[], "").await;
            refused(&a, &format!("{method} {spelling}"));
        }
    }
    assert!(upstream.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_forwards_the_normal_form_and_the_query_as_sent() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("passthrough = true\n")
        .upstream(&upstream)
        .start()
        .await;
    let cases = [
        (
            "//products/./42/%7eitem?color=red%2Fblue",
            "/products/42/~item?color=red%2Fblue",
        ),
        ("/a/b/../c%3b;v=1/", "/a/c%3B;v=1/"),
        ("/Checkout", "/Checkout"),
        ("/%2563heckout", "/%2563heckout"),
        ("/caf%c3%a9", "/caf%C3%A9"),
    ];
    for (i, (spelling, forwarded)) in cases.iter().enumerate() {
        let a = request(gw.public_addr, "GET", spelling, &[], "").await;
        assert_eq!(a.status, 201, "{spelling}: passed through");
        let got = upstream.received();
        assert_eq!(got.len(), i + 1);
        assert_eq!(&got[i].path, forwarded, "{spelling}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_insensitive_queue_stores_its_own_spelling_of_the_route() {
    let upstream = MockUpstream::start().await;
    let toml = "passthrough = true\ndrain_rate = 1000\nroute_case_insensitive = true\n";
    let gw = Gateway::builder()
        .toml(toml)
        .upstream(&upstream)
        .start()
        .await;
    for spelling in ["/Checkout/;a=b?x=1", "/CHECKOUT", "//cHeCk%4Fut/"] {
        let a = request(gw.public_addr, "POST", spelling, &[], "{}").await;
        assert_eq!(a.status, 202, "{spelling}");
    }
    let mut got = paths_received(&upstream, 3).await;
    got.sort();
    assert_eq!(got, ["/checkout", "/checkout", "/checkout?x=1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_one_request_are_one_idempotent_request() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 0.001\n")
        .upstream(&upstream)
        .start()
        .await;
    let key = [("idempotency-key", "order-7")];
    let first = request(gw.public_addr, "POST", "/checkout?x=1", &key, "{}").await;
    assert_eq!(first.status, 202);
    let again = request(gw.public_addr, "POST", "//%63heckout/;s=1?x=1", &key, "{}").await;
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["ticket"], first.json()["ticket"]);
    // Another query is another request.
    let other = request(gw.public_addr, "POST", "/checkout?x=2", &key, "{}").await;
    assert_eq!(other.status, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_on_any_spelling_get_405_with_the_route_methods() {
    let upstream = MockUpstream::start().await;
    let toml = "passthrough = true\nroute = [\"POST /checkout\", \"PUT /checkout/\"]\n";
    let gw = Gateway::builder()
        .toml(toml)
        .upstream(&upstream)
        .start()
        .await;
    for spelling in ["/checkout", "/checkout/", "/%63heckout;a=b"] {
        let a = request(gw.public_addr, "DELETE", spelling, &[], "").await;
        assert_eq!(a.status, 405, "{spelling}");
        assert_eq!(a.header("allow"), Some("POST, PUT, OPTIONS"), "{spelling}");
        assert_eq!(a.json()["code"], "method_not_allowed");
    }
    assert!(upstream.received().is_empty(), "never passed through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_and_page_routes_follow_the_normal_form() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 0.001\n")
        .upstream(&upstream)
        .start()
        .await;
    let a = request(gw.public_addr, "POST", "/checkout", &[], "{}").await;
    let ticket = a.json()["ticket"].as_str().unwrap().to_string();
    for spelling in [
        format!("//tickets/{ticket}"),
        format!("/%74ickets/./{ticket}"),
        format!("/x/../tickets/{ticket}"),
    ] {
        let a = request(gw.public_addr, "GET", &spelling, &[], "").await;
        assert_eq!(a.status, 200, "{spelling}");
        assert_eq!(a.json()["ticket"], ticket.as_str());
    }
    let page = format!("//waiting-room/./{ticket}");
    let page = request(gw.public_addr, "GET", &page, &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    let doc = request(gw.public_addr, "GET", "/%6fpenapi.json", &[], "").await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()["openapi"].as_str().map(|v| &v[..2]), Some("3."));
}
