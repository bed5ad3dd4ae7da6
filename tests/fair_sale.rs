//! A fair sale (issue #21): stock per product and a purchase limit per
//! customer, held by two gateway instances on one real Redis — plain and
//! partitioned — and the refusals a shop's client meets.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use support::*;

/// Two instances of one gateway on `redis`, with `toml`.
async fn two(redis: &Redis, upstream: &MockUpstream, toml: &str) -> (Gateway, Gateway) {
    let start = || {
        Gateway::builder()
            .toml(toml)
            .upstream(upstream)
            .redis(redis)
            .start()
    };
    (start().await, start().await)
}

/// Stops dispatch on both instances, so tickets stay queued.
async fn pause(a: &Gateway, b: &Gateway) {
    let answer = a
        .client()
        .patch_queue("checkout", r#"{"paused": true}"#)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let other = b.client();
    eventually(
        Duration::from_secs(10),
        "the other instance to pause",
        || async { (other.queue().await["paused"] == true).then_some(()) },
    )
    .await;
}

/// Sends `n` checkouts of `sku` at once, alternating instances; the
/// answers.
async fn burst(clients: &[Client; 2], sku: &str, n: usize) -> Vec<Answer> {
    join_all((0..n).map(|i| {
        let c = clients[i % 2].clone();
        let body = format!("{{\"sku\":\"{sku}\",\"n\":{i}}}");
        async move { c.admit(body).await }
    }))
    .await
}

async fn burst_over_three_products(partitions: u32) {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let toml = format!(
        "partitions = {partitions}\nproduct_from = \"json:/sku\"\n\
         product_stock = {{ a = 10, b = 20, c = 30 }}\n"
    );
    let (x, y) = two(&redis, &upstream, &toml).await;
    pause(&x, &y).await;
    let clients = [x.client(), y.client()];
    for (sku, stock) in [("a", 10), ("b", 20), ("c", 30)] {
        // Bursts of twice the stock until it is sold: a partitioned queue
        // sells each partition's share to the tickets that fall there.
        let mut admitted = 0;
        for _ in 0..20 {
            if admitted >= stock {
                break;
            }
            for answer in burst(&clients, sku, 2 * stock).await {
                match answer.status.as_u16() {
                    202 => admitted += 1,
                    410 => {
                        let problem = answer.json();
                        assert_eq!(problem["code"], "sold_out");
                        assert_eq!(problem["product"], sku, "{problem}");
                    }
                    other => panic!("{other}: {}", answer.text()),
                }
            }
        }
        assert_eq!(admitted, stock, "`{sku}` admitted exactly its stock");
    }
    let products = &x.client().queue().await["products"];
    for (sku, stock) in [("a", 10), ("b", 20), ("c", 30)] {
        assert_eq!(products[sku]["sold"], stock, "{products}");
        assert_eq!(products[sku]["stock_left"], 0, "{products}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_three_products_admits_exactly_each_stock() {
    burst_over_three_products(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_three_products_admits_exactly_each_stock_partitioned() {
    burst_over_three_products(3).await;
}

/// `alice` sends `n` checkouts of `a` at once, each with its own key
/// (`{tag}-{i}`), alternating instances.
async fn keyed_burst(clients: &[Client; 2], user: &str, tag: &str, n: usize) -> Vec<Answer> {
    join_all((0..n).map(|i| {
        let c = clients[i % 2].clone();
        let key = format!("{tag}-{i}");
        let user = user.to_string();
        async move {
            let headers = [("idempotency-key", key.as_str()), ("x-user", user.as_str())];
            c.admit_with(&headers, r#"{"sku":"a"}"#).await
        }
    }))
    .await
}

async fn client_limit(partitions: u32) {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    // Three units: alice's two and bob's one. A partitioned queue sends all
    // of a client's admissions to one partition, which holds its share of
    // the stock: plenty there, and no last unit to take.
    let stock = if partitions == 1 { 3 } else { 300 };
    let toml = format!(
        "partitions = {partitions}\nclient_key = \"header:x-user\"\nper_client_max = 2\n\
         product_from = \"json:/sku\"\nproduct_stock = {{ a = {stock} }}\n"
    );
    let (x, y) = two(&redis, &upstream, &toml).await;
    pause(&x, &y).await;
    let clients = [x.client(), y.client()];

    // Twenty keys over both instances: two tickets, eighteen refusals
    // that will not pass with time (no Retry-After).
    let answers = keyed_burst(&clients, "alice", "k", 20).await;
    let mut admitted = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        match a.status.as_u16() {
            202 => admitted.push((i, a.ticket())),
            429 => {
                assert_eq!(a.json()["code"], "client_quota_exceeded", "{}", a.text());
                assert!(a.headers.get("retry-after").is_none(), "no Retry-After");
            }
            other => panic!("{other}: {}", a.text()),
        }
    }
    assert_eq!(admitted.len(), 2, "exactly per_client_max tickets");

    // Replays answer with their ticket, on either instance.
    for (i, ticket) in &admitted {
        for c in &clients {
            let key = format!("k-{i}");
            let headers = [("idempotency-key", key.as_str()), ("x-user", "alice")];
            let again = c.admit_with(&headers, r#"{"sku":"a"}"#).await;
            assert_eq!(again.status, 200, "{}", again.text());
            assert_eq!(again.header("idempotent-replayed"), "true");
            assert_eq!(&again.ticket(), ticket);
        }
    }

    // Bob takes the last unit; his next is sold out, not over his limit.
    if partitions == 1 {
        let bob = keyed_burst(&clients, "bob", "b", 1).await;
        assert_eq!(bob[0].status, 202, "{}", bob[0].text());
        let more = keyed_burst(&clients, "bob", "b2", 1).await;
        assert_eq!(more[0].status, 410, "{}", more[0].text());
    }

    // Alice cancels one: her place (and its unit) come back to her.
    let (_, cancelled) = &admitted[0];
    let gone = x
        .client()
        .send("DELETE", &format!("/tickets/{cancelled}"), &[], "")
        .await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    let again = keyed_burst(&clients, "alice", "again", 2).await;
    let statuses: Vec<u16> = again.iter().map(|a| a.status.as_u16()).collect();
    assert!(
        statuses.contains(&202) && statuses.iter().filter(|s| **s == 202).count() == 1,
        "one place came back: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_exactly_its_limit_across_two_instances() {
    client_limit(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_exactly_its_limit_across_two_instances_partitioned() {
    client_limit(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_known_product_are_refused_with_what_was_expected() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("product_from = \"json:/item/sku\"\nproduct_stock = { a = 1 }\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    for body in [r#"{}"#, r#"{"item":{"sku":true}}"#, "not json"] {
        let a = c.admit(body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        let problem = a.json();
        assert_eq!(problem["code"], "invalid_product");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("JSON pointer `/item/sku`"), "{detail}");
    }
    let a = c.admit(r#"{"item":{"sku":"zz"}}"#).await;
    assert_eq!(a.status, 404, "{}", a.text());
    assert_eq!(a.json()["code"], "unknown_product");
    assert_eq!(a.json()["product"], "zz");

    assert_eq!(c.admit(r#"{"item":{"sku":"a"}}"#).await.status, 202);
    let a = c.admit(r#"{"item":{"sku":"a"}}"#).await;
    assert_eq!(a.status, 410, "{}", a.text());
    assert_eq!(a.json()["product"], "a");
    assert!(a.json()["detail"].as_str().unwrap().contains("`a`"));
    let metrics = c.metrics().await;
    assert_eq!(
        metrics.sum(
            "flashgate_admissions_total",
            &["outcome=\"unknown_product\""]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_product_can_come_from_the_path_a_query_or_a_header() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml(
            "route = [\"POST /buy/a\", \"POST /buy/b\"]\nproduct_from = \"path:/buy/{sku}\"\n\
             product_stock = { a = 1, b = 1 }\n",
        )
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    assert_eq!(c.send("POST", "/buy/a", &[], "{}").await.status, 202);
    let a = c.send("POST", "/buy/a", &[], "{}").await;
    assert_eq!(
        (a.status.as_u16(), a.json()["product"].clone()),
        (410, Value::from("a"))
    );
    assert_eq!(c.send("POST", "/buy/b", &[], "{}").await.status, 202);

    for (from, good, bad) in [
        (
            "query:sku",
            ("/checkout?x=1&sku=a", vec![]),
            ("/checkout?sku=", vec![]),
        ),
        (
            "header:x-sku",
            ("/checkout", vec![("x-sku", "a")]),
            ("/checkout", vec![]),
        ),
    ] {
        let gw = Gateway::builder()
            .toml(&format!(
                "product_from = \"{from}\"\nproduct_stock = {{ a = 5 }}\n"
            ))
            .upstream(&upstream)
            .start()
            .await;
        let c = gw.client();
        let ok = c.send("POST", good.0, &good.1, "{}").await;
        assert_eq!(ok.status, 202, "{from}: {}", ok.text());
        let refused = c.send("POST", bad.0, &bad.1, "{}").await;
        assert_eq!(refused.status, 400, "{from}: {}", refused.text());
        assert_eq!(refused.json()["code"], "invalid_product");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_sold_out_fails_only_that_products_waiting_tickets() {
    let redis = Redis::start();
    // The order service is out of `b`: 410 for it, 201 for the rest.
    let upstream = MockUpstream::builder()
        .poison("\"sku\":\"b\"")
        .fail_status(410)
        .start()
        .await;
    let gw = Gateway::builder()
        .toml(
            "product_from = \"json:/sku\"\nproduct_stock = { a = 10, b = 10 }\n\
             sold_out_statuses = [410]\nmax_in_flight = 1\n",
        )
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    c.patch_knobs(r#"{"paused": true}"#).await;
    let mut tickets = Vec::new();
    for (i, sku) in ["a", "b", "b", "b", "a"].iter().enumerate() {
        let t = c.ticket(format!("{{\"sku\":\"{sku}\",\"n\":{i}}}")).await;
        tickets.push((*sku, t));
    }
    c.patch_knobs(r#"{"paused": false}"#).await;
    let mut failed_unsent = 0;
    for (sku, t) in &tickets {
        let done = c.until_terminal(t, Duration::from_secs(30)).await;
        match (*sku, done["status"].as_str().unwrap()) {
            ("a", status) => assert_eq!(status, "completed", "{done}"),
            ("b", "completed") => assert_eq!(done["response"]["status"], 410, "{done}"),
            ("b", "failed") => {
                assert_eq!(done["error"]["code"], "sold_out", "{done}");
                failed_unsent += 1;
            }
            other => panic!("{other:?}: {done}"),
        }
    }
    assert_eq!(
        failed_unsent, 2,
        "the first `b` told the drain; the rest failed unsent"
    );
    assert_eq!(upstream.received().len(), 3, "two `a`, one `b`");
    let b = c.admit(r#"{"sku":"b"}"#).await;
    assert_eq!(
        (b.status.as_u16(), b.json()["product"].clone()),
        (410, Value::from("b"))
    );
    assert_eq!(c.admit(r#"{"sku":"a"}"#).await.status, 202);
    let products = &c.queue().await["products"];
    assert_eq!(products["b"]["sold_out"], true, "{products}");
    assert_eq!(products["a"]["sold_out"], false, "{products}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_read_set_and_add_to_a_products_stock_on_every_instance() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let toml = "product_from = \"json:/sku\"\nproduct_stock = { a = 1 }\n";
    let (x, y) = two(&redis, &upstream, toml).await;
    pause(&x, &y).await;
    let (cx, cy) = (x.client(), y.client());
    assert_eq!(cx.admit(r#"{"sku":"a"}"#).await.status, 202);
    assert_eq!(cy.admit(r#"{"sku":"a"}"#).await.status, 410);

    let json = [("content-type", "application/json")];
    let path = "/admin/queues/checkout/stock/a";
    let added = cx.admin("PATCH", path, &json, r#"{"add": 2}"#).await;
    assert_eq!(added.status, 200, "{}", added.text());
    let a = added.json();
    assert_eq!(
        (
            a["stock"].clone(),
            a["sold"].clone(),
            a["stock_left"].clone()
        ),
        (3.into(), 1.into(), 2.into())
    );
    // Admission reads the stock in its atomic step: the other instance
    // sells the new units at once.
    assert_eq!(cy.admit(r#"{"sku":"a"}"#).await.status, 202);
    let set = cy.admin("PUT", path, &json, r#"{"stock": 2}"#).await;
    assert_eq!(set.json()["stock_left"], 0, "{}", set.text());
    assert_eq!(cx.admit(r#"{"sku":"a"}"#).await.status, 410);

    // A new product, sold at once by both instances once they see it.
    let new = cx
        .admin(
            "PUT",
            "/admin/queues/checkout/stock/socks",
            &json,
            r#"{"stock": 5}"#,
        )
        .await;
    assert_eq!(new.status, 200, "{}", new.text());
    eventually(
        Duration::from_secs(10),
        "the other instance to sell socks",
        || async { (cy.admit(r#"{"sku":"socks"}"#).await.status == 202).then_some(()) },
    )
    .await;
    let all = cx.admin_get("/admin/queues/checkout/stock").await.json();
    assert_eq!(all["products"]["socks"]["sold"], 1, "{all}");
    assert_eq!(all["products"]["a"]["stock"], 2, "{all}");

    for (method, body) in [
        ("PATCH", r#"{"add": 1, "stock": 3}"#),
        ("PUT", r#"{"stock": -1}"#),
        ("PUT", "[]"),
    ] {
        let bad = cx.admin(method, path, &json, body).await;
        assert_eq!(bad.status, 400, "{body}: {}", bad.text());
    }
    let unknown = cx.admin_get("/admin/queues/checkout/stock/hat").await;
    assert_eq!(unknown.json()["code"], "unknown_product");
}
