//! The consumer group: which entries this instance holds, re-reading them
//! after a restart, keeping them from looking abandoned, and taking over
//! those that stopped instances left unfinished.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::streams::StreamAutoClaimReply;
use redis::{RedisError, Value};
use tracing::{error, info};

use super::schema::{DeadField, GROUP};
use super::{reply, unavailable, RedisQueue};
use crate::backend::{Delivery, QueueError};

/// The entries this instance is responsible for.
pub(super) struct Claims {
    /// While re-reading this consumer's own pending entries after a restart:
    /// the id after which to read next. `None` once they are all re-read.
    recovering: Option<String>,
    /// Entries taken over from stopped consumers, not yet handed out.
    reclaimed: VecDeque<Delivery>,
    /// Entries handed out and not yet finished: their idle time is reset on
    /// every heartbeat so no other instance takes live work.
    held: HashSet<String>,
    /// Where the next `XAUTOCLAIM` scan continues.
    cursor: String,
}

impl Claims {
    /// A consumer starting up: its own pending entries come first.
    pub(super) fn new() -> Self {
        Claims {
            recovering: Some("0".into()),
            reclaimed: VecDeque::new(),
            held: HashSet::new(),
            cursor: "0-0".into(),
        }
    }
}

impl RedisQueue {
    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        // Claims hold no invariant a panic could break half-way.
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets an entry that was acknowledged: no more heartbeats for it.
    pub(super) fn release(&self, entry_id: &str) {
        self.claims().held.remove(entry_id);
    }

    /// Creates the consumer group (and the stream) unless it exists. Starting
    /// at id 0 keeps entries added before the group existed.
    pub(super) async fn ensure_group(&self) -> Result<(), QueueError> {
        if self.group_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.group_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// One `XREADGROUP` of at most `count` entries after `id` (`>` = never
    /// delivered).
    async fn read(
        &self,
        id: &str,
        block: Option<Duration>,
        count: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.keys.stream).arg(id);
        let mut reader = self.reader.clone();
        let reply: Value = cmd.query_async(&mut reader).await.map_err(|e| {
            if e.code() == Some("NOGROUP") {
                // Someone deleted the stream or the group: make it again.
                self.group_ready.store(false, Ordering::Relaxed);
            }
            unavailable(e)
        })?;
        Ok(reply::read_entries(reply)
            .map_err(QueueError::Protocol)?
            .into_iter()
            .map(|entry| reply::delivery(entry, true, self.partition))
            .collect())
    }

    /// [`crate::backend::Line::next`]: this consumer's own pending entries
    /// after a restart, then work taken over from stopped instances, then
    /// new entries.
    pub(super) async fn next_entries(
        &self,
        block: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.ensure_group().await?;
        loop {
            let recovering = self.claims().recovering.clone();
            let Some(cursor) = recovering else { break };
            let Some(delivery) = self.read(&cursor, None, 1).await?.pop() else {
                self.claims().recovering = None;
                break;
            };
            let mut claims = self.claims();
            claims.recovering = Some(delivery.entry_id.clone());
            if claims.held.insert(delivery.entry_id.clone()) {
                // It was counted as dispatched when it was first read.
                return Ok(vec![Delivery {
                    fresh: false,
                    ..delivery
                }]);
            }
        }
        let reclaimed: Vec<Delivery> = {
            let mut claims = self.claims();
            let n = max.min(claims.reclaimed.len());
            claims.reclaimed.drain(..n).collect()
        };
        if !reclaimed.is_empty() {
            return Ok(reclaimed);
        }
        let deliveries = match self.read(">", Some(block), max).await {
            Ok(delivery) => delivery,
            Err(e) => {
                // A read that timed out may still have delivered an entry to
                // this consumer: re-read its own pending entries next time.
                self.claims().recovering = Some("0".into());
                return Err(e);
            }
        };
        let mut claims = self.claims();
        for d in &deliveries {
            claims.held.insert(d.entry_id.clone());
        }
        Ok(deliveries)
    }

    /// [`crate::backend::Line::maintain`]: the heartbeat, then the takeover.
    pub(super) async fn maintain_claims(&self, claim_idle: Duration) -> Result<(), QueueError> {
        self.ensure_group().await?;
        let mut conn = self.conn.clone();
        // 1. Heartbeat: reset the idle time of every entry this instance
        //    works on, however long its retries take.
        let held: Vec<String> = self.claims().held.iter().cloned().collect();
        for ids in held.chunks(256) {
            redis::cmd("XCLAIM")
                .arg(&self.keys.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(0)
                .arg(ids)
                .arg("JUSTID")
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        // 2. Take over entries idle for longer than `claim_idle`: their
        //    consumer stopped without finishing them.
        let cursor = self.claims().cursor.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(claim_idle.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(100)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if !reply.claimed.is_empty() {
            info!(stream = %self.keys.stream, entries = reply.claimed.len(),
                "took over entries left unfinished for longer than {claim_idle:?}");
        }
        {
            let mut claims = self.claims();
            claims.cursor = reply.next_stream_id;
            for entry in reply.claimed {
                if claims.held.insert(entry.id.clone()) {
                    claims
                        .reclaimed
                        .push_back(reply::delivery(entry, false, self.partition));
                }
            }
        }
        // Pending entries deleted by someone else (Redis 7 drops them from
        // the PEL): their data is gone, so they cannot be delivered; record
        // them where operators look.
        for id in reply.deleted_ids {
            error!(stream = %self.keys.stream, entry = %id,
                "pending entry was deleted from the stream by someone else: dead-lettered, not delivered");
            redis::cmd("XADD")
                .arg(&self.keys.dead)
                .arg("*")
                .arg(DeadField::ENTRY)
                .arg(&id)
                .arg(DeadField::CODE)
                .arg("entry_deleted")
                .arg(DeadField::DETAIL)
                .arg("the entry was deleted from the work stream while pending")
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Adds the end of an entry to `pipe`: acknowledged. It stays in the
    /// stream for the other consumer groups until the trim (`trim.rs`)
    /// finds every group done with it, or it is past the retention.
    pub(super) fn ack(&self, pipe: &mut redis::Pipeline, entry_id: &str) {
        pipe.cmd("XACK")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(entry_id)
            .ignore();
    }
}
