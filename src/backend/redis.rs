//! The production backend: a Redis stream per queue with the consumer group
//! `flashgate`, a hash per ticket and a counters hash, all under one hash tag
//! so a queue's keys share a cluster slot (SPEC §7).

mod admit;
mod conn;
mod reply;
mod scripts;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind, Value};

use super::{
    Admit, AdmitLimits, AttemptStart, Cancel, Change, Delivery, IdempotencyClaim, OnChange,
    QueueBackend, QueueError, QueueStats, QueuedRequest,
};
use crate::backend::knobs::{Knobs, KnobsPatch, RateStep};
use crate::backend::CATCH_UP;
use crate::config::RedisEndpoint as Endpoint;
use crate::ticket::{now_ms, StoredResponse, TicketError, TicketId, TicketRecord, TicketStatus};
use conn::Conn;

use reply::{first_id_ms, group_info, parse_ticket};
use scripts::{ADAPT_LUA, ADMIT_LUA, CANCEL_LUA, RELEASE_LUA, RESERVE_LUA, START_ATTEMPT_LUA};
use tracing::{error, info, warn};

/// The consumer group every instance reads through.
pub const GROUP: &str = "flashgate";

/// How the Redis backend connects and names its keys.
#[derive(Debug, Clone)]
pub struct RedisQueueConfig {
    pub url: String,
    pub prefix: String,
    pub queue: String,
    /// This instance's stable name in the consumer group.
    pub consumer: String,
    pub ticket_ttl: Duration,
    /// Which partition of the queue this is, and of how many (`0` of `1`:
    /// not partitioned). A partition's keys carry `{queue:index}` as their
    /// hash tag, so partitions spread over a cluster's shards.
    pub partition: u32,
    pub partitions: u32,
}

/// A queue stored in a Redis stream.
pub struct RedisQueue {
    keys: Keys,
    partition: u32,
    partitions: u32,
    consumer: String,
    ttl_secs: u64,
    /// Ordinary commands: multiplexed and reconnecting.
    conn: Conn,
    /// `XREADGROUP BLOCK` only: a blocked read would stall every command
    /// multiplexed behind it, and needs a response timeout above the block.
    reader: Conn,
    /// For the change feed's own pub/sub connection.
    endpoint: Endpoint,
    admit_script: Script,
    /// Admissions on their way to [`admit::Batcher`], started on first use
    /// (inside the runtime).
    admissions: OnceLock<tokio::sync::mpsc::UnboundedSender<admit::Item>>,
    start_script: Script,
    release_script: Script,
    cancel_script: Script,
    reserve_script: Script,
    adapt_script: Script,
    group_ready: AtomicBool,
    claims: Mutex<Claims>,
}

/// The entries this instance is responsible for.
struct Claims {
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

struct Keys {
    stream: String,
    dead: String,
    counters: String,
    knobs: String,
    /// The drain's shared slot schedule (`RESERVE_LUA`).
    rate: String,
    prequeue: String,
    /// Pub/sub channel of ticket status changes (not a key: channels are
    /// cluster-wide, the hash tag only keeps names apart).
    changes: String,
    ticket_prefix: String,
    idempotency_prefix: String,
}

impl Keys {
    fn new(prefix: &str, queue: &str, partition: u32, partitions: u32) -> Self {
        let base = if partitions > 1 {
            format!("{prefix}:{{{queue}:{partition}}}")
        } else {
            format!("{prefix}:{{{queue}}}")
        };
        Keys {
            stream: format!("{base}:stream"),
            dead: format!("{base}:dead"),
            counters: format!("{base}:counters"),
            knobs: format!("{base}:knobs"),
            rate: format!("{base}:rate"),
            prequeue: format!("{base}:prequeue"),
            changes: format!("{base}:changes"),
            ticket_prefix: format!("{base}:ticket:"),
            idempotency_prefix: format!("{base}:idem:"),
        }
    }

