//! Proof of work before the queue (issue #21): two gateway instances on one
//! private Redis refuse an admission without a solution, a forged, expired,
//! reused (on the other instance) or outdated one, each with its problem
//! `code`, and admit a fresh one; raising the difficulty through the admin
//! API refuses older easier seeds; turned off, admissions need none.

mod support;

use std::time::{Duration, SystemTime};

use flashgate::ticket::pow::{solve, PowKey};
use flashgate::ticket::TicketSecret;
use serde_json::Value;

use support::*;

const SECRET: &str = "pow-test-secret-pow-test-secret-0123456789";

/// `GET /challenge` of the `checkout` queue, which must answer.
async fn challenge(c: &Client) -> Value {
    let a = c.get("/challenge?queue=checkout").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("cache-control"), "no-store");
    a.json()
}

/// A fresh challenge of `c`'s, solved: the `Flashgate-Pow` header value.
async fn solved(c: &Client) -> String {
    let ch = challenge(c).await;
    let difficulty = ch["difficulty"].as_u64().unwrap() as u8;
    solve(ch["seed"].as_str().unwrap(), difficulty).0
}

/// An admission with this `Flashgate-Pow` header (and more headers).
async fn admit_pow(c: &Client, pow: &str, more: &[(&str, &str)], body: &str) -> Answer {
    let mut headers = vec![("flashgate-pow", pow)];
    headers.extend_from_slice(more);
    c.admit_with(&headers, body.to_string()).await
}

