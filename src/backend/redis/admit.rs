//! Admission in batches: the admissions to one queue that arrive together
//! go to Redis together, in one `ADMIT_LUA` call.
//!
//! Under a burst most of an admission's cost is per call, not per request:
//! the script call, reading and writing the queue's counters, the command's
//! trip through the multiplexed connection and its reply. A batcher task
//! takes whatever admissions wait when one of `IN_FLIGHT` call slots is free:
//! one at a time while the queue is quiet (no added latency), up to
//! `MAX_BATCH` under a burst. Each request keeps its own answer: the script
//! checks them one after the other, exactly as separate calls would.

use std::sync::Arc;

use redis::{Cmd, ErrorKind, Script, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::conn::Conn;
use super::durability::Replicated;
use super::reply::{as_string, as_u64};
use super::scripts::{ADMIT_ARGS, ADMIT_BATCH_ARGS};
use super::{evalsha, unavailable};
use crate::backend::{
    Admit, AdmitLimits, FairLimits, IdempotencyClaim, Prequeue, QueueError, QueuedRequest,
};
use crate::ticket::TicketId;

/// Requests in one script call at most: a batch holds Redis for well under
/// a millisecond, so commands from other instances never wait long.
const MAX_BATCH: usize = 32;
/// Calls outstanding at once: enough to keep a remote Redis busy while
/// replies travel, few enough that a burst forms batches.
const IN_FLIGHT: usize = 4;

/// What every call of one queue (partition) shares.
pub(super) struct Batcher {
    pub conn: Conn,
    pub script: Script,
    /// KEYS[1..4] of `ADMIT_LUA`: stream, counters, knobs, prequeue.
    pub keys: [String; 4],
    /// KEYS[5]: the events stream.
    pub events_key: String,
    /// KEYS[6]: the fair sale's quota hash.
    pub quota_key: String,
    /// The queue's name in events; `None`: events are off.
    pub events: Option<crate::backend::EventSettings>,
    /// Where the used proof-of-work seeds are recorded (`<base>:pow:`).
    pub pow_prefix: String,
    pub ttl_secs: u64,
    pub partitions: u32,
    pub partition: u32,
    /// `durability = replicated`: each call is followed by the wait for a
    /// replica, on `conn` — then a connection of the batcher's own, so the
    /// wait holds up no other command.
    pub replicated: Option<Replicated>,
}

/// One admission waiting for its batch.
pub(super) struct Item {
    pub ticket_key: String,
    pub idem_key: String,
    pub request: QueuedRequest,
    pub claim: Option<IdempotencyClaim>,
    pub limits: AdmitLimits,
    pub answer: oneshot::Sender<Result<Admit, QueueError>>,
}

/// Starts the batcher task; it ends when the sender is dropped. The channel
/// needs no bound of its own: each item is a request whose client waits for
/// the answer, and `--max-connections` bounds those.
pub(super) fn spawn(batcher: Batcher) -> mpsc::UnboundedSender<Item> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(rx, Arc::new(batcher)));
    tx
}

async fn run(mut rx: mpsc::UnboundedReceiver<Item>, batcher: Arc<Batcher>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // An admission under other shared limits than its batch's (a reload
    // came between them): it starts the next batch.
    let mut next: Option<Item> = None;
    loop {
        // The slot first: while all are taken, arrivals gather into the
        // next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match next.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let shared = Shared::of(&first.limits);
        let batch;
        (batch, next) = gather(first, shared, &mut rx);
        if batch.is_empty() {
            continue;
        }
        let batcher = batcher.clone();
        tokio::spawn(async move {
            batcher.call(shared, batch).await;
            drop(slot);
        });
    }
}

/// The batch `first` starts: the admissions waiting behind it, up to
/// `MAX_BATCH`, that share its limits; the first that does not is
/// returned to start the next batch. An admission whose client was
/// answered already (503 after `RESPONSE_TIMEOUT` while every slot waited
/// on a frozen Redis) is left out: it would store an entry nobody holds a
/// ticket for.
fn gather(
    first: Item,
    shared: Shared,
    rx: &mut mpsc::UnboundedReceiver<Item>,
) -> (Vec<Item>, Option<Item>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    batch.extend(Some(first).filter(Item::waited_for));
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(item) if !item.waited_for() => {}
            Ok(item) if Shared::of(&item.limits) != shared => return (batch, Some(item)),
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    (batch, None)
}