    fn ticket(&self, id: &TicketId) -> String {
        format!("{}{}", self.ticket_prefix, id)
    }
}

/// Ordinary commands: long enough for a busy server, short enough that a
/// client hears 503 instead of hanging. A timeout does not mean the command
/// failed, which is why admission is idempotent by key.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisQueue {
    /// Connects lazily: the gateway starts (and answers 503) while Redis is down.
    pub fn connect(config: &RedisQueueConfig, max_block: Duration) -> Result<Self, QueueError> {
        let endpoint = Endpoint::parse(&config.url).map_err(QueueError::Unavailable)?;
        let conn = Conn::open(&endpoint, CONNECT_TIMEOUT, RESPONSE_TIMEOUT)?;
        let reader = Conn::open(&endpoint, CONNECT_TIMEOUT, max_block + RESPONSE_TIMEOUT)?;
        Ok(RedisQueue {
            keys: Keys::new(
                &config.prefix,
                &config.queue,
                config.partition,
                config.partitions,
            ),
            partition: config.partition,
            partitions: config.partitions.max(1),
            consumer: config.consumer.clone(),
            ttl_secs: config.ticket_ttl.as_secs().max(1),
            conn,
            reader,
            endpoint,
            admit_script: Script::new(ADMIT_LUA),
            admissions: OnceLock::new(),
            start_script: Script::new(START_ATTEMPT_LUA),
            release_script: Script::new(RELEASE_LUA),
            cancel_script: Script::new(CANCEL_LUA),
            reserve_script: Script::new(RESERVE_LUA),
            adapt_script: Script::new(ADAPT_LUA),
            group_ready: AtomicBool::new(false),
            claims: Mutex::new(Claims {
                recovering: Some("0".into()),
                reclaimed: VecDeque::new(),
                held: HashSet::new(),
                cursor: "0-0".into(),
            }),
        })
    }

    /// The ticket secret shared by every instance on this Redis: this
    /// instance's `candidate` if none was stored yet, else the stored one, in
    /// one atomic `SET NX GET` (Redis 7.0+). `<prefix>:ticket-secret` has no
    /// TTL: changing it invalidates every outstanding ticket.
    pub async fn shared_ticket_secret(
        url: &str,
        prefix: &str,
        candidate: &str,
    ) -> Result<String, QueueError> {
        let mut conn = Conn::open(
            &Endpoint::parse(url).map_err(QueueError::Unavailable)?,
            CONNECT_TIMEOUT,
            RESPONSE_TIMEOUT,
        )?;
        let earlier: Option<String> = tokio::time::timeout(
            CONNECT_TIMEOUT + RESPONSE_TIMEOUT,
            redis::cmd("SET")
                .arg(format!("{prefix}:ticket-secret"))
                .arg(candidate)
                .arg("NX")
                .arg("GET")
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| QueueError::Unavailable("SET timed out".into()))?
        .map_err(unavailable)?;
        Ok(earlier.unwrap_or_else(|| candidate.to_string()))
    }