/// The answer must be a 403 problem with this `code` and a challenge URL.
fn refused(a: &Answer, code: &str) {
    assert_eq!(a.status, 403, "{code}: {}", a.text());
    let v = a.json();
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["challenge"], "/challenge?queue=checkout", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_admit_each_solution_once_and_follow_the_difficulty() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let toml = format!("pow_difficulty = 8\nticket_secret = \"{SECRET}\"\n");
    let start = || {
        Gateway::builder()
            .toml(&toml)
            .upstream(&upstream)
            .redis(&redis)
            .start()
    };
    let (ga, gb) = (start().await, start().await);
    let (a, b) = (ga.client(), gb.client());

    // The challenge: a seed at the queue's difficulty, for a while.
    let ch = challenge(&a).await;
    assert_eq!(ch["difficulty"], 8, "{ch}");
    assert_eq!(ch["algorithm"], "sha256");
    assert_eq!(ch["header"], "Flashgate-Pow");
    assert_eq!(ch["seed"].as_str().unwrap().len(), 48, "{ch}");
    assert!(ch["expires_at"].as_str().unwrap().ends_with('Z'), "{ch}");
    assert_eq!(a.get("/challenge?queue=nope").await.status, 404);

    // Without a solution: refused before the body is read, and counted.
    refused(&a.admit("{}").await, "pow_required");
    let m = a.metrics().await;
    assert_eq!(
        m.sum("flashgate_pow_failures_total", &["reason=\"required\""]),
        1.0
    );
    assert_eq!(
        m.sum("flashgate_admissions_total", &["outcome=\"pow_failed\""]),
        1.0
    );

    // A solution admits once, whichever instance sees it again.
    let pow = solved(&a).await;
    let first = admit_pow(&a, &pow, &[], "{\"n\":1}").await;
    assert_eq!(first.status, 202, "{}", first.text());
    refused(&admit_pow(&b, &pow, &[], "{\"n\":2}").await, "pow_reused");
    refused(&admit_pow(&a, &pow, &[], "{\"n\":3}").await, "pow_reused");
    assert_eq!(
        b.metrics()
            .await
            .sum("flashgate_pow_failures_total", &["reason=\"reused\""]),
        1.0
    );

    // A retry of an admitted request (same key, same header) gets its
    // ticket on the other instance; another key with that header does not.
    let pow = solved(&b).await;
    let key = [("idempotency-key", "order-1")];
    let kept = admit_pow(&b, &pow, &key, "{\"n\":4}").await;
    assert_eq!(kept.status, 202, "{}", kept.text());
    let retry = admit_pow(&a, &pow, &key, "{\"n\":4}").await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), "true");
    assert_eq!(retry.ticket(), kept.ticket());
    let other_key = [("idempotency-key", "order-2")];
    refused(
        &admit_pow(&a, &pow, &other_key, "{\"n\":4}").await,
        "pow_reused",
    );

    // Forged: a nonce that does not meet the difficulty, a seed edited, a
    // seed made under another secret, a seed of another client.
    let pow = solved(&a).await;
    let (seed, nonce) = pow.split_once('.').unwrap();
    let wrong = (0u64..)
        .map(|n| format!("{seed}.{n}x"))
        .find(|h| {
            let hash = <sha2::Sha256 as sha2::Digest>::digest(h.as_bytes());
            flashgate::ticket::pow::leading_zero_bits(&hash) < 8
        })
        .unwrap();
    refused(&admit_pow(&a, &wrong, &[], "{}").await, "pow_invalid");
    let mut edited = seed.as_bytes().to_vec();
    edited[10] = if edited[10] == b'A' { b'B' } else { b'A' };
    let edited = format!("{}.{nonce}", String::from_utf8(edited).unwrap());
    refused(&admit_pow(&b, &edited, &[], "{}").await, "pow_invalid");
    let now = SystemTime::now();
    let ttl = Duration::from_secs(60);
    let stranger = PowKey::new(&TicketSecret::new(vec![1u8; 32]), "checkout").issue(
        "checkout",
        "ip:127.0.0.1",
        8,
        now,
        ttl,
    );
    let stranger = solve(&stranger.seed, 8).0;
    refused(&admit_pow(&a, &stranger, &[], "{}").await, "pow_invalid");
    let ours = PowKey::new(&TicketSecret::new(SECRET.as_bytes()), "checkout");
    let someone_else = ours.issue("checkout", "ip:10.1.2.3", 8, now, ttl);
    let someone_else = solve(&someone_else.seed, 8).0;
    refused(
        &admit_pow(&b, &someone_else, &[], "{}").await,
        "pow_invalid",
    );
    // The same key, this client: the test's own seed is genuine...
    let genuine = solve(&ours.issue("checkout", "ip:127.0.0.1", 8, now, ttl).seed, 8).0;
    assert_eq!(admit_pow(&b, &genuine, &[], "{}").await.status, 202);

    // ...and expired once its time has passed.
    let old = now - Duration::from_secs(3600);
    let expired = solve(&ours.issue("checkout", "ip:127.0.0.1", 8, old, ttl).seed, 8).0;
    refused(&admit_pow(&a, &expired, &[], "{}").await, "pow_expired");

    // An attack: the operator raises the difficulty on one instance; the
    // other follows, and refuses a seed issued before at the old one.
    let easy = solved(&b).await;
    let raised = a.patch_knobs(r#"{"pow_difficulty": 12}"#).await;
    assert_eq!(raised["pow_difficulty"], 12, "{raised}");
    assert_eq!(raised["overrides"]["pow_difficulty"], 12, "{raised}");
    eventually(Duration::from_secs(10), "B to follow the raise", || async {
        (challenge(&b).await["difficulty"] == 12).then_some(())
    })
    .await;
    refused(&admit_pow(&b, &easy, &[], "{}").await, "pow_insufficient");
    let hard = solved(&b).await;
    assert_eq!(admit_pow(&b, &hard, &[], "{}").await.status, 202);
    let events = a
        .admin_get("/admin/queues/checkout/events?type=knobs_changed")
        .await
        .json();
    let changed = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "knobs_changed")
        .cloned()
        .unwrap_or_default();
    assert!(changed.to_string().contains("pow_difficulty"), "{events}");

    // Off: admissions need no solution, on either instance.
    b.patch_knobs(r#"{"pow_difficulty": 0}"#).await;
    eventually(Duration::from_secs(10), "A to follow", || async {
        (challenge(&a).await["difficulty"] == 0).then_some(())
    })
    .await;
    let plain = a.admit("{\"n\":9}").await;
    assert_eq!(plain.status, 202, "{}", plain.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_queue_admits_each_solution_once() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("pow_difficulty = 6\n")
        .backend(Backend::Partitioned)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    // Whatever keys it is sent with, one seed is recorded where all its
    // uses go: the client's partition.
    for i in 0..4 {
        let pow = solved(&c).await;
        let key = format!("k{i}");
        let first = admit_pow(&c, &pow, &[("idempotency-key", &key)], "{}").await;
        assert_eq!(first.status, 202, "{}", first.text());
        for j in 0..6 {
            let other = format!("k{i}-{j}");
            let again = admit_pow(&c, &pow, &[("idempotency-key", &other)], "{}").await;
            refused(&again, "pow_reused");
        }
        let retry = admit_pow(&c, &pow, &[("idempotency-key", &key)], "{}").await;
        assert_eq!(retry.status, 200, "{}", retry.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_queue_admits_each_solution_once() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("pow_difficulty = 4\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    refused(&c.admit("{}").await, "pow_required");
    let pow = solved(&c).await;
    assert_eq!(admit_pow(&c, &pow, &[], "{}").await.status, 202);
    refused(&admit_pow(&c, &pow, &[], "{}").await, "pow_reused");
    // The header is the gateway's: the order service never sees it.
    let delivered = eventually(Duration::from_secs(30), "the delivery", || async {
        upstream.received().into_iter().next()
    })
    .await;
    assert!(
        delivered.headers.get("flashgate-pow").is_none(),
        "{:?}",
        delivered.headers
    );
}
