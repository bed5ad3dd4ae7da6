//! The lifecycle event stream as other services and operators see it: the
//! Redis stream itself across crashes, the admin API's page of events, and
//! `flashgate events`.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use redis::streams::StreamRangeReply;
use support::*;

/// Every event of a queue's stream, as flat string fields, read with plain
/// `XRANGE` (nothing of the gateway's).
async fn stream(redis: &Redis, key: &str) -> Vec<HashMap<String, String>> {
    let mut conn = redis.conn().await;
    let reply: StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            e.map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                .collect()
        })
        .collect()
}

/// kill -9 of the gateway mid-drain, a restart, then kill -9 and restart of
/// redis-server (AOF, fsync always) while the new gateway drains: the
/// events stream holds exactly one `admitted` and one terminal event for
/// every ticket that got a 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_admitted_and_one_terminal_event_per_ticket_across_crashes() {
    let mut redis = Redis::builder().durable().start();
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(200))
        .start()
        .await;
    let node = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .consumer("node-a")
        .args(&["--drain-rate", "40", "--max-in-flight", "4"]);
    let mut gw = node.clone().process().await;
    let (mut tickets, _) = gw.client().admit_many(40, "n").await;
    eventually(Duration::from_secs(20), "deliveries under way", || async {
        (upstream.received().len() >= 6).then_some(())
    })
    .await;
    gw.crash();
    assert!(
        upstream.received().len() < 40,
        "the crash should interrupt the drain"
    );

    let gw = node.ports(gw.public, gw.admin).process().await;
    let c = gw.client();
    let seen = upstream.received().len();
    eventually(Duration::from_secs(20), "draining again", || async {
        (upstream.received().len() >= seen + 4).then_some(())
    })
    .await;
    redis.restart();
    let after = eventually(Duration::from_secs(20), "admissions again", || async {
        let (t, _) = c.admit_many(1, "probe").await;
        (!t.is_empty()).then_some(t)
    })
    .await;
    tickets.extend(after);
    let o = c.outcome(&tickets, &[&upstream]).await;
    assert_eq!((o.lost, o.completed), (0, tickets.len()));

    let events = stream(&redis, "flashgate:{checkout}:events").await;
    let count = |kinds: &[&str], ticket: &str| {
        events
            .iter()
            .filter(|e| {
                kinds.contains(&e["type"].as_str())
                    && e.get("ticket").map(String::as_str) == Some(ticket)
            })
            .count()
    };
    for t in &tickets {
        assert_eq!(count(&["admitted"], t), 1, "admitted events of {t}");
        assert_eq!(
            count(&["completed", "failed", "cancelled"], t),
            1,
            "terminal events of {t}"
        );
        assert!(count(&["dispatched"], t) >= 1, "dispatched events of {t}");
    }
    for e in &events {
        assert_eq!((e["v"].as_str(), e["queue"].as_str()), ("1", "checkout"));
        assert!(e["at"].parse::<u64>().is_ok(), "{e:?}");
    }
}

