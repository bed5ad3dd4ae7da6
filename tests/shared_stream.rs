//! The work stream shared with other services: a consumer group of their
//! own, made and read with plain Redis commands (nothing of flashgate's),
//! sees every admitted request with the fields the README documents; the
//! gateway trims only what every group is done with, or what is past
//! `stream_retention`; each group's lag is on /metrics.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadReply};
use redis::Value;
use support::*;

const STREAM: &str = "flashgate:{checkout}:stream";

async fn create_group(conn: &mut MultiplexedConnection, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .unwrap();
}

/// `XREADGROUP` of up to `count` entries after `id` (`>`: new ones, `0`: the
/// consumer's own pending ones).
async fn read(
    conn: &mut MultiplexedConnection,
    group: &str,
    id: &str,
    count: usize,
) -> Vec<StreamId> {
    let reply: StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("worker-1")
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(id)
        .query_async(conn)
        .await
        .unwrap();
    reply.keys.into_iter().flat_map(|k| k.ids).collect()
}

async fn xlen(conn: &mut MultiplexedConnection) -> u64 {
    redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(conn)
        .await
        .unwrap()
}

/// The group's `flashgate_stream_group_lag` on /metrics, if reported.
async fn lag(c: &Client, group: &str) -> Option<u64> {
    let text = c.metrics().await;
    let series = format!(r#"flashgate_stream_group_lag{{group="{group}",queue="checkout"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the gateway reports `group`'s lag as `want`: the stream was
/// tended (and trimmed) after whatever made it so.
async fn until_lag(c: &Client, group: &str, want: u64) {
    eventually(
        Duration::from_secs(15),
        &format!("{group} lag {want}"),
        || async { (lag(c, group).await == Some(want)).then_some(()) },
    )
    .await;
}

fn field(entry: &StreamId, name: &str) -> Vec<u8> {
    match entry.map.get(name) {
        Some(Value::BulkString(b)) => b.clone(),
        other => panic!("entry {} field `{name}`: {other:?}", entry.id),
    }
}

fn text(entry: &StreamId, name: &str) -> String {
    String::from_utf8(field(entry, name)).unwrap()
}

/// The `h` field as documented: a JSON array of `[name, value]` pairs, each
/// value one character per byte (Latin-1).
fn headers(entry: &StreamId) -> Vec<(String, Vec<u8>)> {
    let pairs: Vec<(String, String)> = serde_json::from_slice(&field(entry, "h")).unwrap();
    pairs
        .into_iter()
        .map(|(n, v)| (n, v.chars().map(|c| u8::try_from(c).unwrap()).collect()))
        .collect()
}

/// An inventory service's group, made before the sale, reads every admitted
/// order after the gateway drained them all, every field as documented; its
/// pending entries stay readable until it acknowledges them, and then the
/// stream empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_group_reads_every_entry_after_the_drain() {
    const N: usize = 200;
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    create_group(&mut conn, "inventory").await;
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut admitted: HashMap<String, usize> = HashMap::new();
    for i in 0..N {
        let key = format!("order-{i}");
        let mut h = vec![
            ("content-type", "application/json"),
            // Bytes beyond ASCII (obs-text): UTF-8 from this client.
            ("x-note", "café"),
            ("x-hop", "dropped"),
            ("connection", "x-hop"),
        ];
        if i % 2 == 0 {
            h.push(("idempotency-key", &key));
        }
        let a = c
            .send(
                "POST",
                &format!("/checkout?i={i}"),
                &h,
                format!(r#"{{"n":{i}}}"#),
            )
            .await;
        assert_eq!(a.status, 202, "{}", a.text());
        admitted.insert(a.ticket(), i);
    }
    let tickets: Vec<String> = admitted.keys().cloned().collect();
    let o = c.outcome(&tickets, &[&upstream]).await;
    assert_eq!((o.lost, o.completed), (0, N));

    // One entry read after the drain: once the gateway reports the lag
    // this leaves, it has tended the stream with every entry finished on
    // its side, and trimmed nothing the inventory group has not read.
    let first = read(&mut conn, "inventory", ">", 1).await;
    until_lag(&c, "inventory", N as u64 - 1).await;
    until_lag(&c, "flashgate", 0).await;
    let mut entries = first;
    entries.extend(read(&mut conn, "inventory", ">", 10 * N).await);
    assert_eq!(
        entries.len(),
        N,
        "the inventory group reads every admitted entry"
    );

    let mut seen = HashSet::new();
    for e in &entries {
        assert_eq!(text(e, "v"), "1");
        let ticket = text(e, "t");
        let i = *admitted.get(&ticket).expect("an admitted ticket");
        assert!(seen.insert(ticket), "each ticket once");
        assert_eq!(text(e, "m"), "POST");
        assert_eq!(text(e, "p"), format!("/checkout?i={i}"));
        assert_eq!(field(e, "b"), format!(r#"{{"n":{i}}}"#).into_bytes());
        let k = if i % 2 == 0 {
            format!("order-{i}")
        } else {
            String::new()
        };
        assert_eq!(text(e, "k"), k, "the client's own Idempotency-Key");
        let h = headers(e);
        let value = |name: &str| h.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(
            value("content-type").as_deref(),
            Some(&b"application/json"[..])
        );
        assert_eq!(value("x-note").as_deref(), Some("café".as_bytes()));
        for gone in [
            "x-hop",
            "connection",
            "idempotency-key",
            "host",
            "content-length",
        ] {
            assert_eq!(
                value(gone),
                None,
                "{gone} is not an end-to-end header of the entry"
            );
        }
        let at: u64 = text(e, "a").parse().unwrap();
        assert!(at >= before, "admitted-at is ms since the epoch");
        assert!(text(e, "s").parse::<u64>().unwrap() >= 1);
        text(e, "w").parse::<u64>().unwrap();
        assert_eq!(text(e, "c"), "ip:127.0.0.1");
        assert_eq!(text(e, "f"), "127.0.0.1");
        assert_eq!(text(e, "x"), "http");
    }

    // Read, not acknowledged: still there after the next trims.
    until_lag(&c, "inventory", 0).await;
    let pending = read(&mut conn, "inventory", "0", 10 * N).await;
    assert_eq!(pending.len(), N);
    assert!(
        pending.iter().all(|e| !e.map.is_empty()),
        "pending entries keep their data"
    );
    assert_eq!(xlen(&mut conn).await, N as u64);

    let ids: Vec<&str> = pending.iter().map(|e| e.id.as_str()).collect();
    let acked: u64 = redis::cmd("XACK")
        .arg(STREAM)
        .arg("inventory")
        .arg(&ids)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, N as u64);
    eventually(Duration::from_secs(15), "the stream empties", || {
        let mut conn = conn.clone();
        async move { (xlen(&mut conn).await == 0).then_some(()) }
    })
    .await;
    let text = c.metrics().await;
    assert!(
        text.contains(r#"flashgate_stream_retention_trimmed_total{queue="checkout"} 0"#),
        "nothing was lost to retention: {text}"
    );
}

/// A group that never reads does not keep entries past `stream_retention`:
/// they are trimmed once the gateway is done with them, counted, and the
/// group's lag is on /metrics until then. A group deleted loses its series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_group_is_trimmed_past_stream_retention() {
    const N: usize = 40;
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    create_group(&mut conn, "laggard").await;
    let upstream = MockUpstream::start().await;
    let builder = Gateway::builder()
        .toml("drain_rate = 1000\n")
        .upstream(&upstream)
        .redis(&redis);
    let gw = builder.clone().start().await;
    let c = gw.client();
    let (tickets, refused) = c.admit_many(N, "n").await;
    assert!(refused.is_empty());
    let o = c.outcome(&tickets, &[&upstream]).await;
    assert_eq!((o.lost, o.completed), (0, N));
    // Kept for the laggard within the retention (1h by default).
    until_lag(&c, "laggard", N as u64).await;
    until_lag(&c, "flashgate", 0).await;
    assert_eq!(xlen(&mut conn).await, N as u64);

    // Retention down to nothing (a reload): the laggard's entries go.
    let zero = builder.clone().toml("stream_retention = \"0s\"\n");
    assert!(gw.reload(zero.config()));
    until_lag(&c, "laggard", 0).await;
    assert_eq!(
        xlen(&mut conn).await,
        0,
        "the stream is bounded by the retention"
    );
    let text = c.metrics().await;
    assert!(
        text.contains(&format!(
            r#"flashgate_stream_retention_trimmed_total{{queue="checkout"}} {N}"#
        )),
        "{text}"
    );
    // Still a working group: it reads what comes next, kept for it again
    // once the retention is back to its default.
    assert!(gw.reload(builder.config()));
    let (more, _) = c.admit_many(3, "more").await;
    c.outcome(&more, &[&upstream]).await;
    assert_eq!(read(&mut conn, "laggard", ">", 100).await.len(), 3);

    let _: u64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(STREAM)
        .arg("laggard")
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the deleted group's series removed",
        || async { lag(&c, "laggard").await.is_none().then_some(()) },
    )
    .await;
}

/// With the gateway's group alone, finished entries leave the stream: it
/// empties after the drain, cancelled and dead-lettered entries included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_the_gateway_empties_the_stream_after_the_drain() {
    let redis = Redis::start();
    let upstream = MockUpstream::builder().poison("poison").start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\nmax_attempts = 1\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let (mut tickets, _) = c.admit_many(30, "n").await;
    let poisoned = c
        .admit_with(
            &[("idempotency-key", "cart-poison"), ("x-note", "café")],
            "poison",
        )
        .await;
    assert_eq!(poisoned.status, 202);
    tickets.push(poisoned.ticket());
    for t in &tickets {
        c.until_terminal(t, Duration::from_secs(30)).await;
    }
    let mut conn = redis.conn().await;
    eventually(Duration::from_secs(15), "the stream empties", || {
        let mut conn = conn.clone();
        async move { (xlen(&mut conn).await == 0).then_some(()) }
    })
    .await;
    assert_eq!(xlen(&mut conn).await, 0);
    until_lag(&c, "flashgate", 0).await;
    // The dead letter keeps the entry's fields, in the same schema.
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("flashgate:{checkout}:dead")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead.ids.len(), 1);
    let letter = &dead.ids[0];
    assert_eq!(text(letter, "v"), "1");
    assert_eq!(text(letter, "k"), "cart-poison");
    assert_eq!(text(letter, "t"), poisoned.ticket());
    assert_eq!(field(letter, "b"), b"poison");
    let h = headers(letter);
    assert!(
        h.contains(&("x-note".to_string(), "café".as_bytes().to_vec())),
        "{h:?}"
    );
}

