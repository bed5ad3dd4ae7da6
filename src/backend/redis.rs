//! The production backend: a Redis stream per queue with the consumer group
//! `flashgate`, a hash per ticket and a counters hash, all under one hash tag
//! so a queue's keys share a cluster slot (SPEC §7).
//!
//! One file per seam — `line.rs`, `tickets.rs`, `knobs.rs`, `schedule.rs`,
//! `changes.rs`, `events.rs`, `dead.rs` — with the consumer group's bookkeeping in `group.rs`,
//! batched admission in `admit.rs`, the Lua scripts in `scripts.rs`, and
//! every key and field name in `schema.rs`.

mod admit;
mod changes;
mod conn;
mod dead;
mod durability;
mod events;
mod group;
mod knobs;
mod line;
mod reply;
mod schedule;
mod schema;
mod scripts;
mod sentinel;
mod tickets;
mod trim;

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind};

use crate::backend::{EventSettings, QueueError};
use crate::config::RedisEndpoint as Endpoint;
use conn::Conn;
use durability::{Recording, Replicated, Writer};
use group::Claims;
use schema::Keys;
use scripts::{
    ADAPT_LUA, ADMIT_LUA, CANCEL_LUA, FINISH_LUA, KNOBS_LUA, RELEASE_LUA, RESERVE_LUA,
    START_ATTEMPT_LUA,
};

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
    /// How long lifecycle events are kept; `None`: none are written.
    pub events: Option<Duration>,
    /// `durability = replicated`: how long a write waits for a replica's
    /// acknowledgement; `None`: `local`, the primary's write is enough.
    pub replicated: Option<Duration>,
}

/// A queue stored in a Redis stream.
pub struct RedisQueue {
    keys: Keys,
    partition: u32,
    partitions: u32,
    consumer: String,
    ttl_secs: u64,
    /// The queue's name and event retention, when it writes events.
    events: Option<EventSettings>,
    /// Ordinary commands: multiplexed and reconnecting.
    conn: Conn,
    /// Admissions' script calls: `conn`, or with `durability =
    /// replicated` a connection of their own (a `WAIT` holds up every
    /// command behind it on its connection).
    admit_conn: Conn,
    /// `durability = replicated`: the wait, and the connection the drain's
    /// recording writes go on, with their shared wait for a replica.
    replicated: Option<Recording>,
    /// Entries whose recording write no replica has acknowledged yet, with
    /// the primary's generation and the client that wrote it.
    unreplicated: Mutex<std::collections::HashMap<String, Writer>>,
    /// `XREADGROUP BLOCK` only: a blocked read would stall every command
    /// multiplexed behind it, and needs a response timeout above the block.
    reader: Conn,
    /// For the change feed's own pub/sub connection, and the event log's
    /// waiting reads, each on a connection of its own.
    endpoint: Endpoint,
    admit_script: Script,
    /// Admissions on their way to [`admit::Batcher`], started on first use
    /// (inside the runtime).
    admissions: OnceLock<tokio::sync::mpsc::UnboundedSender<admit::Item>>,
    start_script: Script,
    finish_script: Script,
    release_script: Script,
    cancel_script: Script,
    reserve_script: Script,
    adapt_script: Script,
    knobs_script: Script,
    replay_script: Script,
    discard_script: Script,
    group_ready: AtomicBool,
    claims: Mutex<Claims>,
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
        let (admit_conn, replicated) = match config.replicated {
            None => (conn.clone(), None),
            Some(timeout) => (
                Conn::open(&endpoint, CONNECT_TIMEOUT, RESPONSE_TIMEOUT)?,
                Some(Recording::new(
                    Replicated::new(timeout),
                    Conn::open(&endpoint, CONNECT_TIMEOUT, RESPONSE_TIMEOUT)?,
                )),
            ),
        };
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
            events: config.events.map(|retention| EventSettings {
                queue: config.queue.clone(),
                retention,
            }),
            conn,
            admit_conn,
            replicated,
            unreplicated: Mutex::new(Default::default()),
            reader,
            endpoint,
            admit_script: Script::new(ADMIT_LUA),
            admissions: OnceLock::new(),
            start_script: Script::new(START_ATTEMPT_LUA),
            finish_script: Script::new(FINISH_LUA),
            release_script: Script::new(RELEASE_LUA),
            cancel_script: Script::new(CANCEL_LUA),
            reserve_script: Script::new(RESERVE_LUA),
            adapt_script: Script::new(ADAPT_LUA),
            knobs_script: Script::new(KNOBS_LUA),
            replay_script: Script::new(dead::REPLAY_LUA),
            discard_script: Script::new(dead::DISCARD_LUA),
            group_ready: AtomicBool::new(false),
            claims: Mutex::new(Claims::new()),
        })
    }

    /// The arguments every event-writing script takes: the queue's name and
    /// the `MINID` threshold of its retention, '' when events are off.
    fn event_args(&self) -> (&str, String) {
        match &self.events {
            Some(e) => (&e.queue, e.min_ms(crate::ticket::now_ms()).to_string()),
            None => ("", String::new()),
        }
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
                .arg(Keys::ticket_secret(prefix))
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

/// [`evalsha`] for a pipeline that calls `script` by `EVALSHA`.
async fn evalsha_pipe(
    conn: &mut Conn,
    script: &Script,
    pipe: &redis::Pipeline,
) -> redis::RedisResult<()> {
    match pipe.query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            pipe.query_async(conn).await
        }
        other => other,
    }
}

fn unavailable(e: RedisError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// Redis refuses writes with `OOM` (or aborts a transaction that holds one).
fn is_oom(e: &RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM")
}
