//! What the Redis server's own settings can lose, said once at start-up,
//! and the `replicated` durability level's wait for a replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Pipeline, RedisError, RedisResult, Value};
use tokio::sync::OnceCell;
use tracing::info;

use super::conn::Conn;
use super::reply::as_u64;
use super::RedisQueue;
use crate::backend::QueueError;

impl RedisQueue {
    /// Reads the server's persistence and eviction settings and says, in
    /// plain words, what they can lose. `CONFIG` may be refused by ACLs; then
    /// nothing is known and nothing is said.
    pub async fn durability_warnings(&self) -> Vec<String> {
        let get = |name: &'static str| {
            let mut conn = self.conn.clone();
            async move {
                let pair: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                pair.get(1).cloned()
            }
        };
        let aof = get("appendonly").await;
        let fsync = get("appendfsync").await;
        let policy = get("maxmemory-policy").await;
        let mut out = Vec::new();
        match (aof.as_deref(), fsync.as_deref()) {
            (Some("no"), _) => out.push(
                "Redis has appendonly=no: a Redis restart loses every queued request that was answered 202 (set appendonly yes and appendfsync always)".to_string(),
            ),
            (Some("yes"), Some("everysec")) => out.push(
                "Redis has appendfsync=everysec: a Redis crash can lose up to one second of admissions answered 202 (appendfsync always closes that window)".to_string(),
            ),
            (Some("yes"), Some("no")) => out.push(
                "Redis has appendfsync=no: a Redis crash can lose admissions the OS had not yet written (appendfsync always closes that window)".to_string(),
            ),
            _ => {}
        }
        if let Some(p) = policy.filter(|p| p != "noeviction") {
            out.push(format!(
                "Redis has maxmemory-policy={p}: under memory pressure it may evict queue entries and tickets (set maxmemory-policy noeviction)"
            ));
        }
        out
    }
}

impl RedisQueue {
    /// A recording write of the drain (`complete`, `fail`) for the entry
    /// `entry_id`: with `durability = local` the write; with `replicated`
    /// the write and the wait for a replica, and `false` when none
    /// acknowledged in time. The drain then calls again; for an entry
    /// written already by the same client of the same primary only the wait
    /// is repeated — its writes are not (a second dead letter) — until a
    /// replica acknowledges; the entry stays pending and claimed by this
    /// instance meanwhile. After a failover or a reconnection the write is
    /// made again: the old client's may not have reached a replica (a dead
    /// letter may then be written twice, a result never lost).
    ///
    /// The writes of many entries share one wait ([`WaitGroup`]): a `WAIT`
    /// holds up its connection, so one per entry would let the drain record
    /// only one entry per replica round trip.
    pub(super) async fn record(&self, entry_id: &str, pipeline: &Pipeline) -> RedisResult<bool> {
        let Some(recording) = &self.replicated else {
            return pipeline
                .query_async::<()>(&mut self.conn.clone())
                .await
                .map(|()| true);
        };
        let mut conn = recording.conn.clone();
        let generation = conn.generation();
        let written = self
            .unreplicated()
            .get(entry_id)
            .copied()
            .filter(|w| w.generation == generation);
        let writer = match written {
            Some(writer) => writer,
            None => {
                // The writes, and which client made them: a wait proves
                // only its own client's writes.
                let mut answers: Vec<Value> = with_tail(pipeline, redis::cmd("CLIENT").arg("ID"))
                    .query_async(&mut conn)
                    .await?;
                let client = answers.pop().as_ref().and_then(as_u64).unwrap_or(0);
                Writer { generation, client }
            }
        };
        let waited = recording.group.wait(&recording.wait, &mut conn).await?;
        let same_client = waited.client == Some(writer.client) && conn.generation() == generation;
        let acknowledged = same_client && waited.acknowledged;
        let mut unreplicated = self.unreplicated();
        if acknowledged || !same_client {
            unreplicated.remove(entry_id);
        } else {
            unreplicated.insert(entry_id.to_string(), writer);
        }
        Ok(acknowledged)
    }

