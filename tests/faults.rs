//! Fault injection with real processes: the built gateway, a private
//! redis-server with AOF, a recording mock upstream. Every test ends by
//! checking that each ticket answered 202 reached the upstream and finished.

mod support;

use std::time::Duration;

use support::*;

fn report(fault: &str, o: &Outcome) {
    println!(
        "fault report: {fault}: admitted {}, completed {}, failed {}, lost {}, redelivered {}",
        o.admitted, o.completed, o.failed, o.lost, o.redelivered
    );
}

/// kill -9 mid-drain, then a restart under the same consumer name: the
/// entries it held are redelivered, the rest drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_mid_drain_then_restarted() {
    let redis = Redis::builder().durable().start();
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(300))
        .start()
        .await;
    let node = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .consumer("node-a")
        .args(&["--drain-rate", "50", "--max-in-flight", "4"]);
    let mut gw = node.clone().process().await;
    let (tickets, _) = gw.client().admit_many(40, "n").await;
    eventually(Duration::from_secs(20), "deliveries under way", || async {
        (upstream.received().len() >= 6).then_some(())
    })
    .await;
    gw.crash();
    let before = upstream.received().len();
    assert!(before < 40, "the crash should interrupt the drain");

    let gw = node.ports(gw.public, gw.admin).process().await;
    let o = gw.client().outcome(&tickets, &[&upstream]).await;
    report("kill -9 gateway, restart", &o);
    assert_eq!((o.lost, o.completed), (0, 40));
}

/// kill -9 of one instance while another runs: the survivor takes over the
/// dead one's pending entries once they have been idle for --claim-idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivor_takes_over_a_dead_instances_entries() {
    let redis = Redis::builder().durable().start();
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(400))
        .start()
        .await;
    let instance = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .args(&["--drain-rate", "40", "--max-in-flight", "4"])
        .args(&["--claim-idle", "2s"]);
    let mut a = instance.clone().consumer("node-a").process().await;
    let (tickets, _) = a.client().admit_many(30, "n").await;
    eventually(Duration::from_secs(20), "node-a delivering", || async {
        (upstream.received().len() >= 4).then_some(())
    })
    .await;
    a.crash();
    let b = instance.consumer("node-b").process().await;
    let o = b.client().outcome(&tickets, &[&upstream]).await;
    report("kill -9 one of two instances", &o);
    assert_eq!((o.lost, o.completed), (0, 30));
    let mut c = redis.conn().await;
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("flashgate:{checkout}:stream")
        .arg("flashgate")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        pending.first(),
        Some(&redis::Value::Int(0)),
        "entries left pending"
    );
}

/// kill -9 of redis-server mid-burst with appendfsync always: admissions
/// during the outage get 503, every 202 survives the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_burst_loses_no_admission() {
    let mut redis = Redis::builder().durable().start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .consumer("node-a")
        .args(&["--drain-rate", "30"])
        .process()
        .await;
    let c = gw.client();
    let (mut tickets, _) = c.admit_many(30, "before").await;
    redis.kill();
    let (during, refused) = c.admit_many(5, "during").await;
    assert!(during.is_empty(), "202 while Redis was down");
    assert!(refused.iter().all(|s| *s == 503), "{refused:?}");
    redis.restart();
    let after = eventually(Duration::from_secs(20), "admissions again", || async {
        let (t, _) = c.admit_many(1, "probe").await;
        (!t.is_empty()).then_some(t)
    })
    .await;
    tickets.extend(after);
    let (more, _) = c.admit_many(10, "after").await;
    tickets.extend(more);
    let o = c.outcome(&tickets, &[&upstream]).await;
    report("kill -9 redis-server (AOF always), restart", &o);
    assert_eq!(o.lost, 0);
    assert_eq!(o.completed, tickets.len());
}

