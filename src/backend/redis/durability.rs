//! What the Redis server's own settings can lose, said once at start-up.

use super::RedisQueue;

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
