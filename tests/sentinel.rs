//! Redis Sentinel and `--durability replicated`, with real processes: a
//! primary, its replica and three `redis-sentinel`s (tests/support/sentinel.rs),
//! the built gateway, a recording mock upstream.

mod support;

use std::time::Duration;

use support::*;

/// kill -9 of the primary mid-drain: Sentinel promotes the replica, the
/// gateway follows it (logged and counted), admissions succeed again and
/// every ticket answered 202 — before and after — completes. With
/// `replicated`, no 202 is lost across the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_follows_a_sentinel_failover_mid_drain() {
    let mut setup = SentinelSetup::start();
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(100))
        .start()
        .await;
    let mut gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&setup.url())
        .args(&["--drain-rate", "20", "--max-in-flight", "4"])
        .args(&["--durability", "replicated"])
        .capture_stderr()
        .process()
        .await;
    let client = gw.client();
    let (mut tickets, refused) = client.admit_many(40, "before").await;
    assert_eq!((tickets.len(), refused), (40, vec![]));
    eventually(Duration::from_secs(30), "deliveries under way", || async {
        (upstream.received().len() >= 5).then_some(())
    })
    .await;

    let old = setup.kill_primary();
    assert!(
        upstream.received().len() < 40,
        "the failover should interrupt the drain"
    );
    let new = setup.wait_for_promotion(old);
    assert_ne!(old, new);
    // The old primary comes back as the new one's replica: `replicated`
    // needs one to answer 202.
    setup.restart(old);

    // Admissions succeed again; a retry keeps its Idempotency-Key, so an
    // admission stored before its 503 is not stored twice.
    for i in 0..10 {
        let key = format!("after-{i}");
        let answer = eventually(
            Duration::from_secs(60),
            "an admission after the failover",
            || {
                let (client, key) = (client.clone(), key.clone());
                async move {
                    let a = client
                        .admit_with(&[("idempotency-key", &key)], format!("{{\"after\":{i}}}"))
                        .await;
                    (a.status == 202).then_some(a)
                }
            },
        )
        .await;
        tickets.push(answer.ticket());
    }

    let o = client.outcome(&tickets, &[&upstream]).await;
    println!(
        "sentinel failover: admitted {}, completed {}, failed {}, lost {}, redelivered {}",
        o.admitted, o.completed, o.failed, o.lost, o.redelivered
    );
    assert_eq!((o.lost, o.completed), (0, 50));
    let metrics = client.metrics().await;
    assert_eq!(metrics.sum("flashgate_redis_failovers_total", &[]), 1.0);
    let new_port = format!("address=\"127.0.0.1:{}\"", setup.servers[new].port);
    assert_eq!(metrics.sum("flashgate_redis_primary", &[&new_port]), 1.0);
    let lines = gw.read_until(|l| l.contains("Redis primary switched"));
    let switched = lines.last().expect("a line");
    assert!(
        switched.contains(&format!("127.0.0.1:{}", setup.servers[old].port))
            && switched.contains(&format!("127.0.0.1:{}", setup.servers[new].port)),
        "{switched}"
    );
}

/// `--durability replicated` with the replica stopped: the admission is
/// stored on the primary but answered 503 `unavailable` with Retry-After;
/// once the replica is back, the retry with the same Idempotency-Key meets
/// the ticket stored by the first try, which is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_admission_waits_for_a_replica() {
    let mut setup = SentinelSetup::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&setup.url())
        .args(&[
            "--durability",
            "replicated",
            "--durability-timeout",
            "200ms",
        ])
        .process()
        .await;
    let client = gw.client();
    let first = client.ticket("{\"n\":1}").await;

    let replica = setup.replica();
    setup.servers[replica].kill();
    let key = [("idempotency-key", "order-2")];
    let refused = client.admit_with(&key, "{\"n\":2}").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["code"], "unavailable");
    assert!(!refused.header("retry-after").is_empty());
    // It was stored: the primary's stream holds both entries.
    let primary = &setup.servers[setup.primary()];
    let mut conn = primary.conn().await;
    let len: u64 = redis::cmd("XLEN")
        .arg("flashgate:{checkout}:stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 2);

    setup.restart(replica);
    // 202, or 200 when the stored entry was drained already.
    let retried = eventually(Duration::from_secs(60), "the retry's ticket", || async {
        let a = client.admit_with(&key, "{\"n\":2}").await;
        matches!(a.status.as_u16(), 200 | 202).then_some(a)
    })
    .await;
    let second = retried.ticket();
    let metrics = client.metrics().await;
    assert_eq!(
        metrics.sum("flashgate_admissions_total", &["outcome=\"duplicate\""]),
        1.0,
        "the retry met the stored admission"
    );
    let o = client.outcome(&[first, second.clone()], &[&upstream]).await;
    assert_eq!((o.lost, o.completed, o.redelivered), (0, 2, 0));
    let len: u64 = redis::cmd("XLEN")
        .arg("flashgate:{checkout}:stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 2, "the retry stored nothing more");
}

/// With `--durability replicated` the drain's recording writes share their
/// waits for a replica (one `WAIT` each let a 5000/s drain record ~200/s):
/// 400 orders, 64 in flight, every result on the replica once its ticket
/// reads completed. How many waits they shared depends on timing, so it is
/// printed, not asserted (`scripts/chaos --redis sentinel --durability
/// replicated` shows the drain's rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_drain_records_its_results_on_the_replica() {
    let setup = SentinelSetup::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .upstream(&upstream)
        .redis(&setup.url())
        .args(&[
            "--durability",
            "replicated",
            "--drain-rate",
            "5000",
            "--max-in-flight",
            "64",
        ])
        .process()
        .await;
    let client = gw.client();
    let primary = &setup.servers[setup.primary()];
    let mut conn = primary.conn().await;
    let waits_before = waits(&mut conn).await;
    let (tickets, refused) = client.admit_many(400, "n").await;
    assert!(refused.is_empty(), "refused: {refused:?}");
    let o = client.outcome(&tickets, &[&upstream]).await;
    assert_eq!((o.lost, o.completed), (0, 400));
    // Every completion is on the replica already.
    let mut replica = setup.servers[setup.replica()].conn().await;
    for t in &tickets {
        let status: Option<String> = redis::cmd("HGET")
            .arg(format!("flashgate:{{checkout}}:ticket:{t}"))
            .arg("st")
            .query_async(&mut replica)
            .await
            .unwrap();
        assert_eq!(
            status.as_deref(),
            Some("completed"),
            "ticket {t} on the replica"
        );
    }
    let waited = waits(&mut conn).await - waits_before;
    println!("{waited} WAITs for 400 admissions and 400 results");
}

/// `WAIT` calls the server has answered (`INFO commandstats`).
async fn waits(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}