/// redis-server frozen (SIGSTOP) for a few seconds: no 202 without a stored
/// entry, and recovery without a storm of reconnections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_then_thawed() {
    let redis = Redis::builder().durable().start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .consumer("node-a")
        .args(&["--drain-rate", "50"])
        .process()
        .await;
    let c = gw.client();
    let (mut tickets, _) = c.admit_many(10, "before").await;
    const CONNECTIONS: &str = "total_connections_received";
    let mut conn = redis.conn().await;
    let before = info_stat(&mut conn, CONNECTIONS).await;
    signal(redis.pid(), "STOP");
    let (during, refused) = c.admit_many(3, "during").await;
    // A crowd while frozen: every one is answered (503), none waits for
    // the thaw behind the batches stuck in flight.
    let crowd: Vec<_> = (0..300)
        .map(|i| {
            let url = format!("{}/checkout", gw.base());
            tokio::spawn(async move { send("POST", &url, &[], format!("{{\"crowd\":{i}}}")).await })
        })
        .collect();
    let mut crowd_statuses = Vec::new();
    for t in crowd {
        crowd_statuses.push(t.await.unwrap().status.as_u16());
    }
    signal(redis.pid(), "CONT");
    // Admissions that timed out may still have been stored: they are not
    // promised, but if stored they are delivered too.
    assert!(refused.iter().all(|s| *s == 503), "{refused:?}");
    assert!(
        crowd_statuses.iter().all(|s| *s == 503),
        "{crowd_statuses:?}"
    );
    tickets.extend(during);
    let (after, _) = c.admit_many(10, "after").await;
    assert_eq!(after.len(), 10, "admissions work again after the thaw");
    tickets.extend(after);
    let o = c.outcome(&tickets, &[&upstream]).await;
    report("SIGSTOP/SIGCONT redis-server", &o);
    assert_eq!(o.lost, 0);
    let new_connections = info_stat(&mut conn, CONNECTIONS).await - before;
    assert!(
        new_connections <= 20,
        "{new_connections} reconnections after a freeze"
    );
}

/// The upstream misbehaves in every way that is retried — 503 and 429 with
/// Retry-After, answers slower than the timeout, connections refused for a
/// while — and orders still go through; one poisoned order that fails
/// forever is dead-lettered while the others flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_are_retried_or_dead_lettered() {
    let redis = Redis::builder().durable().start();
    let instance = Gateway::builder()
        .redis(&redis)
        .args(&["--drain-rate", "100", "--max-attempts", "4"])
        .args(&["--upstream-timeout", "300ms"]);

    // 429 twice (with Retry-After: 0), then success.
    let limited = MockUpstream::builder()
        .fail_first(2)
        .fail_status(429)
        .start()
        .await;
    let gw = instance
        .clone()
        .upstream(&limited)
        .consumer("a")
        .process()
        .await;
    let c = gw.client();
    let (tickets, _) = c.admit_many(5, "n").await;
    let o = c.outcome(&tickets, &[&limited]).await;
    report("upstream 429 twice", &o);
    assert_eq!((o.lost, o.completed, o.redelivered), (0, 5, 10));
    drop(gw);

    // The first attempt of each order takes longer than the timeout.
    let slow = MockUpstream::builder()
        .latency(Duration::from_secs(2))
        .slow_first(1)
        .start()
        .await;
    let gw = instance
        .clone()
        .upstream(&slow)
        .consumer("b")
        .process()
        .await;
    let c = gw.client();
    let (tickets, _) = c.admit_many(5, "n").await;
    let o = c.outcome(&tickets, &[&slow]).await;
    report("upstream times out once", &o);
    assert_eq!((o.lost, o.completed, o.redelivered), (0, 5, 5));
    drop(gw);

    // Connections refused until the upstream comes up a little later.
    let port = free_port();
    let gw = instance
        .clone()
        .upstream(&format!("http://127.0.0.1:{port}"))
        .consumer("c")
        .process()
        .await;
    let c = gw.client();
    let (tickets, _) = c.admit_many(5, "n").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = MockUpstream::builder()
        .on(format!("127.0.0.1:{port}").parse().unwrap())
        .start()
        .await;
    let o = c.outcome(&tickets, &[&late]).await;
    report("upstream refuses connections for a while", &o);
    assert_eq!((o.lost, o.completed), (0, 5));
    drop(gw);

    // One order the upstream never accepts.
    let picky = MockUpstream::builder().poison("\"n\":2}").start().await;
    let gw = instance.upstream(&picky).consumer("d").process().await;
    let c = gw.client();
    let (tickets, _) = c.admit_many(6, "n").await;
    let o = c.outcome(&tickets, &[&picky]).await;
    report("upstream rejects one order forever", &o);
    assert_eq!((o.lost, o.completed, o.failed), (0, 5, 1));
    let poisoned = c.until_terminal(&tickets[2], Duration::from_secs(5)).await;
    assert_eq!(poisoned["status"], "failed");
    assert_eq!(poisoned["attempts"], 4);
    let mut c = redis.conn().await;
    let dead: u64 = redis::cmd("XLEN")
        .arg("flashgate:{checkout}:dead")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(dead, 1);
}

