//! Dead letters as an operator handles them: a checkout whose order
//! service failed until its attempts ran out is listed with its request
//! readable, replayed once the service is fixed (two replays deliver once,
//! with the same Idempotency-Key), discarded, or handled by code in bulk;
//! through the admin API, `flashgate admin dead-letters`, and the
//! `flashgate_dead_letters` gauge.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

const LIMIT: Duration = Duration::from_secs(30);

/// The dead letters of `checkout` as the admin API lists them.
async fn listed(c: &Client, query: &str) -> Vec<Value> {
    let a = c
        .admin_get(&format!("/admin/queues/checkout/dead-letters{query}"))
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.json()["dead_letters"].as_array().cloned().unwrap()
}

/// Waits until the gauge says `n`.
async fn gauge(c: &Client, n: f64) {
    eventually(LIMIT, &format!("flashgate_dead_letters at {n}"), || async {
        let m = c.metrics().await;
        (m.sum("flashgate_dead_letters", &["queue=\"checkout\""]) == n).then_some(())
    })
    .await
}

backends!(a_dead_letter_is_replayed_once_the_upstream_is_fixed: embedded, redis);

/// The order service fails a checkout's first two attempts (all it gets):
/// dead-lettered. Then it is fixed: two replays at once put it back once,
/// the ticket goes queued → completed with the service's answer, and the
/// service got it once more, with the same Idempotency-Key (the ticket).
async fn a_dead_letter_is_replayed_once_the_upstream_is_fixed(backend: Backend) {
    let upstream = MockUpstream::builder().fail_first(2).start().await;
    let gw = Gateway::builder()
        .toml("max_attempts = 2\n")
        .backend(backend)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let body = r#"{"sku":"sneaker-42","qty":1}"#;
    let a = c
        .admit_with(
            &[
                ("idempotency-key", "order-7"),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.text());
    let ticket = a.ticket();
    let done = c.until_terminal(&ticket, LIMIT).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "upstream_unavailable");

    // Listed with its request readable.
    let letters = listed(&c, "").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    assert_eq!(l["ticket"], ticket.as_str());
    assert_eq!(l["code"], "upstream_unavailable");
    assert_eq!(l["attempts"], 2);
    assert_eq!(
        (l["method"].as_str(), l["path"].as_str()),
        (Some("POST"), Some("/checkout"))
    );
    assert_eq!(l["body"], body);
    assert_eq!(l["body_encoding"], "utf8");
    assert_eq!(l["idempotency_key"], "order-7");
    assert!(l["failed_at"].as_str().unwrap().ends_with('Z'), "{l}");
    assert!(l["admitted_at"].as_str().unwrap() <= l["failed_at"].as_str().unwrap());
    let headers = l["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h["name"] == "content-type" && h["value"] == "application/json"),
        "{headers:?}"
    );
    let id = l["id"].as_str().unwrap().to_string();
    let shown = c
        .admin_get(&format!("/admin/queues/checkout/dead-letters/{id}"))
        .await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(&shown.json(), l);
    gauge(&c, 1.0).await;
    let before = upstream.by_key()[&ticket].len();
    assert_eq!(before, 2, "two attempts, both failed");

    // Fixed (the mock answers a key's third attempt): two replays at once.
    let path = format!("/admin/queues/checkout/dead-letters/{id}/replay");
    let (x, y) = tokio::join!(
        c.admin("POST", &path, &[], ""),
        c.admin("POST", &path, &[], "")
    );
    let mut statuses = [x.status.as_u16(), y.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 404], "{} / {}", x.text(), y.text());
    let won = if x.status == 200 { &x } else { &y };
    let lost = if x.status == 200 { &y } else { &x };
    assert_eq!(won.json()["ticket"], ticket.as_str());
    assert_eq!(won.json()["status"], "queued");
    assert_eq!(lost.json()["code"], "dead_letter_not_found");

    let done = c.until_terminal(&ticket, LIMIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["response"]["status"], 201);
    assert_eq!(done["attempts"], 1, "a fresh attempt count");
    let got = upstream.by_key();
    let deliveries = &got[&ticket];
    assert_eq!(deliveries.len(), 3, "delivered once after the replay");
    let last = &deliveries[2];
    assert_eq!(last.header("idempotency-key"), ticket);
    assert_eq!(last.header("x-flashgate-ticket"), ticket);
    assert_eq!(last.header("x-flashgate-attempt"), "1");
    assert_eq!(last.body, body.as_bytes());
    println!(
        "replay: {} deliveries before it, {} after two concurrent replays",
        before,
        deliveries.len() - before
    );

    assert!(listed(&c, "").await.is_empty());
    gauge(&c, 0.0).await;
    let again = c.admin("POST", &path, &[], "").await;
    assert_eq!(again.status, 404, "{}", again.text());

    // The events tell the story, with who replayed it.
    let page = c
        .admin_get("/admin/queues/checkout/events?type=failed,replayed,completed")
        .await
        .json();
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ticket"] == ticket.as_str())
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["failed", "replayed", "completed"]);
    let replayed = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "replayed")
        .unwrap();
    assert!(
        replayed["fields"]["actor"]
            .as_str()
            .unwrap()
            .starts_with("peer:127.0.0.1:"),
        "{replayed}"
    );
    assert_eq!(replayed["fields"]["dead_letter"], id.as_str());
}