    /// Creates the consumer group (and the stream) unless it exists. Starting
    /// at id 0 keeps entries added before the group existed.
    async fn ensure_group(&self) -> Result<(), QueueError> {
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

    /// A pub/sub connection to one node, subscribed to the change channel.
    async fn subscribe(&self, node: &str) -> Result<redis::aio::PubSub, QueueError> {
        let client = redis::Client::open(node)
            .map_err(|e| QueueError::Unavailable(format!("bad redis url: {e}")))?;
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| QueueError::Unavailable("pub/sub connect timed out".into()))?
            .map_err(unavailable)?;
        tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.subscribe(&self.keys.changes))
            .await
            .map_err(|_| QueueError::Unavailable("SUBSCRIBE timed out".into()))?
            .map_err(unavailable)?;
        Ok(pubsub)
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        // Claims hold no invariant a panic could break half-way.
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry fields under the names `ADMIT_LUA` gives them in the
    /// stream, for a dead letter that keeps the whole request.
    fn entry_fields(r: &QueuedRequest) -> [(&'static str, &[u8]); 9] {
        [
            ("t", r.ticket.as_str().as_bytes()),
            ("m", r.method.as_bytes()),
            ("p", r.path.as_bytes()),
            ("h", &r.headers),
            ("b", &r.body),
            ("c", r.client.as_bytes()),
            ("f", r.forwarded_for.as_bytes()),
            ("x", r.forwarded_proto.as_bytes()),
            ("a", b""), // replaced below: admitted-at is a number
        ]
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
        Ok(reply::entries(&reply)
            .into_iter()
            .map(|entry| reply::delivery(entry, true, self.partition))
            .collect())
    }

    fn ack_and_delete(&self, pipe: &mut redis::Pipeline, entry_id: &str) {
        pipe.cmd("XACK")
            .arg(&self.keys.stream)
            .arg(GROUP)
            .arg(entry_id)
            .ignore();
        // Acknowledged entries are deleted one by one so the stream does not
        // grow without bound; unacknowledged ones are never trimmed.
        pipe.cmd("XDEL")
            .arg(&self.keys.stream)
            .arg(entry_id)
            .ignore();
    }
}

/// Runs `cmd`, an `EVALSHA` of `script`, loading the script first if the
/// server does not know it (as `ScriptInvocation` does). The hot path builds
/// its `EVALSHA` straight into one `Cmd` buffer: `ScriptInvocation` first
/// copies every key and argument into a `Vec` of its own.
async fn evalsha<T: FromRedisValue>(
    conn: &mut Conn,
    script: &Script,
    cmd: &Cmd,
) -> redis::RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

#[async_trait]
impl QueueBackend for RedisQueue {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn admit(
        &self,
        request: QueuedRequest,
        claim: Option<IdempotencyClaim>,
        limits: AdmitLimits,
    ) -> Result<Admit, QueueError> {
        let batches = self.admissions.get_or_init(|| {
            admit::spawn(admit::Batcher {
                conn: self.conn.clone(),
                script: self.admit_script.clone(),
                keys: [
                    self.keys.stream.clone(),
                    self.keys.counters.clone(),
                    self.keys.knobs.clone(),
                    self.keys.prequeue.clone(),
                ],
                ttl_secs: self.ttl_secs,
                partitions: self.partitions,
                partition: self.partition,
            })
        });
        let idem_key = match &claim {
            Some(c) => format!("{}{}", self.keys.idempotency_prefix, c.key),
            None => format!("{}-", self.keys.idempotency_prefix),
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let stopped = || QueueError::Unavailable("the admission batcher has stopped".into());
        batches
            .send(admit::Item {
                ticket_key: self.keys.ticket(&request.ticket),
                idem_key,
                request,
                claim,
                limits,
                answer,
            })
            .map_err(|_| stopped())?;
        // The batch call has the same response timeout, but waiting for a
        // call slot does not: with Redis frozen, every slot waits out its
        // timeout while later admissions queue behind them.
        match tokio::time::timeout(RESPONSE_TIMEOUT, answered).await {
            Ok(answer) => answer.map_err(|_| stopped())?,
            Err(_) => Err(QueueError::Unavailable(format!(
                "no answer from Redis within {RESPONSE_TIMEOUT:?}"
            ))),
        }
    }

    async fn replay(&self, claim: &IdempotencyClaim) -> Result<Option<Admit>, QueueError> {
        let mut conn = self.conn.clone();
        // The fields ADMIT_LUA writes: ticket, fingerprint, sequence number.
        let ((ticket, fingerprint, seq), dispatched): (
            (Option<String>, Option<String>, Option<u64>),
            Option<u64>,
        ) = redis::pipe()
            .cmd("HMGET")
            .arg(format!("{}{}", self.keys.idempotency_prefix, claim.key))
            .arg(&["t", "f", "s"])
            .hget(&self.keys.counters, "dispatched")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Some(ticket) = ticket else {
            return Ok(None);
        };
        if fingerprint.as_deref() != Some(claim.fingerprint.as_str()) {
            return Ok(Some(Admit::KeyReused));
        }
        let ticket = TicketId::parse(&ticket)
            .ok_or_else(|| QueueError::Protocol(format!("stored ticket id `{ticket}`")))?
            .0;
        Ok(Some(Admit::Replayed {
            ticket,
            seq: seq.unwrap_or(0),
            dispatched: dispatched.unwrap_or(0),
        }))
    }

    async fn ticket(&self, id: &TicketId) -> Result<Option<(TicketRecord, u64)>, QueueError> {
        let mut conn = self.conn.clone();
        let (fields, dispatched): (HashMap<String, Vec<u8>>, Option<u64>) = redis::pipe()
            .hgetall(self.keys.ticket(id))
            .hget(&self.keys.counters, "dispatched")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some((parse_ticket(&fields)?, dispatched.unwrap_or(0))))
    }