/// Someone trims the work stream while entries are pending: after a crash
/// and restart the trimmed entries come back empty and are dead-lettered —
/// never forwarded, never a panic — and new work still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn externally_trimmed_stream_is_survived() {
    let redis = Redis::builder().durable().start();
    let upstream = MockUpstream::builder()
        .latency(Duration::from_secs(2))
        .slow_first(1)
        .start()
        .await;
    let node = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .consumer("a")
        .args(&["--drain-rate", "100", "--max-in-flight", "2"]);
    let mut gw = node.clone().process().await;
    let (tickets, _) = gw.client().admit_many(6, "n").await;
    eventually(Duration::from_secs(20), "two in flight", || async {
        (upstream.received().len() == 2).then_some(())
    })
    .await;
    gw.crash();
    let mut c = redis.conn().await;
    // A command the instance sent just before it died may still wait in
    // Redis's socket buffer, to run before Redis sees the connection close
    // (a read that makes one more entry pending): once its connections are
    // gone, the pending count below is final.
    eventually(
        Duration::from_secs(20),
        "the dead instance's connections closed",
        || {
            let mut c = c.clone();
            async move {
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                (list.lines().count() == 1).then_some(())
            }
        },
    )
    .await;
    // What the dead instance held: the two in flight, and on a slow machine
    // possibly more read since; all of it is trimmed away below.
    let summary: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("flashgate:{checkout}:stream")
        .arg("flashgate")
        .query_async(&mut c)
        .await
        .unwrap();
    let pending = match summary.first() {
        Some(redis::Value::Int(n)) => *n as u64,
        other => panic!("XPENDING said {other:?}"),
    };
    assert!(pending >= 2, "{pending} pending");
    let _: u64 = redis::cmd("XTRIM")
        .arg("flashgate:{checkout}:stream")
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();

    let gw = node.ports(gw.public, gw.admin).process().await;
    let dead = eventually(
        Duration::from_secs(20),
        "trimmed pending entries dead-lettered",
        || {
            let mut c = c.clone();
            async move {
                let n: u64 = redis::cmd("XLEN")
                    .arg("flashgate:{checkout}:dead")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                (n >= pending).then_some(n)
            }
        },
    )
    .await;
    assert_eq!(dead, pending, "the pending entries, and only they");
    // The gateway still works: new orders go through.
    let c = gw.client();
    let (fresh, _) = c.admit_many(3, "fresh").await;
    let o = c.outcome(&fresh, &[&upstream]).await;
    assert_eq!((o.lost, o.completed), (0, 3));
    // Nothing trimmed was forwarded: every upstream request belongs to a ticket.
    let known: std::collections::HashSet<&String> = tickets.iter().chain(&fresh).collect();
    for r in upstream.received() {
        assert!(known.contains(&r.header("idempotency-key").to_string()));
    }
    println!("fault report: trimmed stream: 6 admitted, {pending} pending entries trimmed and dead-lettered, the queued rest trimmed (their data is gone), 3 admitted after: lost 0");
}

/// Concurrent duplicates with one Idempotency-Key make one ticket; the same
/// key with another body is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_make_one_ticket() {
    let redis = Redis::builder().durable().start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .consumer("a")
        .process()
        .await;
    let url = format!("{}/checkout", gw.base());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            send(
                "POST",
                &url,
                &[("idempotency-key", "cart-77")],
                "{\"sku\":1}",
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let created = answers.iter().filter(|a| a.status == 202).count();
    let replayed = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!((created, replayed), (1, 19));
    let tickets: std::collections::HashSet<String> = answers
        .iter()
        .map(|a| a.json()["ticket"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tickets.len(), 1);
    let other = send(
        "POST",
        &url,
        &[("idempotency-key", "cart-77")],
        "{\"sku\":2}",
    )
    .await;
    assert_eq!(other.status, 422);
    let tickets: Vec<String> = tickets.into_iter().collect();
    let o = gw.client().outcome(&tickets, &[&upstream]).await;
    report("20 concurrent duplicates", &o);
    assert_eq!((o.lost, o.completed, o.redelivered), (0, 1, 0));
    assert_eq!(upstream.received().len(), 1);
}

/// Redis out of memory (noeviction): admissions are refused with 503, never
/// a 202 that was not stored, and the drain keeps acknowledging — which frees
/// the memory — until every admitted ticket is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_out_of_memory_refuses_admissions_and_keeps_draining() {
    let redis = Redis::builder()
        .args(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"])
        .start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        // Admissions outpace the drain, so memory fills.
        .toml("max_body = \"64KiB\"\ndrain_rate = 20\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let body = "x".repeat(32 * 1024);
    let mut tickets = Vec::new();
    let mut refused = None;
    for _ in 0..400 {
        let a = c.admit(body.clone()).await;
        match a.status.as_u16() {
            202 => tickets.push(a.json()["ticket"].as_str().unwrap().to_string()),
            503 => {
                refused = Some(a.json()["code"].as_str().unwrap().to_string());
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        refused.as_deref(),
        Some("unavailable"),
        "Redis never ran out of memory"
    );
    assert!(!tickets.is_empty());
    let o = c.outcome(&tickets, &[&upstream]).await;
    report("Redis out of memory", &o);
    assert_eq!((o.lost, o.completed), (0, tickets.len()));
}