    fn unreplicated(&self) -> std::sync::MutexGuard<'_, HashMap<String, Writer>> {
        self.unreplicated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The error of a write no replica acknowledged in time.
    pub(super) fn not_acknowledged(&self) -> QueueError {
        match &self.replicated {
            Some(recording) => recording.wait.not_acknowledged(),
            None => QueueError::Unavailable("no replica acknowledged the write".into()),
        }
    }
}

/// Who made a recording write: the primary's generation (Sentinel) and the
/// client (`CLIENT ID`) on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Writer {
    generation: u64,
    client: u64,
}

/// `durability = replicated`: the drain's recording writes, on a connection
/// of their own, and their shared wait for a replica.
pub(super) struct Recording {
    pub wait: Replicated,
    pub conn: Conn,
    group: WaitGroup,
}

impl Recording {
    pub fn new(wait: Replicated, conn: Conn) -> Recording {
        Recording {
            wait,
            conn,
            group: WaitGroup::new(),
        }
    }
}

/// One `WAIT` for many writers on one connection, group-commit style.
/// `WAIT` blocks its client until a replica has every write that client
/// made before it, so a wait sent after a writer's write was answered
/// proves that write — if it ran on the same client, which it reports
/// (`CLIENT ID`). A writer needs a wait *started* after it asked: it
/// queues for the lock; the first in line whose write the last wait does
/// not prove sends the next one, for every writer queued behind it.
struct WaitGroup {
    /// Waits started so far; the n-th carries epoch n.
    started: AtomicU64,
    /// The last wait's answer; held by the writer sending the next.
    last: tokio::sync::Mutex<Waited>,
}

/// What one wait proved.
#[derive(Debug, Clone, Copy, Default)]
struct Waited {
    epoch: u64,
    /// The client the wait ran on; `None`: it failed.
    client: Option<u64>,
    acknowledged: bool,
}

impl WaitGroup {
    fn new() -> WaitGroup {
        WaitGroup {
            started: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(Waited::default()),
        }
    }

    /// Waits for a replica to have every write this connection's client
    /// made before the call.
    async fn wait(&self, replicated: &Replicated, conn: &mut Conn) -> RedisResult<Waited> {
        // Any wait started from now on proves the writes made so far.
        let needed = self.started.load(Ordering::SeqCst) + 1;
        let mut last = self.last.lock().await;
        if last.epoch >= needed {
            return Ok(*last);
        }
        let epoch = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = match replicated.command(conn).await {
            Ok(wait) => {
                redis::pipe()
                    .cmd("CLIENT")
                    .arg("ID")
                    .add_command(wait)
                    .query_async::<(u64, Value)>(conn)
                    .await
            }
            Err(e) => Err(e),
        };
        *last = Waited {
            epoch,
            client: answer.as_ref().ok().map(|(client, _)| *client),
            acknowledged: answer
                .as_ref()
                .is_ok_and(|(_, ack)| replicated.acknowledged(ack)),
        };
        answer.map(|_| *last)
    }
}

/// `durability = replicated`: each write that answers a client or records
/// the drain's progress is followed, on the same connection and in the same
/// pipeline, by `WAIT 1 <timeout>` (`WAITAOF 0 1 <timeout>` on Redis 7.2+,
/// where the replica must have fsynced it to its AOF), and counts as done
/// only when one replica acknowledged it.
#[derive(Clone)]
pub(super) struct Replicated {
    timeout_ms: u64,
    /// Which command the server has, asked once.
    wait: Arc<OnceCell<WaitCommand>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitCommand {
    Wait,
    WaitAof,
}

impl Replicated {
    pub fn new(timeout: Duration) -> Replicated {
        Replicated {
            timeout_ms: (timeout.as_millis() as u64).max(1),
            wait: Arc::new(OnceCell::new()),
        }
    }

