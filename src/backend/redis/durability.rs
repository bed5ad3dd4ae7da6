//! What the Redis server's own settings can lose, said once at start-up,
//! and the `replicated` durability level's wait for a replica.

use std::collections::HashMap;
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
    /// written already on the same primary (Sentinel: the same generation)
    /// only the wait is sent again — its writes are not repeated (a second
    /// dead letter) — until a replica acknowledges; the entry stays pending
    /// and claimed by this instance meanwhile. After a failover the write is
    /// made again on the new primary: the old one's may not have reached it
    /// (a dead letter may then be written twice, a result never lost).
    pub(super) async fn record(&self, entry_id: &str, pipeline: &Pipeline) -> RedisResult<bool> {
        let Some((replicated, conn)) = &self.replicated else {
            return pipeline
                .query_async::<()>(&mut self.conn.clone())
                .await
                .map(|()| true);
        };
        let mut conn = conn.clone();
        let generation = conn.generation();
        let written = self.unreplicated().get(entry_id) == Some(&generation);
        let acknowledged = if written {
            let wait = replicated.command(&mut conn).await?;
            let answer: Value = wait.query_async(&mut conn).await?;
            replicated.acknowledged(&answer)
        } else {
            replicated.run(&mut conn, pipeline).await?.is_some()
        };
        let mut unreplicated = self.unreplicated();
        if acknowledged {
            unreplicated.remove(entry_id);
        } else {
            unreplicated.insert(entry_id.to_string(), generation);
        }
        Ok(acknowledged)
    }

    fn unreplicated(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.unreplicated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The error of a write no replica acknowledged in time.
    pub(super) fn not_acknowledged(&self) -> QueueError {
        match &self.replicated {
            Some((replicated, _)) => replicated.not_acknowledged(),
            None => QueueError::Unavailable("no replica acknowledged the write".into()),
        }
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
        both.add_command(wait);
        let mut answers: Vec<Value> = both.query_async(conn).await?;
        let ack = answers.pop().unwrap_or(Value::Nil);
        Ok(self.acknowledged(&ack).then_some(answers))
    }
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
