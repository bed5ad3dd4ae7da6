//! Flash-sale admission control: capacity, stock, per-client rate, the sale
//! window, and the runtime knobs of the admin API — against a real
//! redis-server, in-process gateways and the built binary.

mod support;

use std::time::{Duration, SystemTime};

use support::*;

async fn burst(
    urls: &[String],
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Answer> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = urls[i % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            send("POST", &url, headers, format!("{{\"n\":{i}}}")).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn count(answers: &[Answer], status: u16, code: Option<&str>) -> usize {
    answers
        .iter()
        .filter(|a| a.status == status && code.is_none_or(|c| a.json()["code"] == c))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_exact_under_a_concurrent_burst() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("max_queue = 25\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    gw.client().patch_knobs(r#"{"paused": true}"#).await;
    let answers = burst(&[format!("{}/checkout", gw.base())], 80, &[]).await;
    assert_eq!(count(&answers, 202, None), 25);
    assert_eq!(count(&answers, 503, Some("queue_full")), 55);
}

/// Two instances, one Redis, one stock: never one admission more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_is_never_oversold_across_two_instances() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let instance = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .args(&["--stock", "30"]);
    let a = instance.clone().consumer("a").spawn();
    let b = instance.consumer("b").spawn();
    a.up().await;
    b.up().await;
    let urls = [
        format!("{}/checkout", a.base()),
        format!("{}/checkout", b.base()),
    ];
    let answers = burst(&urls, 120, &[]).await;
    assert_eq!(count(&answers, 202, None), 30);
    assert_eq!(count(&answers, 410, Some("sold_out")), 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_rate_is_enforced_and_refills() {
    let upstream = MockUpstream::start().await;
    let toml = "client_key = \"header:x-user\"\nclient_rate = 2\nclient_burst = 3\n";
    let gw = Gateway::builder()
        .toml(toml)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let alice = [("x-user", "alice")];
    for _ in 0..3 {
        assert_eq!(c.admit_with(&alice, "{}").await.status, 202);
    }
    let limited = c.admit_with(&alice, "{}").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["code"], "rate_limited");
    assert_eq!(limited.header("retry-after"), "1");
    assert_eq!(c.admit_with(&[("x-user", "bob")], "{}").await.status, 202);
    eventually(Duration::from_secs(5), "alice's limit refills", || async {
        let a = c.admit_with(&alice, "{}").await;
        (a.status == 202).then_some(())
    })
    .await;
    let metrics = c.metrics().await;
    assert!(
        metrics.contains(r#"flashgate_admissions_total{outcome="rate_limited",queue="checkout"}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sale_window_answers_503_then_opens_on_time() {
    let upstream = MockUpstream::start().await;
    let opens = SystemTime::now() + Duration::from_secs(2);
    let toml = format!("opens_at = \"{}\"\n", humantime::format_rfc3339(opens));
    let gw = Gateway::builder()
        .toml(&toml)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let early = c.admit("{}").await;
    assert_eq!(early.status, 503);
    assert_eq!(early.json()["code"], "sale_not_open");
    let wait: u64 = early.header("retry-after").parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let a = eventually(Duration::from_secs(10), "the sale opens", || async {
        let a = c.admit("{}").await;
        (a.status == 202).then_some(a)
    })
    .await;
    assert!(SystemTime::now() >= opens, "admitted before opening");
    let done = c.until_terminal(&a.ticket(), Duration::from_secs(10)).await;
    assert_eq!(done["status"], "completed");
    gw.stop().await;

    let closed = SystemTime::now() - Duration::from_secs(1);
    let toml = format!(
        "opens_at = \"{}\"\ncloses_at = \"{}\"\n",
        humantime::format_rfc3339(closed - Duration::from_secs(60)),
        humantime::format_rfc3339(closed)
    );
    let gw = Gateway::builder()
        .toml(&toml)
        .upstream(&upstream)
        .start()
        .await;
    let late = gw.client().admit("{}").await;
    assert_eq!(late.status, 410);
    assert_eq!(late.json()["code"], "sale_closed");
}

/// A PATCH on one instance reaches the other through Redis: both drain at
/// the new rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_on_one_instance_changes_every_instance() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    // One request every 2 s per instance: 40 tickets would take 40 s.
    let instance = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .args(&["--drain-rate", "0.5"]);
    let a = instance.clone().consumer("a").spawn();
    let b = instance.consumer("b").spawn();
    a.up().await;
    b.up().await;
    let (a, b) = (a.client(), b.client());
    let (tickets, _) = a.admit_many(40, "n").await;
    let changed = a
        .patch_queue("checkout", r#"{"drain_rate": 40, "stock": 1000}"#)
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.json()["drain_rate"], 40.0);
    eventually(Duration::from_secs(5), "instance b follows", || async {
        let q = b.queue().await;
        (q["drain_rate"] == 40.0 && q["stock"] == 1000).then_some(())
    })
    .await;
    let metrics = b.metrics().await;
    assert!(
        metrics.contains(r#"flashgate_drain_rate_limit{queue="checkout"} 40"#),
        "{metrics}"
    );
    // At the old rate this would take 40 s; at the new one about half a second.
    eventually(
        Duration::from_secs(15),
        "the backlog drains at the new rate",
        || async { (upstream.by_key().len() == tickets.len()).then_some(()) },
    )
    .await;
    let completed =
        |m: Metrics| m.sum("flashgate_dispatches_total", &[r#"outcome="completed""#]) as u64;
    // The upstream has every order; each instance counts its own once it
    // has recorded the answer, a moment later.
    let (from_a, from_b) = eventually(Duration::from_secs(5), "40 completions counted", || async {
        let counts = (completed(a.metrics().await), completed(b.metrics().await));
        (counts.0 + counts.1 == 40).then_some(counts)
    })
    .await;
    assert!(
        from_a > 0 && from_b > 0,
        "both instances drained: {from_a} + {from_b}"
    );

    let bad = a.patch_queue("checkout", r#"{"drain_rate": -3}"#).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["detail"]
        .as_str()
        .unwrap()
        .contains("drain_rate"));
    let bad = a.patch_queue("checkout", r#"{"stock": "lots"}"#).await;
    assert!(bad.json()["detail"].as_str().unwrap().contains("stock"));
    assert_eq!(
        a.patch_queue("nope", r#"{"paused": true}"#).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_dispatch_and_resume_restarts_it() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 100\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    c.patch_knobs(r#"{"paused": true}"#).await;
    let (tickets, _) = c.admit_many(5, "n").await;
    // Nothing may go out while paused: give the drain ample time to misbehave.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(upstream.received().len(), 0, "dispatched while paused");
    let q = c.queue().await;
    assert_eq!(
        (q["paused"].as_bool(), q["depth"].as_u64()),
        (Some(true), Some(5))
    );
    let m = c.metrics().await;
    assert!(m.contains(r#"flashgate_drain_rate_limit{queue="checkout"} 0"#));
    c.patch_knobs(r#"{"paused": false}"#).await;
    for t in &tickets {
        assert_eq!(
            c.until_terminal(t, Duration::from_secs(10)).await["status"],
            "completed"
        );
    }
}

/// An operator who slowed the drain to a trickle and speeds it up gets the
/// new rate at once: the slot reserved at the old rate (one every 1000 s)
/// is not waited out, on any backend.
async fn a_rate_raised_at_run_time_applies_at_once(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .backend(backend)
        .toml("drain_rate = 0.001\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let (tickets, _) = c.admit_many(3, "n").await;
    // The first slot is due at once; the next one 1000 s later.
    eventually(Duration::from_secs(10), "the first delivery", || async {
        (upstream.received().len() == 1).then_some(())
    })
    .await;
    c.patch_knobs(r#"{"drain_rate": 1000}"#).await;
    for t in &tickets {
        assert_eq!(
            c.until_terminal(t, Duration::from_secs(30)).await["status"],
            "completed"
        );
    }
    assert_eq!(upstream.received().len(), 3);
}

backends!(a_rate_raised_at_run_time_applies_at_once: embedded, redis);

/// When the upstream answers sold out, the waiting tickets fail at once
/// instead of each being sent, and new admissions get 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sold_out_fails_the_waiting_tickets_fast() {
    let redis = Redis::start();
    let shop = flashgate::demo::SampleShop::start(4).await.unwrap();
    let toml = "drain_rate = 20\nmax_in_flight = 1\nsold_out_statuses = [410]\n";
    let gw = Gateway::builder()
        .toml(toml)
        .upstream(&format!("http://{}", shop.addr))
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let (tickets, _) = c.admit_many(40, "n").await;
    let mut statuses = Vec::new();
    for t in &tickets {
        let done = c.until_terminal(t, Duration::from_secs(20)).await;
        statuses.push((
            done["status"].as_str().unwrap().to_string(),
            done["response"]["status"].as_u64(),
            done["error"]["code"].as_str().map(str::to_string),
        ));
    }
    let ordered = statuses
        .iter()
        .filter(|s| s.0 == "completed" && s.1 == Some(201))
        .count();
    let told = statuses
        .iter()
        .filter(|s| s.0 == "completed" && s.1 == Some(410))
        .count();
    let failed = statuses
        .iter()
        .filter(|s| s.0 == "failed" && s.2.as_deref() == Some("sold_out"))
        .count();
    assert_eq!(ordered, 4);
    assert!(told >= 1, "{statuses:?}");
    assert_eq!(ordered + told + failed, 40);
    assert!(
        failed >= 30,
        "waiting tickets should fail without being sent: {statuses:?}"
    );
    let late = c.admit("{}").await;
    assert_eq!(late.status, 410);
    assert_eq!(late.json()["code"], "sold_out");
}

/// Early arrivals in the pre-queue window are admitted, nothing is sent
/// before the opening, and then they are served in a shuffled order — ahead
/// of anyone who arrived after the opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prequeued_tickets_are_served_in_a_shuffled_order() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let now = SystemTime::now();
    let opens = now + Duration::from_secs(3);
    let toml = format!(
        "drain_rate = 200\nmax_in_flight = 1\nprequeue_from = \"{}\"\nopens_at = \"{}\"\n",
        humantime::format_rfc3339(now - Duration::from_secs(60)),
        humantime::format_rfc3339(opens)
    );
    let gw = Gateway::builder()
        .toml(&toml)
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let mut early = Vec::new();
    for i in 0..30 {
        let a = c.admit(format!("{{\"n\":{i}}}")).await;
        assert_eq!(a.status, 202, "{}", a.text());
        let v = a.json();
        assert!(
            v.get("position").is_none(),
            "a pre-queued ticket has no place yet: {v}"
        );
        assert!(v["eta_seconds"].as_f64().unwrap() <= 3.0);
        early.push(v["ticket"].as_str().unwrap().to_string());
    }
    assert!(
        SystemTime::now() < opens,
        "the test was too slow to pre-queue"
    );
    assert!(upstream.received().is_empty(), "sent before the opening");
    // The opening is a time: wait for it.
    if let Ok(left) = opens.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
    let a = c.admit("{\"late\":1}").await;
    assert_eq!(a.status, 202);
    let late = a.ticket();
    for t in early.iter().chain([&late]) {
        assert_eq!(
            c.until_terminal(t, Duration::from_secs(20)).await["status"],
            "completed"
        );
    }
    let order: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").to_string())
        .collect();
    let served: Vec<&String> = order.iter().filter(|k| early.contains(k)).collect();
    assert_eq!(served.len(), 30);
    assert_ne!(
        served,
        early.iter().collect::<Vec<_>>(),
        "served in arrival order"
    );
    let late_at = order.iter().position(|k| *k == late).unwrap();
    assert!(
        late_at >= 30,
        "a ticket admitted after the opening went ahead of pre-queued ones"
    );
}

/// `flashgate admin` drives the same API from a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_subcommand_turns_the_knobs() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("admin_token = \"t0ken\"\n")
        .upstream(&upstream)
        .start()
        .await;
    let url = format!("http://{}", gw.admin_addr);
    let admin = move |args: &[&str]| {
        let out = flashgate()
            .args(["admin", "--url", &url, "--token", "t0ken"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let admin2 = admin.clone();
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        admin2(&[
            "set",
            "checkout",
            "--pause",
            "--drain-rate",
            "12.5",
            "-o",
            "json",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["paused"].as_bool(), v["drain_rate"].as_f64()),
        (Some(true), Some(12.5))
    );
    let admin2 = admin.clone();
    let (code, out, _) = tokio::task::spawn_blocking(move || admin2(&["queues", "-o", "json"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(out.contains("\"checkout\""), "{out}");
    let admin2 = admin.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || admin2(&["set", "nope", "--resume"]))
        .await
        .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = tokio::task::spawn_blocking(move || admin(&["set", "checkout"]))
        .await
        .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("nothing to change"), "{err}");
}

/// `GET /admin/queues` shows the configured knobs and the runtime overrides
/// apart; `null` clears an override back to the configured value, through
/// the API and through `flashgate admin set --clear`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_shows_beside_the_configuration_and_clears_back_to_it() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 100\nstock = 50\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let q = c.queue().await;
    assert_eq!(q["drain_rate"], 100.0);
    assert_eq!(q["configured"]["drain_rate"], 100.0);
    assert_eq!(q["configured"]["stock"], 50);
    assert_eq!(q["overrides"]["drain_rate"], serde_json::Value::Null);

    let q = c
        .patch_knobs(r#"{"drain_rate": 40, "stock": 10, "open": true}"#)
        .await;
    assert_eq!(
        (&q["drain_rate"], &q["stock"]),
        (&serde_json::json!(40.0), &serde_json::json!(10))
    );
    assert_eq!(q["configured"]["drain_rate"], 100.0);
    assert_eq!(q["configured"]["stock"], 50);
    assert_eq!(
        q["overrides"],
        serde_json::json!({"drain_rate": 40.0, "stock": 10, "open": true, "pow_difficulty": null})
    );

    let q = c.patch_knobs(r#"{"drain_rate": null}"#).await;
    assert_eq!(q["drain_rate"], 100.0);
    assert_eq!(q["overrides"]["drain_rate"], serde_json::Value::Null);
    assert_eq!(q["overrides"]["stock"], 10, "only the rate was cleared");

    let url = format!("http://{}", gw.admin_addr);
    let out = tokio::task::spawn_blocking(move || {
        flashgate()
            .args(["admin", "--url", &url, "set", "checkout"])
            .args(["--clear", "stock", "--clear", "open", "--output", "json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stock"], 50);
    assert_eq!(
        v["overrides"],
        serde_json::json!({"drain_rate": null, "stock": null, "open": null, "pow_difficulty": null})
    );
    assert_eq!(
        c.queue().await["overrides"]["stock"],
        serde_json::Value::Null
    );
}

/// A restart with a new rate keeps an override stored in Redis, and its
/// start-up log says so (and how to clear it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_log_says_when_a_stored_override_wins() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let first = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    first.client().patch_knobs(r#"{"drain_rate": 40}"#).await;
    first.stop().await;

    let mut second = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .args(&["--drain-rate", "100"])
        .capture_stderr()
        .spawn();
    let lines = second.read_until(|l| l.contains("wins over the configuration"));
    let line = lines.last().unwrap();
    assert!(line.contains("drain_rate"), "{line}");
    assert!(line.contains("configured=100"), "{line}");
    assert!(line.contains("stored=40"), "{line}");
    second.up().await;
    assert_eq!(second.client().queue().await["drain_rate"], 40.0);
}

/// The sale's gauges follow the knobs and the admitted count within the
/// upkeep's second: stock left, paused, sold out, and one phase at 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sale_gauges_follow_the_stock_and_every_knob() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("stock = 10\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let (tickets, _) = c.admit_many(3, "n").await;
    assert_eq!(tickets.len(), 3);
    /// A gauge's one series of queue `checkout` (`labels` before it, as
    /// the exposition sorts them); `None` when there is none.
    fn gauge(m: &Metrics, name: &str, labels: &str) -> Option<f64> {
        let prefix = format!("{name}{{{labels}queue=\"checkout\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.trim().parse().unwrap())
    }
    fn phases(m: &Metrics) -> Vec<(&'static str, Option<f64>)> {
        ["not_open", "prequeue", "open", "closed"]
            .into_iter()
            .map(|p| {
                let label = format!("phase=\"{p}\",");
                (p, gauge(m, "flashgate_sale_phase", &label))
            })
            .collect()
    }
    let until = |what: &'static str, want: fn(&Metrics) -> bool| {
        let c = c.clone();
        async move {
            eventually(Duration::from_secs(10), what, || async {
                let m = c.metrics().await;
                want(&m).then_some(())
            })
            .await
        }
    };
    until("7 of 10 left, open, running", |m| {
        let g = |n| gauge(m, n, "");
        g("flashgate_stock_left") == Some(7.0)
            && g("flashgate_queue_paused") == Some(0.0)
            && g("flashgate_queue_sold_out") == Some(0.0)
    })
    .await;
    let m = c.metrics().await;
    assert_eq!(
        phases(&m),
        [
            ("not_open", Some(0.0)),
            ("prequeue", Some(0.0)),
            ("open", Some(1.0)),
            ("closed", Some(0.0)),
        ],
        "{m}"
    );

    c.patch_knobs(r#"{"paused": true, "open": false}"#).await;
    until("paused and closed", |m| {
        gauge(m, "flashgate_queue_paused", "") == Some(1.0)
            && gauge(m, "flashgate_sale_phase", "phase=\"closed\",") == Some(1.0)
            && gauge(m, "flashgate_sale_phase", "phase=\"open\",") == Some(0.0)
    })
    .await;
    c.patch_knobs(r#"{"sold_out": true, "stock": 2}"#).await;
    until("sold out, stock over", |m| {
        gauge(m, "flashgate_queue_sold_out", "") == Some(1.0)
            && gauge(m, "flashgate_stock_left", "") == Some(0.0)
    })
    .await;
    // Back to the configured stock: 10 minus the 3 admitted.
    c.patch_knobs(r#"{"stock": null}"#).await;
    until("stock left as configured", |m| {
        gauge(m, "flashgate_stock_left", "") == Some(7.0)
    })
    .await;

    // An unlimited stock has nothing left to count: no series at all.
    let unlimited = Gateway::builder().upstream(&upstream).start().await;
    let c = unlimited.client();
    eventually(Duration::from_secs(10), "the sale gauges", || async {
        let m = c.metrics().await;
        (gauge(&m, "flashgate_sale_phase", "phase=\"open\",") == Some(1.0)).then_some(m)
    })
    .await;
    let m = c.metrics().await;
    assert!(!m.contains("flashgate_stock_left{"), "{m}");
}