    /// The command to follow a write with on `conn`.
    pub async fn command(&self, conn: &mut Conn) -> RedisResult<Cmd> {
        let wait = *self
            .wait
            .get_or_try_init(move || async move {
                let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
                let version = info
                    .lines()
                    .find_map(|l| l.strip_prefix("redis_version:"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let wait = if has_waitaof(&version) {
                    WaitCommand::WaitAof
                } else {
                    WaitCommand::Wait
                };
                match wait {
                    WaitCommand::WaitAof => info!(
                        redis_version = %version,
                        "durability replicated: each 202 waits for WAITAOF 0 1 (a replica has the admission in its fsynced AOF)"
                    ),
                    WaitCommand::Wait => info!(
                        redis_version = %version,
                        "durability replicated: each 202 waits for WAIT 1 (a replica has the admission in memory; WAITAOF needs Redis 7.2)"
                    ),
                }
                Ok::<_, RedisError>(wait)
            })
            .await?;
        let mut cmd = match wait {
            WaitCommand::Wait => {
                let mut c = redis::cmd("WAIT");
                c.arg(1);
                c
            }
            WaitCommand::WaitAof => {
                let mut c = redis::cmd("WAITAOF");
                c.arg(0).arg(1);
                c
            }
        };
        cmd.arg(self.timeout_ms);
        Ok(cmd)
    }

    /// Whether the wait's answer counts a replica: `WAIT` answers the
    /// number of replicas, `WAITAOF` `[local, replicas]`.
    pub fn acknowledged(&self, answer: &Value) -> bool {
        let replicas = match answer {
            Value::Array(v) => v.get(1).and_then(as_u64),
            other => as_u64(other),
        };
        replicas.unwrap_or(0) >= 1
    }

    /// The error a write not acknowledged in time is answered with.
    pub fn not_acknowledged(&self) -> QueueError {
        QueueError::Unavailable(format!(
            "no replica acknowledged the write within {}ms (durability replicated)",
            self.timeout_ms
        ))
    }

    /// Runs `pipeline` and the wait after it, on `conn`, in one round trip
    /// (a transaction's `MULTI`/`EXEC` sent as commands: a `WAIT` inside one
    /// would not wait): the pipeline's answers (a transaction's as one
    /// array, after `OK` and a `QUEUED` per command), `None` when no replica
    /// acknowledged them in time.
    pub async fn run(
        &self,
        conn: &mut Conn,
        pipeline: &Pipeline,
    ) -> RedisResult<Option<Vec<Value>>> {
        let wait = self.command(conn).await?;
        let mut answers: Vec<Value> = with_tail(pipeline, &wait).query_async(conn).await?;
        let ack = answers.pop().unwrap_or(Value::Nil);
        Ok(self.acknowledged(&ack).then_some(answers))
    }
}

/// `pipeline`, then `tail`, in one round trip; a transaction's `MULTI` and
/// `EXEC` sent as commands, so that `tail` runs after it and outside it (a
/// `WAIT` inside a transaction would not wait). The answers: the
/// transaction's as one array after `OK` and a `QUEUED` per command, then
/// `tail`'s.
fn with_tail(pipeline: &Pipeline, tail: &Cmd) -> Pipeline {
    let mut both = redis::pipe();
    if pipeline.is_transaction() {
        both.cmd("MULTI");
    }
    for cmd in pipeline.cmd_iter() {
        both.add_command(cmd.clone());
    }
    if pipeline.is_transaction() {
        both.cmd("EXEC");
    }
    both.add_command(tail.clone());
    both
}

/// `WAITAOF` came with Redis 7.2.
fn has_waitaof(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (7, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waitaof_from_redis_7_2() {
        assert!(!has_waitaof("7.0.15"));
        assert!(!has_waitaof("6.2.14"));
        assert!(has_waitaof("7.2.4"));
        assert!(has_waitaof("8.0.0"));
        assert!(!has_waitaof(""));
    }

    #[test]
    fn a_replica_must_acknowledge() {
        let r = Replicated::new(Duration::from_secs(1));
        assert!(r.acknowledged(&Value::Int(1)));
        assert!(!r.acknowledged(&Value::Int(0)));
        assert!(r.acknowledged(&Value::Array(vec![Value::Int(0), Value::Int(2)])));
        assert!(!r.acknowledged(&Value::Array(vec![Value::Int(1), Value::Int(0)])));
    }
}