    async fn next(&self, block: Duration, max: usize) -> Result<Vec<Delivery>, QueueError> {
        self.ensure_group().await?;
        // After a restart, this consumer's own pending entries come first.
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
        // Then work taken over from stopped instances, then new entries.
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

    async fn maintain(&self, claim_idle: Duration) -> Result<(), QueueError> {
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
        let reply: Value = redis::cmd("XAUTOCLAIM")
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
        let (next, claimed, deleted) = reply::autoclaim(&reply)
            .ok_or_else(|| QueueError::Protocol("unexpected XAUTOCLAIM reply".into()))?;
        if !claimed.is_empty() {
            info!(stream = %self.keys.stream, entries = claimed.len(),
                "took over entries left unfinished for longer than {claim_idle:?}");
        }
        {
            let mut claims = self.claims();
            claims.cursor = next;
            for entry in claimed {
                if claims.held.insert(entry.0.clone()) {
                    claims
                        .reclaimed
                        .push_back(reply::delivery(entry, false, self.partition));
                }
            }
        }
        // Pending entries deleted by someone else: their data is gone, so
        // they cannot be delivered; record them where operators look.
        for id in deleted {
            error!(stream = %self.keys.stream, entry = %id,
                "pending entry was deleted from the stream by someone else: dead-lettered, not delivered");
            redis::cmd("XADD")
                .arg(&self.keys.dead)
                .arg("*")
                .arg("entry")
                .arg(&id)
                .arg("code")
                .arg("entry_deleted")
                .arg("detail")
                .arg("the entry was deleted from the work stream while pending")
                .query_async::<Value>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn start_attempt(&self, delivery: &Delivery) -> Result<AttemptStart, QueueError> {
        let (ticket_key, ticket) = match &delivery.request {
            Ok(r) => (self.keys.ticket(&r.ticket), r.ticket.as_str()),
            Err(_) => (format!("{}-", self.keys.ticket_prefix), ""),
        };
        let mut conn = self.conn.clone();
        let attempt: i64 = self
            .start_script
            .key(ticket_key)
            .key(&self.keys.counters)
            .key(&self.keys.stream)
            .arg(if delivery.fresh { "1" } else { "0" })
            .arg(&self.keys.changes)
            .arg(ticket)
            .arg(&delivery.entry_id)
            .arg(GROUP)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match attempt {
            -2 => {
                self.claims().held.remove(&delivery.entry_id);
                AttemptStart::Cancelled
            }
            n => u32::try_from(n).map_or(AttemptStart::Untracked, AttemptStart::Counted),
        })
    }

    async fn cancel(&self, id: &TicketId) -> Result<Cancel, QueueError> {
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self
            .cancel_script
            .key(self.keys.ticket(id))
            .arg(now_ms())
            .arg(self.ttl_secs)
            .arg(&self.keys.changes)
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match reply.first().map(String::as_str) {
            Some("missing") => Ok(Cancel::NotFound),
            Some("refused") => {
                let status = reply
                    .get(1)
                    .and_then(|s| TicketStatus::parse(s))
                    .ok_or_else(|| QueueError::Protocol(format!("cancel script said {reply:?}")))?;
                Ok(Cancel::Refused(status))
            }
            Some(word @ ("ok" | "already")) => match self.ticket(id).await? {
                Some((record, dispatched)) if word == "ok" => {
                    Ok(Cancel::Cancelled(record, dispatched))
                }
                Some((record, dispatched)) => Ok(Cancel::AlreadyCancelled(record, dispatched)),
                None => Ok(Cancel::NotFound),
            },
            _ => Err(QueueError::Protocol(format!(
                "cancel script said {reply:?}"
            ))),
        }
    }

    async fn follow_changes(&self, changed: &OnChange) -> Result<(), QueueError> {
        use futures_util::StreamExt;
        // Published messages reach every node of a cluster: any one will do.
        let mut last_error = None;
        let mut subscribed = None;
        for node in self.endpoint.nodes() {
            match self.subscribe(&node).await {
                Ok(pubsub) => {
                    subscribed = Some(pubsub);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some(mut pubsub) = subscribed else {
            return Err(last_error
                .unwrap_or_else(|| QueueError::Unavailable("no node to subscribe on".into())));
        };
        changed(Change::Resync);
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            if let Ok(id) = std::str::from_utf8(message.get_payload_bytes()) {
                changed(Change::Ticket(id));
            }
        }
        Err(QueueError::Unavailable(
            "the change feed's connection closed".into(),
        ))
    }

    async fn complete(
        &self,
        delivery: &Delivery,
        response: &StoredResponse,
    ) -> Result<(), QueueError> {
        let mut record = redis::pipe();
        if let Ok(request) = &delivery.request {
            let key = self.keys.ticket(&request.ticket);
            record
                .cmd("HSET")
                .arg(&key)
                .arg("st")
                .arg(TicketStatus::Completed.as_str())
                .arg("cmp")
                .arg(now_ms())
                .arg("rs")
                .arg(response.status)
                .arg("rh")
                .arg(response.headers.as_ref())
                .arg("rb")
                .arg(response.body.as_ref())
                .ignore();
            record.expire(&key, self.ttl_secs as i64).ignore();
            record
                .cmd("PUBLISH")
                .arg(&self.keys.changes)
                .arg(request.ticket.as_str())
                .ignore();
        }
        let mut together = record.clone();
        together.atomic();
        self.ack_and_delete(&mut together, &delivery.entry_id);
        let mut conn = self.conn.clone();
        match together.query_async::<()>(&mut conn).await {
            Ok(()) => {}
            Err(e) if is_oom(&e) => {
                // Out of memory: writes are refused, but XACK and XDEL are
                // not and they free memory. The request has reached the
                // upstream: acknowledge first, record the result when Redis can.
                warn!(stream = %self.keys.stream,
                    "Redis is out of memory: acknowledging before recording the result");
                let mut ack = redis::pipe();
                self.ack_and_delete(&mut ack, &delivery.entry_id);
                ack.query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)?;
                self.claims().held.remove(&delivery.entry_id);
                return record
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable);
            }
            Err(e) => return Err(unavailable(e)),
        }
        self.claims().held.remove(&delivery.entry_id);
        Ok(())
    }

    async fn fail(
        &self,
        delivery: &Delivery,
        error: &TicketError,
        dead_letter: bool,
    ) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if delivery.fresh {
            pipe.hincr(&self.keys.counters, "dispatched", 1).ignore();
        }
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.keys.dead)
            .arg("*")
            .arg("entry")
            .arg(&delivery.entry_id)
            .arg("code")
            .arg(&error.code)
            .arg("detail")
            .arg(&error.detail);
        if let Ok(request) = &delivery.request {
            let admitted_at = request.admitted_at_ms.to_string();
            for (name, value) in Self::entry_fields(request) {
                let value = if name == "a" {
                    admitted_at.as_bytes()
                } else {
                    value
                };
                xadd.arg(name).arg(value);
            }
            let key = self.keys.ticket(&request.ticket);
            pipe.cmd("HSET")
                .arg(&key)
                .arg("st")
                .arg(TicketStatus::Failed.as_str())
                .arg("cmp")
                .arg(now_ms())
                .arg("ec")
                .arg(&error.code)
                .arg("ed")
                .arg(&error.detail)
                .ignore();
            pipe.expire(&key, self.ttl_secs as i64).ignore();
            pipe.cmd("PUBLISH")
                .arg(&self.keys.changes)
                .arg(request.ticket.as_str())
                .ignore();
        }
        if dead_letter {
            pipe.add_command(xadd).ignore();
        }
        self.ack_and_delete(&mut pipe, &delivery.entry_id);
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        self.claims().held.remove(&delivery.entry_id);
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        // XINFO fails on a stream not yet made: one with no entries is not
        // a lost backend.
        self.ensure_group().await?;
        let mut conn = self.conn.clone();
        let (counters, groups): ((Option<u64>, Option<u64>), Value) = redis::pipe()
            .cmd("HMGET")
            .arg(&self.keys.counters)
            .arg("admitted")
            .arg("dispatched")
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.keys.stream)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let (admitted, dispatched) = (counters.0.unwrap_or(0), counters.1.unwrap_or(0));
        let (pending, last_delivered) = group_info(&groups).unwrap_or((0, "0-0".into()));
        // The oldest undispatched entry is the first after the group's
        // last-delivered id; its id holds its admission time in ms.
        let next: Value = redis::cmd("XRANGE")
            .arg(&self.keys.stream)
            .arg(format!("({last_delivered}"))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let oldest_age =
            first_id_ms(&next).map(|ms| Duration::from_millis(now_ms().saturating_sub(ms)));
        Ok(QueueStats {
            depth: admitted.saturating_sub(dispatched),
            in_flight: pending,
            oldest_age,
            admitted,
            dispatched,
        })
    }