impl Batcher {
    /// One `ADMIT_LUA` call for `batch`; every item gets its answer, or the
    /// call's error (a timed-out call may still have been applied: clients
    /// retry with their Idempotency-Key).
    async fn call(&self, shared: Shared, batch: Vec<Item>) {
        let data: usize = batch
            .iter()
            .map(|i| {
                let r = &i.request;
                r.headers.len() + r.body.len() + r.path.len() + i.ticket_key.len() * 2 + 400
            })
            .sum();
        let mut cmd = Cmd::with_capacity(
            9 + ADMIT_BATCH_ARGS + batch.len() * (2 + ADMIT_ARGS),
            data + 256,
        );
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(self.keys.len() + 2 + 2 * batch.len())
            .arg(&self.keys[..])
            .arg(&self.events_key)
            .arg(&self.quota_key);
        for item in &batch {
            cmd.arg(&item.ticket_key).arg(&item.idem_key);
        }
        cmd.arg(self.ttl_secs)
            .arg(self.partitions)
            .arg(self.partition);
        // The events' queue and MINID threshold ('' = off).
        match &self.events {
            Some(e) => cmd.arg(&e.queue).arg(e.min_ms(crate::ticket::now_ms())),
            None => cmd.arg("").arg(""),
        };
        cmd.arg(&self.pow_prefix);
        shared.push_args(&mut cmd);
        for item in &batch {
            item.push_args(&mut cmd);
        }
        let mut conn = self.conn.clone();
        let answer = match &self.replicated {
            None => evalsha::<Vec<Value>>(&mut conn, &self.script, &cmd)
                .await
                .map_err(unavailable),
            Some(replicated) => self.call_replicated(replicated, &mut conn, cmd).await,
        };
        match answer {
            Ok(reply) => {
                let dispatched = reply.first().and_then(as_u64).unwrap_or(0);
                for (i, item) in batch.into_iter().enumerate() {
                    let answer = reply
                        .get(1 + i)
                        .ok_or_else(|| {
                            QueueError::Protocol(format!(
                                "admit script answered {} values for {} requests",
                                reply.len(),
                                i + 1
                            ))
                        })
                        .and_then(|v| outcome(v, dispatched));
                    // A client that went away does not take its answer.
                    let _ = item.answer.send(answer);
                }
            }
            Err(e) => {
                // Not acknowledged by a replica: the entries are stored on
                // the primary, and a retry with the same Idempotency-Key
                // meets its ticket.
                let e = e.to_string();
                for item in batch {
                    let _ = item.answer.send(Err(QueueError::Unavailable(e.clone())));
                }
            }
        }
    }
}

impl Batcher {
    /// The script call and the wait for a replica, in one pipeline.
    async fn call_replicated(
        &self,
        replicated: &Replicated,
        conn: &mut Conn,
        cmd: Cmd,
    ) -> Result<Vec<Value>, QueueError> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        let answers = match replicated.run(conn, &pipe).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await.map_err(unavailable)?;
                replicated.run(conn, &pipe).await
            }
            other => other,
        }
        .map_err(unavailable)?
        .ok_or_else(|| replicated.not_acknowledged())?;
        let reply = answers.into_iter().next().unwrap_or(Value::Nil);
        redis::from_redis_value(reply).map_err(|e| QueueError::Protocol(e.to_string()))
    }
}

impl Item {
    /// Whether the admission still waits for its answer.
    fn waited_for(&self) -> bool {
        !self.answer.is_closed()
    }

    /// This request's `ADMIT_ARGS` values, in `ADMIT_LUA`'s order.
    fn push_args(&self, cmd: &mut Cmd) {
        let r = &self.request;
        cmd.arg(r.ticket.as_str())
            .arg(r.admitted_at_ms)
            .arg(self.claim.as_ref().map_or("", |c| c.fingerprint.as_str()));
        match self.limits.prequeue {
            // A random place in line: arrival time inside the window gives
            // no advantage.
            Prequeue::Now => cmd.arg(format!(
                "{:.12}",
                getrandom::u64().unwrap_or(0) as f64 / u64::MAX as f64
            )),
            Prequeue::Configured => cmd.arg("-"),
            Prequeue::None => cmd.arg(""),
        };
        cmd.arg(&r.method)
            .arg(&r.path)
            .arg(&r.headers[..])
            .arg(&r.body[..])
            .arg(&r.client)
            .arg(&r.forwarded_for)
            .arg(&r.forwarded_proto)
            .arg(r.idempotency_key.as_deref().unwrap_or(""))
            .arg(r.product.as_deref().unwrap_or(""));
        optional(cmd, self.limits.fair.product_stock);
        match &self.limits.pow {
            Some(seed) => cmd.arg(seed.id_hex()).arg(seed.ttl.as_millis() as u64),
            None => cmd.arg("").arg(""),
        };
    }
}

/// The limits every admission of one call shares, passed once
/// (`ADMIT_BATCH_ARGS`): the queue's, not the request's. They change only
/// with a reload, and an admission under other ones starts a new call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shared {
    stock: Option<u64>,
    max_queue: u64,
    per_client: Option<u64>,
    per_client_product: Option<u64>,
    window_secs: u64,
    cancel_returns: bool,
}

impl Shared {
    fn of(limits: &AdmitLimits) -> Self {
        let FairLimits {
            per_client,
            per_client_product,
            window_secs,
            cancel_returns,
            product_stock: _,
        } = limits.fair;
        Shared {
            stock: limits.stock,
            max_queue: limits.max_queue,
            per_client,
            per_client_product,
            window_secs: window_secs.max(1),
            cancel_returns,
        }
    }