/// Discard, bulk by code, the refusals, and the same through
/// `flashgate admin dead-letters` against the running gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_discard_replay_in_bulk_and_use_the_cli() {
    let redis = Redis::start();
    // Down for good: one attempt each, then dead-lettered.
    let upstream = MockUpstream::builder().fail_always().start().await;
    let gw = Gateway::builder()
        .toml("max_attempts = 1\nadmin_token = \"t0ken\"\n")
        .redis(&redis)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let auth = [("authorization", "Bearer t0ken")];
    let mut tickets = Vec::new();
    for n in 0..4u8 {
        // The first one's body is not UTF-8: shown in base64.
        let body = match n {
            0 => vec![0xff, 0xfe, 0],
            n => format!("{{\"n\":{n}}}").into_bytes(),
        };
        tickets.push(c.ticket(body).await);
    }
    for t in &tickets {
        let done = c.until_terminal(t, LIMIT).await;
        assert_eq!(done["status"], "failed", "{done}");
    }
    let url = format!("http://{}", gw.admin_addr);
    let cli = move |args: &[&str]| {
        let mut cmd = flashgate();
        cmd.args(["admin", "--url", &url, "--token", "t0ken", "dead-letters"])
            .args(args);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.success(), stdout, stderr)
        }
    };

    // list: a table by default, newest first; JSON on request.
    let (ok, table, err) = cli(&["list"]).await;
    assert!(ok, "{err}");
    println!("flashgate admin dead-letters list:\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("TICKET"),
        "{table}"
    );
    assert_eq!(lines.len(), 5, "{table}");
    for t in &tickets {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(t.as_str()) && l.contains("POST /checkout")),
            "{t}: {table}"
        );
    }
    let (ok, json, err) = cli(&[
        "list",
        "--queue",
        "checkout",
        "--output",
        "json",
        "--code",
        "upstream_unavailable",
    ])
    .await;
    assert!(ok, "{err}");
    let letters: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(letters.len(), 4);
    let id_of = |t: &str| {
        letters.iter().find(|l| l["ticket"] == t).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // show: the request whole.
    let (ok, shown, err) = cli(&["show", &id_of(&tickets[0])]).await;
    assert!(ok, "{err}");
    assert!(
        shown.contains(&tickets[0]) && shown.contains("POST /checkout"),
        "{shown}"
    );
    assert!(shown.contains("upstream_unavailable"), "{shown}");
    assert!(shown.contains("(body in base64"), "{shown}");

    // discard one: gone, its ticket stays failed; twice is a 404.
    let (ok, out, err) = cli(&["discard", &id_of(&tickets[0])]).await;
    assert!(ok && out.contains("discarded"), "{out}{err}");
    let (ok, _, err) = cli(&["discard", &id_of(&tickets[0])]).await;
    assert!(!ok && err.contains("404"), "{err}");
    assert_eq!(c.poll(&tickets[0]).await.json()["status"], "failed");

    // replay one through the CLI: queued, sent again (and dead again).
    let (ok, out, err) = cli(&["replay", &id_of(&tickets[1])]).await;
    assert!(ok && out.contains(&tickets[1]), "{out}{err}");
    eventually(LIMIT, "the replayed ticket sent again", || async {
        (upstream.by_key()[&tickets[1]].len() == 2).then_some(())
    })
    .await;
    c.until_terminal(&tickets[1], LIMIT).await;
    gauge(&c, 3.0).await;

    // The API's refusals.
    let api = |method: &'static str, path: String| {
        let c = c.clone();
        async move { c.admin(method, &path, &auth, "").await }
    };
    let root = "/admin/queues/checkout/dead-letters";
    assert_eq!(
        api("GET", format!("{root}/1-0")).await.json()["code"],
        "dead_letter_not_found"
    );
    assert_eq!(api("GET", format!("{root}/nonsense")).await.status, 404);
    assert_eq!(
        api("GET", "/admin/queues/nope/dead-letters".to_string())
            .await
            .status,
        404
    );
    assert_eq!(api("POST", root.to_string()).await.status, 405);
    assert_eq!(
        api("POST", format!("{root}/replay")).await.status,
        400,
        "bulk needs a code"
    );
    assert_eq!(api("GET", format!("{root}?limit=0")).await.status, 400);
    let unauthorized = c.admin("GET", root, &[], "").await;
    assert_eq!(unauthorized.status, 401);

    // Bulk through the API: a code nothing has, then every one of a code.
    let none = api("POST", format!("{root}/replay?code=corrupt_entry"))
        .await
        .json();
    assert_eq!(
        (none["replayed"].as_u64(), none["next"].is_null()),
        (Some(0), true),
        "{none}"
    );
    let (ok, out, err) = cli(&["replay", "--all", "--code", "upstream_unavailable"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("replayed 3 dead letters"), "{out}");
    for (t, sent) in tickets[1..].iter().zip([3, 2, 2]) {
        eventually(LIMIT, "each replayed ticket sent again", || async {
            (upstream.by_key()[t].len() == sent).then_some(())
        })
        .await;
        let done = c.until_terminal(t, LIMIT).await;
        assert_eq!(done["status"], "failed", "{done}");
    }
    gauge(&c, 3.0).await;
    let gone = api("DELETE", format!("{root}?code=upstream_unavailable")).await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(gone.json()["discarded"], 3);
    gauge(&c, 0.0).await;
    let (ok, table, err) = cli(&["list"]).await;
    assert!(ok && table.contains("(no dead letters)"), "{table}{err}");
}
