//! Partitioned queues (issue #9): on one redis-server, and on a real
//! three-master Redis Cluster of private redis-servers, with one master
//! restarted mid-drain.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_queue_spreads_tickets_and_never_oversells() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("partitions = 3\nstock = 10\ndrain_rate = 200\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;

    // A concurrent burst far over the stock: exactly the stock is admitted,
    // whichever partitions the tickets fall in (4 + 3 + 3).
    let c = gw.client();
    let answers = futures_util::future::join_all((0..60).map(|i| {
        let c = c.clone();
        async move { c.admit(format!("{{\"n\":{i}}}")).await }
    }))
    .await;
    let tickets: Vec<String> = answers
        .iter()
        .filter(|a| a.status == 202)
        .map(|a| a.json()["ticket"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tickets.len(), 10, "admitted exactly the stock");
    assert!(answers
        .iter()
        .all(|a| a.status == 202 || (a.status == 410 && a.json()["code"] == "sold_out")));
    let done = c.outcome(&tickets, &[&upstream]).await;
    assert_eq!((done.completed, done.lost), (10, 0), "{done:?}");

    // Each partition is a stream of its own, under its own hash tag.
    let mut conn = redis.conn().await;
    for p in 0..3 {
        let key = format!("flashgate:{{checkout:{p}}}:stream");
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(exists, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_meets_its_first_attempt_in_a_partitioned_queue() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("partitions = 4\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    for i in 0..8 {
        let key = format!("order-{i}");
        let headers = [("idempotency-key", key.as_str())];
        let first = c.admit_with(&headers, "{}").await;
        assert_eq!(first.status, 202);
        let again = c.admit_with(&headers, "{}").await;
        assert_eq!(again.status, 200, "{key}");
        assert_eq!(again.header("idempotent-replayed"), "true");
        assert_eq!(again.json()["ticket"], first.json()["ticket"]);
    }
}

/// Three masters, a queue in three partitions spread over them; one master
/// is killed and restarted (AOF, fsync always) while the drain runs: every
/// ticket answered 202 still reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_admits_and_drains_through_partitions_and_survives_a_master_restart() {
    let mut cluster = RedisCluster::start(3);
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("partitions = 3\ndrain_rate = 20\nclaim_idle = \"2s\"\n")
        .upstream(&upstream)
        .redis(&cluster)
        .start()
        .await;
    let c = gw.client();
    let (mut tickets, refused) = c.admit_many(60, "a").await;
    assert!(refused.is_empty(), "refused: {refused:?}");

    // The partitions' streams live on more than one master.
    let holders = cluster
        .keys_by_node("flashgate:{checkout:*}:stream")
        .iter()
        .filter(|keys| !keys.is_empty())
        .count();
    assert!(holders >= 2, "the partitions all landed on one master");

    // Restart a master that holds a stream, mid-drain.
    let victim = cluster
        .keys_by_node("flashgate:{checkout:*}:stream")
        .iter()
        .position(|keys| !keys.is_empty())
        .unwrap();
    eventually(Duration::from_secs(20), "some completions", || async {
        (upstream.received().len() >= 10).then_some(())
    })
    .await;
    cluster.nodes[victim].restart();
    cluster.wait_ok(Duration::from_secs(30));

    // Admissions work again after the restart (retrying through the
    // moment the cluster needs to settle).
    let more = eventually(Duration::from_secs(30), "admissions again", || async {
        let (t, refused) = c.admit_many(1, "b").await;
        refused.is_empty().then_some(t)
    })
    .await;
    tickets.extend(more);

    let done = c.outcome(&tickets, &[&upstream]).await;
    println!("cluster with one master restarted: {done:?}");
    assert_eq!(done.lost, 0, "{done:?}");
    assert_eq!(done.completed, tickets.len(), "{done:?}");
    let distinct: HashSet<String> = upstream.by_key().into_keys().collect();
    assert!(tickets.iter().all(|t| distinct.contains(t)));
    // Finished entries are trimmed on every master (the trim's commands
    // stay on the stream's own slot).
    eventually(
        Duration::from_secs(20),
        "every partition's stream empties",
        || async {
            let mut left = 0u64;
            for (node, keys) in cluster
                .keys_by_node("flashgate:{checkout:*}:stream")
                .iter()
                .enumerate()
            {
                let mut conn = cluster.nodes[node].conn().await;
                for key in keys {
                    let n: u64 = redis::cmd("XLEN")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    left += n;
                }
            }
            (left == 0).then_some(())
        },
    )
    .await;
}