    /// The last six of `ADMIT_BATCH_ARGS`, in `ADMIT_LUA`'s order.
    fn push_args(&self, cmd: &mut Cmd) {
        optional(cmd, self.stock);
        cmd.arg(self.max_queue);
        optional(cmd, self.per_client);
        optional(cmd, self.per_client_product);
        cmd.arg(self.window_secs)
            .arg(if self.cancel_returns { "1" } else { "0" });
    }
}

/// A count, or '' for none.
fn optional(cmd: &mut Cmd, n: Option<u64>) {
    match n {
        Some(n) => cmd.arg(n),
        None => cmd.arg(""),
    };
}

/// One request's value in the script's answer: its sequence number when
/// admitted, else what happened instead.
fn outcome(v: &Value, dispatched: u64) -> Result<Admit, QueueError> {
    let v = match v {
        Value::Int(seq) => {
            return Ok(Admit::Admitted {
                seq: (*seq).max(0) as u64,
                dispatched,
            })
        }
        Value::Array(v) => v.as_slice(),
        other => {
            return Err(QueueError::Protocol(format!(
                "admit script answered {other:?}"
            )))
        }
    };
    let word = v.first().map(as_string).unwrap_or_default();
    let int = |i: usize| v.get(i).and_then(as_u64).unwrap_or(0);
    match word.as_str() {
        "replayed" => {
            let id = v.get(1).map(as_string).unwrap_or_default();
            let ticket = TicketId::parse(&id)
                .ok_or_else(|| QueueError::Protocol(format!("stored ticket id `{id}`")))?
                .0;
            Ok(Admit::Replayed {
                ticket,
                seq: int(2),
                dispatched,
            })
        }
        "reused" => Ok(Admit::KeyReused),
        "full" => Ok(Admit::QueueFull { depth: int(1) }),
        "sold_out" => Ok(Admit::SoldOut),
        "product_sold_out" => Ok(Admit::ProductSoldOut),
        "quota" => Ok(Admit::QuotaExceeded),
        "pow_reused" => Ok(Admit::PowReused),
        other => Err(QueueError::Protocol(format!("admit script said `{other}`"))),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn item(max_queue: u64) -> (Item, oneshot::Receiver<Result<Admit, QueueError>>) {
        let (answer, rx) = oneshot::channel();
        let request = QueuedRequest {
            ticket: TicketId::generate(crate::ticket::QueueTag::of("q")),
            method: "POST".into(),
            path: "/checkout".into(),
            headers: Bytes::new(),
            body: Bytes::new(),
            idempotency_key: None,
            client: "c".into(),
            forwarded_for: String::new(),
            forwarded_proto: "http".into(),
            admitted_at_ms: 0,
            product: None,
        };
        let limits = AdmitLimits {
            max_queue,
            stock: None,
            prequeue: Prequeue::None,
            fair: Default::default(),
            pow: None,
        };
        let item = Item {
            ticket_key: String::new(),
            idem_key: String::new(),
            request,
            claim: None,
            limits,
            answer,
        };
        (item, rx)
    }

    #[test]
    fn a_batch_holds_only_admissions_under_its_limits() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut answers = Vec::new();
        for max_queue in [10, 10, 20, 20, 10] {
            let (item, answer) = item(max_queue);
            tx.send(item).unwrap();
            answers.push(answer);
        }
        // A client that went away is left out, whatever its limits.
        let (gone, answer) = item(10);
        drop(answer);
        let first = rx.try_recv().unwrap();
        tx.send(gone).unwrap();

        let shared = Shared::of(&first.limits);
        let (batch, next) = gather(first, shared, &mut rx);
        let limits = |b: &[Item]| b.iter().map(|i| i.limits.max_queue).collect::<Vec<_>>();
        assert_eq!(limits(&batch), [10, 10]);
        let next = next.expect("the admission under a reloaded limit starts the next batch");
        assert_eq!(next.limits.max_queue, 20);

        let shared = Shared::of(&next.limits);
        let (batch, next) = gather(next, shared, &mut rx);
        assert_eq!(limits(&batch), [20, 20]);
        let next = next.unwrap();
        let shared = Shared::of(&next.limits);
        let (batch, next) = gather(next, shared, &mut rx);
        assert_eq!(
            limits(&batch),
            [10],
            "the departed client's admission is not sent"
        );
        assert!(next.is_none());
    }

    #[test]
    fn a_batch_is_at_most_max_batch() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut answers = Vec::new();
        for _ in 0..MAX_BATCH + 3 {
            let (item, answer) = item(10);
            tx.send(item).unwrap();
            answers.push(answer);
        }
        let first = rx.try_recv().unwrap();
        let shared = Shared::of(&first.limits);
        let (batch, next) = gather(first, shared, &mut rx);
        assert_eq!(batch.len(), MAX_BATCH);
        assert!(next.is_none());
        assert_eq!(rx.len(), 3);
    }
}