/// The admin API pages events by type and cursor, names who turned a knob,
/// refuses bad parameters by name; `events = false` writes none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_pages_events_and_names_the_actor() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("admin_token = \"t0ken\"\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let auth = [("authorization", "Bearer t0ken")];
    let ticket = c.ticket("{}").await;
    c.until_terminal(&ticket, Duration::from_secs(20)).await;
    let patch = c
        .admin(
            "PATCH",
            "/admin/queues/checkout",
            &auth,
            r#"{"drain_rate": 40}"#,
        )
        .await;
    assert_eq!(patch.status, 200);

    let page = c
        .admin("GET", "/admin/queues/checkout/events?limit=2", &auth, "")
        .await;
    assert_eq!(page.status, 200);
    let page = page.json();
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["admitted", "dispatched"]);
    assert_eq!(page["events"][0]["ticket"], ticket.as_str());
    let next = page["next"].as_str().unwrap();
    let rest = c
        .admin(
            "GET",
            &format!("/admin/queues/checkout/events?after={next}"),
            &auth,
            "",
        )
        .await
        .json();
    let completed = &rest["events"][0];
    assert_eq!(completed["type"], "completed");
    assert_eq!(completed["fields"]["status"], "201");
    let knobs = &rest["events"][1];
    assert_eq!(knobs["type"], "knobs_changed");
    assert_eq!(knobs["fields"]["actor"], "admin");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(knobs["fields"]["changes"].as_str().unwrap())
            .unwrap(),
        serde_json::json!({"drain_rate": {"old": null, "new": 40}})
    );
    for (query, name) in [
        ("type=bought", "type"),
        ("limit=0", "limit"),
        ("after=x", "after"),
    ] {
        let bad = c
            .admin(
                "GET",
                &format!("/admin/queues/checkout/events?{query}"),
                &auth,
                "",
            )
            .await;
        assert_eq!(bad.status, 400, "{query}");
        assert!(bad.json()["detail"].as_str().unwrap().contains(name));
    }
    assert_eq!(
        c.admin("GET", "/admin/queues/nope/events", &auth, "")
            .await
            .status,
        404
    );

    // Events off: the same life, nothing written.
    let quiet = Gateway::builder()
        .toml("events = false\n")
        .upstream(&upstream)
        .start()
        .await;
    let q = quiet.client();
    let ticket = q.ticket("{}").await;
    q.until_terminal(&ticket, Duration::from_secs(20)).await;
    q.patch_knobs(r#"{"paused": true}"#).await;
    let page = q.admin_get("/admin/queues/checkout/events").await.json();
    assert_eq!(page["events"], serde_json::json!([]));
}

/// `flashgate events`: a table, JSON lines, and `--follow` picking up a
/// new event as it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_command_prints_and_follows() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("admin_token = \"t0ken\"\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let first = c.ticket("{}").await;
    c.until_terminal(&first, Duration::from_secs(20)).await;
    let url = format!("http://{}", gw.admin_addr);
    let events = move |args: &[&str]| {
        let mut cmd = flashgate();
        cmd.args(["events", "--url", &url, "--token", "t0ken"])
            .args(args);
        cmd
    };

    let table = events(&[]);
    let out = tokio::task::spawn_blocking(move || { table }.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("TICKET"),
        "{text}"
    );
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].contains("admitted") && lines[1].contains(&first),
        "{text}"
    );
    assert!(
        lines[3].contains("completed") && lines[3].contains("status=201"),
        "{text}"
    );

    let json = events(&[
        "--queue",
        "checkout",
        "--type",
        "dispatched",
        "--output",
        "json",
    ]);
    let out = tokio::task::spawn_blocking(move || { json }.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["ticket"], first.as_str());
    assert_eq!(lines[0]["fields"]["attempt"], "1");

    // --follow: the old events, then a new one as it comes.
    let mut follow = events(&["--follow", "--output", "json", "--type", "admitted"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(line.contains(&first), "{line}");
    let second = c.ticket("{}").await;
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the new event");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["ticket"].as_str()),
        (Some("admitted"), Some(second.as_str()))
    );
    follow.kill().unwrap();
    follow.wait().unwrap();
}

/// An upstream's sold-out answer flips the queue: a `sold_out` event with
/// reason `upstream` and a `knobs_changed` by `upstream`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_sold_out_is_an_event() {
    let upstream = MockUpstream::builder()
        .fail_status(410)
        .poison("gone")
        .start()
        .await;
    let gw = Gateway::builder()
        .toml("sold_out_statuses = [410]\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let ticket = c.ticket(r#"{"sku":"gone"}"#).await;
    c.until_terminal(&ticket, Duration::from_secs(20)).await;
    let page = eventually(Duration::from_secs(20), "the sold-out event", || async {
        let page = c
            .admin_get("/admin/queues/checkout/events?type=sold_out,knobs_changed")
            .await
            .json();
        (page["events"].as_array().unwrap().len() == 2).then_some(page)
    })
    .await;
    let kinds: Vec<(&str, &str)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let f = &e["fields"];
            (
                e["type"].as_str().unwrap(),
                f["reason"].as_str().or(f["actor"].as_str()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("knobs_changed", "upstream"), ("sold_out", "upstream")]
    );
}
