//! Forged tickets of every kind get the one identical 404, before any
//! backend look-up; instances sharing Redis agree on the ticket secret.

mod support;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tickets_of_every_kind_get_the_identical_404() {
    let upstream = MockUpstream::start().await;
    let secret = "a-test-secret-that-is-long-enough-0123456789";
    let gateway = || Gateway::builder().upstream(&upstream);
    let gw = gateway()
        .toml(&format!(
            "ticket_secret = \"{secret}\"\ndrain_rate = 0.001\n"
        ))
        .start()
        .await;
    let c = gw.client();
    let mine = c.ticket("{}").await;
    assert_eq!(c.poll(&mine).await.status, 200);

    // Minted elsewhere: another queue under the same secret, the same queue
    // under another secret (the embedded default: random per process).
    let other_queue = gateway()
        .toml(&format!(
            "ticket_secret = \"{secret}\"\nqueue = \"other\"\n"
        ))
        .start()
        .await
        .client()
        .ticket("{}")
        .await;
    let other_secret = gateway().start().await.client().ticket("{}").await;
    let raw = URL_SAFE_NO_PAD.decode(&mine).unwrap();
    let mut forged: Vec<String> = vec![other_queue, other_secret];
    // Every single-character change, truncations and extensions.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 0..mine.len() {
        let mut b = mine.clone().into_bytes();
        let at = alphabet.iter().position(|&c| c == b[i]).unwrap();
        b[i] = alphabet[(at + 17) % alphabet.len()];
        forged.push(String::from_utf8(b).unwrap());
    }
    forged.push(mine[..mine.len() - 1].to_string());
    forged.push(mine[..32].to_string());
    forged.push(format!("{mine}A"));
    forged.push(format!("{mine}{mine}"));
    // The same bytes re-encoded: padded/standard base64, case flipped,
    // random bytes with a copied tag, a zero MAC.
    forged.push(STANDARD.encode(&raw));
    forged.push(format!("{mine}=="));
    forged.push(mine.to_ascii_uppercase());
    let mut copied_tag = raw.clone();
    copied_tag[..16].copy_from_slice(&[7u8; 16]);
    forged.push(URL_SAFE_NO_PAD.encode(&copied_tag));
    let mut zero_mac = raw.clone();
    zero_mac[20..].fill(0);
    forged.push(URL_SAFE_NO_PAD.encode(&zero_mac));
    forged.push("A".repeat(48));
    forged.push(String::new());

    let reference = c.poll(&"A".repeat(48)).await;
    assert_eq!(reference.status, 404);
    assert_eq!(reference.json()["code"], "ticket_not_found");
    // Escapes of unreserved characters are the same characters (RFC 3986
    // §6.2.2.2): an escaped spelling of a ticket is that ticket, not a
    // forgery; an escaped `/` is refused before routing.
    let escaped: String = mine.chars().map(|c| format!("%{:02X}", c as u8)).collect();
    let same = c.poll(&escaped).await;
    assert_eq!(same.status, 200);
    assert_eq!(same.json()["ticket"], mine.as_str());
    let climb = c.poll("..%2f..%2fadmin%2fqueues").await;
    assert_eq!(climb.status, 400);
    assert_eq!(climb.json()["code"], "bad_request");
    for id in &forged {
        if id == &mine {
            continue;
        }
        let a = c.poll(id).await;
        assert_eq!(a.status, 404, "`{id}` was accepted");
        assert_eq!(
            without_request_id(&a),
            without_request_id(&reference),
            "`{id}` got a different 404 body"
        );
    }
}

/// A problem document less its `request_id`, which is each request's own.
fn without_request_id(a: &Answer) -> serde_json::Value {
    let mut doc = a.json();
    assert_eq!(doc["request_id"], a.header("x-request-id"));
    doc.as_object_mut().unwrap().remove("request_id");
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_agree_on_the_ticket_secret() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let instance = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .args(&["--drain-rate", "0.001"]);
    let a = instance.clone().consumer("a").spawn();
    let b = instance.consumer("b").spawn();
    a.up().await;
    b.up().await;
    let t = a.client().ticket("{}").await;
    let b = b.client();
    let on_b = eventually(Duration::from_secs(10), "b knows a's ticket", || async {
        let r = b.poll(&t).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(on_b.json()["ticket"], t.as_str());
    // The secret lives in Redis once; a third instance reads the same.
    let mut conn = redis.conn().await;
    let stored: String = redis::cmd("GET")
        .arg("flashgate:ticket-secret")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored.len(), 64, "a hex-encoded 256-bit secret");
}