/// An entry stored by a version before the schema was versioned (no `v`,
/// no `k`, headers as CRLF lines), as a rolling upgrade leaves them, is
/// delivered by this one with its headers, and trimmed once finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_the_previous_format_are_still_delivered() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let mut conn = redis.conn().await;
    let ticket = "OldFormatTicket0".repeat(3);
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg(&[
            ("s", "1"),
            ("w", "0"),
            ("t", ticket.as_str()),
            ("m", "POST"),
            ("p", "/checkout?old=1"),
            (
                "h",
                "content-type: application/json\r\nx-old: kept\r\nx-a: 1\r\nx-a: 2\r\n",
            ),
            ("b", "{}"),
            ("c", "ip:127.0.0.1"),
            ("f", "127.0.0.1"),
            ("x", "http"),
            ("a", "1764504000000"),
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let got = eventually(
        Duration::from_secs(15),
        "the old entry delivered",
        || async {
            upstream
                .by_key()
                .get(&ticket)
                .and_then(|r| r.first().cloned())
        },
    )
    .await;
    assert_eq!(got.path, "/checkout?old=1");
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("x-old"), "kept");
    let repeated: Vec<_> = got.headers.get_all("x-a").iter().collect();
    assert_eq!(repeated, ["1", "2"]);
    eventually(Duration::from_secs(15), "the stream empties", || {
        let mut conn = conn.clone();
        async move { (xlen(&mut conn).await == 0).then_some(()) }
    })
    .await;
    drop(gw);
}

/// A partitioned queue has one stream per partition, each trimmed on its
/// own: a group made on every partition reads every entry, and its lag is
/// the sum over the partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partition_stream_is_shared_on_its_own() {
    const N: usize = 30;
    let redis = Redis::start();
    let mut conn = redis.conn().await;
    let streams: Vec<String> = (0..3)
        .map(|p| format!("flashgate:{{checkout:{p}}}:stream"))
        .collect();
    for s in &streams {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(s)
            .arg("inventory")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\npartitions = 3\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let (tickets, _) = c.admit_many(N, "n").await;
    let o = c.outcome(&tickets, &[&upstream]).await;
    assert_eq!((o.lost, o.completed), (0, N));
    until_lag(&c, "inventory", N as u64).await;
    until_lag(&c, "flashgate", 0).await;
    let mut read_back = HashSet::new();
    for s in &streams {
        let reply: StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("inventory")
            .arg("w")
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(s)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        for e in reply.keys.into_iter().flat_map(|k| k.ids) {
            read_back.insert(text(&e, "t"));
        }
    }
    assert_eq!(read_back, tickets.into_iter().collect::<HashSet<_>>());
}
