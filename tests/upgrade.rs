//! A rolling upgrade (issue #23): what the previous version left in Redis —
//! recorded from its real binary by `scripts/upgrade-fixture` — is read and
//! drained by this one. Tickets poll as they did, Idempotency-Keys still
//! find their tickets, the line keeps its order with new admissions behind
//! it, pre-queued tickets are placed at the opening, and every queued
//! request reaches the upstream once, as it was sent.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use support::*;

/// The version before this one, whose fixture the test replays.
const PREVIOUS: &str = "a906fee";

/// `tests/fixtures/upgrade/<rev>.json`, as the script writes it.
#[derive(Deserialize)]
struct Fixture {
    environment: Environment,
    /// The gateway's settings but its addresses (`environment`).
    config: String,
    tickets: Vec<Ticket>,
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct Environment {
    consumer: String,
}

/// A ticket the old gateway issued, and how it last polled there.
#[derive(Deserialize)]
struct Ticket {
    id: String,
    queue: String,
    idempotency_key: Option<String>,
    request: Sent,
    status: String,
    position: Option<u64>,
    response: Option<Value>,
}

/// The request its client sent.
#[derive(Deserialize)]
struct Sent {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Sent {
    fn headers(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// One Redis key: its value and its time to live (ms; negative: none).
#[derive(Deserialize)]
struct Key {
    key: String,
    pttl: i64,
    #[serde(flatten)]
    value: Stored,
}

#[derive(Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
enum Stored {
    String(String),
    Hash(BTreeMap<String, String>),
    /// Members with their scores, as Redis prints them.
    Zset(Vec<(String, String)>),
    Stream(Stream),
}

#[derive(Deserialize)]
struct Stream {
    entries: Vec<(String, Vec<String>)>,
    last_generated_id: String,
    max_deleted_entry_id: String,
    entries_added: u64,
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    name: String,
    last_delivered_id: String,
    entries_read: Option<u64>,
    consumers: Vec<String>,
    pending: Vec<Pending>,
}

#[derive(Deserialize)]
struct Pending {
    id: String,
    consumer: String,
    idle_ms: u64,
    deliveries: u64,
}

fn fixture() -> Fixture {
    let path = repo().join(format!("tests/fixtures/upgrade/{PREVIOUS}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/upgrade-fixture makes it)", path.display()));
    serde_json::from_str(&text).expect("the fixture parses")
}

/// Writes every recorded key into `redis` as the old gateway left it:
/// stream ids, consumer groups and their pending entries included, and
/// each time to live counted from now.
async fn restore(redis: &Redis, keys: &[Key]) {
    let mut conn = redis.conn().await;
    for key in keys {
        let mut cmds = redis::pipe();
        match &key.value {
            Stored::String(value) => {
                cmds.cmd("SET").arg(&key.key).arg(value);
            }
            Stored::Hash(fields) => {
                cmds.cmd("HSET").arg(&key.key).arg(fields);
            }
            Stored::Zset(members) => {
                let zadd = cmds.cmd("ZADD").arg(&key.key);
                for (member, score) in members {
                    zadd.arg(score).arg(member);
                }
            }
            Stored::Stream(stream) => restore_stream(&mut cmds, &key.key, stream),
        }
        if key.pttl > 0 {
            cmds.cmd("PEXPIRE").arg(&key.key).arg(key.pttl);
        }
        let () = cmds
            .ignore()
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("restoring {}: {e}", key.key));
    }
}

fn restore_stream(cmds: &mut redis::Pipeline, key: &str, stream: &Stream) {
    for (id, fields) in &stream.entries {
        cmds.cmd("XADD").arg(key).arg(id).arg(fields);
    }
    if stream.entries.is_empty() {
        // An empty stream (all trimmed, or never written) still exists: a
        // group made with MKSTREAM and dropped creates one.
        cmds.cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg("restore")
            .arg(0);
        cmds.arg("MKSTREAM");
        cmds.cmd("XGROUP").arg("DESTROY").arg(key).arg("restore");
    }
    cmds.cmd("XSETID")
        .arg(key)
        .arg(&stream.last_generated_id)
        .arg("ENTRIESADDED")
        .arg(stream.entries_added)
        .arg("MAXDELETEDID")
        .arg(&stream.max_deleted_entry_id);
    for group in &stream.groups {
        let create = cmds.cmd("XGROUP").arg("CREATE").arg(key);
        create.arg(&group.name).arg(&group.last_delivered_id);
        if let Some(read) = group.entries_read {
            create.arg("ENTRIESREAD").arg(read);
        }
        for consumer in &group.consumers {
            cmds.cmd("XGROUP")
                .arg("CREATECONSUMER")
                .arg(key)
                .arg(&group.name)
                .arg(consumer);
        }
        // FORCE puts an entry in a consumer's pending list as a read would
        // have; JUSTID leaves its delivery count as recorded.
        for p in &group.pending {
            cmds.cmd("XCLAIM")
                .arg(key)
                .arg(&group.name)
                .arg(&p.consumer)
                .arg(0)
                .arg(&p.id)
                .arg("IDLE")
                .arg(p.idle_ms)
                .arg("RETRYCOUNT")
                .arg(p.deliveries)
                .arg("FORCE")
                .arg("JUSTID");
        }
    }
}

/// A ticket's answer, which must be found.
async fn poll(client: &Client, id: &str) -> Value {
    let answer = client.poll(id).await;
    assert_eq!(answer.status, 200, "ticket {id}: {}", answer.text());
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_of_the_previous_version_are_read_and_drained() {
    let fixture = fixture();
    let redis = Redis::start();
    restore(&redis, &fixture.keys).await;
    let upstream = MockUpstream::start().await;
    // The upgraded instance keeps its consumer name, as a restarted one
    // does: what the old one had read and not sent is its own again.
    let gateway = Gateway::builder()
        .toml(&fixture.config)
        .upstream(&upstream)
        .redis(&redis)
        .consumer(&fixture.environment.consumer)
        .start()
        .await;
    let client = gateway.client();

    // What the old version left: answered, cancelled, queued and
    // pre-queued tickets.
    for status in ["completed", "cancelled", "queued"] {
        assert!(
            fixture.tickets.iter().any(|t| t.status == status),
            "the fixture has a {status} ticket"
        );
    }

    // Before anything drains (the old version left every queue paused):
    // every ticket polls as it did, queued ones at their place, answered
    // ones with the upstream's answer.
    for t in &fixture.tickets {
        let v = poll(&client, &t.id).await;
        assert_eq!(v["queue"], t.queue.as_str(), "{v}");
        assert_eq!(v["status"], t.status.as_str(), "ticket {}: {v}", t.id);
        assert_eq!(v["position"].as_u64(), t.position, "ticket {}: {v}", t.id);
        if t.status == "completed" {
            assert_eq!(Some(&v["response"]), t.response.as_ref(), "ticket {}", t.id);
        }
    }

    // The same request with the same Idempotency-Key is the old ticket,
    // whatever became of it; nothing new is admitted.
    for t in &fixture.tickets {
        if t.idempotency_key.is_none() {
            continue;
        }
        let r = &t.request;
        let answer = client
            .send(&r.method, &r.path, &r.headers(), r.body.clone())
            .await;
        assert_eq!(answer.status, 200, "replay of {}: {}", t.id, answer.text());
        assert_eq!(answer.header("idempotent-replayed"), "true");
        assert_eq!(answer.ticket(), t.id);
    }

    // The limits the old version counted still hold: alice holds two
    // admissions of the fair sale, its per-client maximum.
    let more = client
        .send(
            "POST",
            "/drops",
            &[("content-type", "application/json"), ("x-shopper", "alice")],
            r#"{"sku":"sneaker-42"}"#,
        )
        .await;
    assert_eq!(more.status, 429, "{}", more.text());
    assert_eq!(more.json()["code"], "client_quota_exceeded");

    // A new admission queues behind the old ones.
    let waiting = |queue: &str| -> Vec<&Ticket> {
        let mut line: Vec<&Ticket> = fixture
            .tickets
            .iter()
            .filter(|t| t.queue == queue && t.status == "queued")
            .collect();
        line.sort_by_key(|t| t.position);
        line
    };
    let checkout = waiting("checkout");
    let new = client
        .send(
            "POST",
            "/checkout",
            &[("content-type", "application/json"), ("x-shopper", "new")],
            r#"{"cart":"after-the-upgrade"}"#,
        )
        .await;
    assert_eq!(new.status, 202, "{}", new.text());
    // Behind the last one (a cancelled ticket keeps its place in the count
    // until the drain skips it).
    let last = checkout
        .last()
        .and_then(|t| t.position)
        .expect("a queued ticket");
    assert_eq!(new.json()["position"].as_u64(), Some(last + 1));
    let new = new.ticket();

    for queue in ["checkout", "drops", "early"] {
        let answer = client.patch_queue(queue, r#"{"paused": false}"#).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }

    // Every ticket still waiting — queued, or pre-queued until the opening
    // that has passed since — completes, sent once, as its client sent it.
    let sent: Vec<&Ticket> = fixture
        .tickets
        .iter()
        .filter(|t| t.status == "queued")
        .collect();
    assert!(sent
        .iter()
        .any(|t| t.queue == "early" && t.position.is_none()));
    for t in &sent {
        let v = client.until_terminal(&t.id, Duration::from_secs(20)).await;
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["response"]["status"], 201, "{v}");
    }
    let v = client.until_terminal(&new, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "completed", "{v}");

    // Nothing else: the replays above admitted nothing.
    assert_eq!(upstream.received().len(), sent.len() + 1);
    let by_key = upstream.by_key();
    for t in &fixture.tickets {
        let got = by_key.get(&t.id).map_or(0, Vec::len);
        let want = usize::from(t.status == "queued");
        assert_eq!(
            got, want,
            "ticket {} ({}) reached the upstream",
            t.id, t.status
        );
    }
    for t in &sent {
        let got = &by_key[&t.id][0];
        let r = &t.request;
        assert_eq!(got.method, r.method);
        assert_eq!(got.path, r.path);
        assert_eq!(got.body, r.body.as_bytes(), "ticket {}", t.id);
        for (name, value) in &r.headers {
            if !name.eq_ignore_ascii_case("idempotency-key") {
                assert_eq!(got.header(name), value, "{name} of ticket {}", t.id);
            }
        }
        assert_eq!(got.header("idempotency-key"), t.id);
        assert_eq!(got.header("x-flashgate-ticket"), t.id);
    }

    // In line order, one at a time (`max_in_flight = 1`): the old line
    // first, then the new admission.
    let order: HashMap<String, usize> = upstream
        .received()
        .iter()
        .enumerate()
        .map(|(i, r)| (r.header("idempotency-key").to_string(), i))
        .collect();
    for queue in ["checkout", "drops"] {
        let line: Vec<usize> = waiting(queue).iter().map(|t| order[&t.id]).collect();
        assert!(line.windows(2).all(|w| w[0] < w[1]), "{queue}: {line:?}");
    }
    assert!(checkout.iter().all(|t| order[&t.id] < order[&new]));
}