    async fn release_prequeue(&self, max: usize) -> Result<(usize, usize), QueueError> {
        let mut conn = self.conn.clone();
        let (moved, left): (usize, usize) = self
            .release_script
            .key(&self.keys.prequeue)
            .key(&self.keys.stream)
            .key(&self.keys.counters)
            .arg(max)
            .arg(&self.keys.ticket_prefix)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((moved, left))
    }

    async fn knobs(&self) -> Result<Knobs, QueueError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.keys.knobs)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(reply::knobs(&fields))
    }

    async fn set_knobs(&self, patch: &KnobsPatch) -> Result<Knobs, QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let key = &self.keys.knobs;
        let flag = |b: bool| if b { "1" } else { "0" };
        if let Some(r) = patch.drain_rate {
            pipe.hset(key, "drain_rate", r.to_string()).ignore();
        }
        if let Some(p) = patch.paused {
            pipe.hset(key, "paused", flag(p)).ignore();
        }
        match patch.stock {
            Some(Some(s)) => pipe.hset(key, "stock", s).ignore(),
            Some(None) => pipe.hdel(key, "stock").ignore(),
            None => &mut pipe,
        };
        match patch.open {
            Some(Some(o)) => pipe.hset(key, "open", flag(o)).ignore(),
            Some(None) => pipe.hdel(key, "open").ignore(),
            None => &mut pipe,
        };
        if let Some(s) = patch.sold_out {
            pipe.hset(key, "sold_out", flag(s)).ignore();
        }
        pipe.hincr(key, "version", 1).ignore();
        pipe.cmd("HGETALL").arg(key);
        let mut conn = self.conn.clone();
        let (fields,): (HashMap<String, String>,) =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(reply::knobs(&fields))
    }

    async fn reserve_slots(
        &self,
        period: Duration,
        burst: u32,
        count: u32,
    ) -> Result<i64, QueueError> {
        let mut conn = self.conn.clone();
        self.reserve_script
            .key(&self.keys.rate)
            .arg(period.as_micros().max(1) as u64)
            .arg(burst.max(1))
            .arg(count.max(1))
            .arg(CATCH_UP.as_micros() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn adapt_rate(&self, step: &RateStep) -> Result<Option<Knobs>, QueueError> {
        let (mul, add) = step.terms();
        let mut conn = self.conn.clone();
        let fields: Option<Vec<String>> = self
            .adapt_script
            .key(&self.keys.knobs)
            .arg(if step.down { "1" } else { "0" })
            .arg(mul)
            .arg(add)
            .arg(step.floor)
            .arg(step.ceiling)
            .arg(step.configured)
            .arg(RateStep::SPACING.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(fields.map(|f| {
            let map: HashMap<String, String> = f
                .chunks_exact(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect();
            reply::knobs(&map)
        }))
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

fn unavailable(e: RedisError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// Redis refuses writes with `OOM` (or aborts a transaction that holds one).
fn is_oom(e: &RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM")
}

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
