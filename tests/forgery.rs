//! Forged tickets of every kind get the one identical 404, before any
//! backend look-up; instances sharing Redis agree on the ticket secret.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::process::GatewayProcess;
use common::{config, gateway, get, send, Behaviour, MockUpstream, RedisServer};

async fn admit(base: &str) -> String {
    let a = send(
        &common::client(),
        "POST",
        &format!("{base}/checkout"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(a.status, 202);
    a.json()["ticket"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tickets_of_every_kind_get_the_identical_404() {
    let upstream = MockUpstream::start(Behaviour::default()).await;
    let secret = "a-test-secret-that-is-long-enough-0123456789";
    let gw = gateway(config(
        &format!("ticket_secret = \"{secret}\"\ndrain_rate = 0.001\n"),
        &upstream.url(),
        None,
    ))
    .await;
    let base = format!("http://{}", gw.public_addr);
    let mine = admit(&base).await;
    assert_eq!(get(&format!("{base}/tickets/{mine}")).await.status, 200);

    // Minted elsewhere: another queue under the same secret, the same queue
    // under another secret (the embedded default: random per process).
    let other_queue = {
        let g = gateway(config(
            &format!("ticket_secret = \"{secret}\"\nqueue = \"other\"\n"),
            &upstream.url(),
            None,
        ))
        .await;
        let t = admit(&format!("http://{}", g.public_addr)).await;
        g.shutdown();
        t
    };
    let other_secret = {
        let g = gateway(config("", &upstream.url(), None)).await;
        let t = admit(&format!("http://{}", g.public_addr)).await;
        g.shutdown();
        t
    };
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

    let reference = get(&format!("{base}/tickets/{}", "A".repeat(48))).await;
    assert_eq!(reference.status, 404);
    assert_eq!(reference.json()["code"], "ticket_not_found");
    // Escapes of unreserved characters are the same characters (RFC 3986
    // §6.2.2.2): an escaped spelling of a ticket is that ticket, not a
    // forgery; an escaped `/` is refused before routing.
    let escaped: String = mine.chars().map(|c| format!("%{:02X}", c as u8)).collect();
    let same = get(&format!("{base}/tickets/{escaped}")).await;
    assert_eq!(same.status, 200);
    assert_eq!(same.json()["ticket"], mine.as_str());
    let climb = get(&format!("{base}/tickets/..%2f..%2fadmin%2fqueues")).await;
    assert_eq!(climb.status, 400);
    assert_eq!(climb.json()["code"], "bad_request");
    for id in &forged {
        if id == &mine {
            continue;
        }
        let a = get(&format!("{base}/tickets/{id}")).await;
        assert_eq!(a.status, 404, "`{id}` was accepted");
        assert_eq!(a.body, reference.body, "`{id}` got a different 404 body");
    }
    gw.shutdown();
    gw.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_agree_on_the_ticket_secret() {
    let redis = RedisServer::start();
    let upstream = MockUpstream::start(Behaviour::default()).await;
    let flags = ["--drain-rate", "0.001"];
    let a = GatewayProcess::start(&upstream.url(), &redis.url(), "a", &flags);
    let b = GatewayProcess::start(&upstream.url(), &redis.url(), "b", &flags);
    a.up().await;
    b.up().await;
    let t = admit(&a.base()).await;
    let on_b = common::eventually(Duration::from_secs(10), "b knows a's ticket", || {
        let url = format!("{}/tickets/{t}", b.base());
        async move {
            let r = get(&url).await;
            (r.status == 200).then_some(r)
        }
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
