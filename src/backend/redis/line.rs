//! The Redis line: admission (batched, `admit.rs`), delivery through the
//! consumer group (`group.rs`), attempts, and the end of each entry.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use redis::streams::{StreamInfoGroupsReply, StreamRangeReply};
use redis::{ErrorKind, Script, ServerErrorKind};
use tracing::warn;

use super::dead::DEAD_LUA;
use super::schema::{
    ClaimField, CounterField, EntryField, EventField, TicketField, ENTRY_VERSION, GROUP,
};
use super::scripts::FINISH_LUA;
use super::{admit, evalsha_pipe, is_oom, reply, unavailable, RedisQueue, RESPONSE_TIMEOUT};
use crate::backend::{
    Admit, AdmitLimits, AttemptStart, Delivery, IdempotencyClaim, Line, QueueError, QueueStats,
    QueuedRequest, StreamReport,
};
use crate::ticket::{now_ms, StoredResponse, TicketError, TicketId, TicketStatus};

impl RedisQueue {
    /// The entry fields under the names `ADMIT_LUA` gives them in the
    /// stream, for a dead letter that keeps the whole request.
    fn entry_fields(r: &QueuedRequest) -> [(&'static str, &[u8]); 12] {
        [
            (EntryField::VERSION, ENTRY_VERSION.as_bytes()),
            (EntryField::TICKET, r.ticket.as_str().as_bytes()),
            (EntryField::METHOD, r.method.as_bytes()),
            (EntryField::PATH, r.path.as_bytes()),
            (EntryField::HEADERS, &r.headers),
            (EntryField::BODY, &r.body),
            (EntryField::CLIENT, r.client.as_bytes()),
            (EntryField::FORWARDED_FOR, r.forwarded_for.as_bytes()),
            (EntryField::FORWARDED_PROTO, r.forwarded_proto.as_bytes()),
            (EntryField::ADMITTED_AT, b""), // replaced below: admitted-at is a number
            (
                EntryField::IDEMPOTENCY_KEY,
                r.idempotency_key.as_deref().unwrap_or("").as_bytes(),
            ),
            // Empty: none (read back as none).
            (
                EntryField::PRODUCT,
                r.product.as_deref().unwrap_or("").as_bytes(),
            ),
        ]
    }

    /// `FINISH_LUA` for the ticket of `delivery`: its final `status` with
    /// the ticket `fields`, and the terminal event with its own `event`
    /// fields — unless it has ended before — and the entry acknowledged.
    /// By `EVALSHA` when `by_hash` (run alone, loaded on `NOSCRIPT` by
    /// [`RedisQueue::record_script`]), else by `EVAL` (a transaction cannot
    /// load a script it misses).
    fn finish(
        &self,
        delivery: &Delivery,
        ticket: &TicketId,
        status: TicketStatus,
        fields: &[(&str, &[u8])],
        event: &[(&str, &str)],
        by_hash: bool,
    ) -> redis::Cmd {
        let (queue, min_id) = self.event_args();
        let mut cmd = if by_hash {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.finish_script.get_hash());
            cmd
        } else {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(FINISH_LUA);
            cmd
        };
        cmd.arg(3)
            .arg(self.keys.ticket(ticket))
            .arg(&self.keys.events)
            .arg(&self.keys.stream)
            .arg(status.as_str())
            .arg(now_ms())
            .arg(self.ttl_secs)
            .arg(&self.keys.changes)
            .arg(ticket.as_str())
            .arg(queue)
            .arg(min_id)
            .arg(GROUP)
            .arg(&delivery.entry_id)
            .arg(fields.len());
        for (name, value) in fields {
            cmd.arg(*name).arg(*value);
        }
        for (name, value) in event {
            cmd.arg(*name).arg(*value);
        }
        cmd
    }

    /// [`RedisQueue::record`] of `pipeline`, which calls `script` by
    /// `EVALSHA`: the script is loaded and the write made again when the
    /// server does not know it (a restart, a failover, `SCRIPT FLUSH`).
    async fn record_script(
        &self,
        entry_id: &str,
        script: &Script,
        pipeline: &redis::Pipeline,
    ) -> redis::RedisResult<bool> {
        match self.record(entry_id, pipeline).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let mut conn = match &self.replicated {
                    Some(recording) => recording.conn.clone(),
                    None => self.conn.clone(),
                };
                script.load_async(&mut conn).await?;
                self.record(entry_id, pipeline).await
            }
            other => other,
        }
    }
}

#[async_trait]
impl Line for RedisQueue {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn admit(
        &self,
        request: QueuedRequest,
        claim: Option<IdempotencyClaim>,
        limits: AdmitLimits,
    ) -> Result<Admit, QueueError> {
        let batches = self.admissions.get_or_init(|| {
            admit::spawn(admit::Batcher {
                conn: self.admit_conn.clone(),
                script: self.admit_script.clone(),
                keys: [
                    self.keys.stream.clone(),
                    self.keys.counters.clone(),
                    self.keys.knobs.clone(),
                    self.keys.prequeue.clone(),
                ],
                events_key: self.keys.events.clone(),
                quota_key: self.keys.quota.clone(),
                events: self.events.clone(),
                pow_prefix: self.keys.pow_prefix.clone(),
                ttl_secs: self.ttl_secs,
                partitions: self.partitions,
                partition: self.partition,
                replicated: self.replicated.as_ref().map(|r| r.wait.clone()),
            })
        });
        let idem_key = match &claim {
            Some(c) => self.keys.claim(&c.key),
            None => self.keys.claim("-"),
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
        let ((ticket, fingerprint, seq), dispatched): (
            (Option<String>, Option<String>, Option<u64>),
            Option<u64>,
        ) = redis::pipe()
            .cmd("HMGET")
            .arg(self.keys.claim(&claim.key))
            .arg(&[ClaimField::TICKET, ClaimField::FINGERPRINT, ClaimField::SEQ])
            .hget(&self.keys.counters, CounterField::DISPATCHED)
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

    async fn next(&self, block: Duration, max: usize) -> Result<Vec<Delivery>, QueueError> {
        self.next_entries(block, max).await
    }

    async fn maintain(&self, claim_idle: Duration) -> Result<(), QueueError> {
        self.maintain_claims(claim_idle).await
    }

    async fn tend_stream(&self, retention: Duration) -> Result<StreamReport, QueueError> {
        self.trim_stream(Some(retention)).await
    }

    async fn start_attempt(&self, delivery: &Delivery) -> Result<AttemptStart, QueueError> {
        let (ticket_key, ticket) = match &delivery.request {
            Ok(r) => (self.keys.ticket(&r.ticket), r.ticket.as_str()),
            Err(_) => (format!("{}-", self.keys.ticket_prefix), ""),
        };
        let mut conn = self.conn.clone();
        let (queue, min_id) = self.event_args();
        let attempt: i64 = self
            .start_script
            .key(ticket_key)
            .key(&self.keys.counters)
            .key(&self.keys.stream)
            .key(&self.keys.events)
            .key(format!("{}{ticket}", self.keys.expired_prefix))
            .arg(if delivery.fresh { "1" } else { "0" })
            .arg(&self.keys.changes)
            .arg(ticket)
            .arg(&delivery.entry_id)
            .arg(GROUP)
            .arg(queue)
            .arg(min_id)
            .arg(now_ms())
            .arg(self.ttl_secs)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(match attempt {
            -2 => {
                self.release(&delivery.entry_id);
                AttemptStart::Cancelled
            }
            n => u32::try_from(n).map_or(AttemptStart::Untracked, AttemptStart::Counted),
        })
    }

    async fn complete(
        &self,
        delivery: &Delivery,
        response: &StoredResponse,
    ) -> Result<(), QueueError> {
        let mut record = redis::pipe();
        match &delivery.request {
            Ok(request) => {
                // The ticket's result and its `completed` event, once, and
                // the entry acknowledged, in one script.
                let status = response.status.to_string();
                let finish = self.finish(
                    delivery,
                    &request.ticket,
                    TicketStatus::Completed,
                    &[
                        (TicketField::RESPONSE_STATUS, status.as_bytes()),
                        (TicketField::RESPONSE_HEADERS, response.headers.as_ref()),
                        (TicketField::RESPONSE_BODY, response.body.as_ref()),
                    ],
                    &[(EventField::STATUS, &status)],
                    true,
                );
                record.add_command(finish).ignore();
            }
            Err(_) => self.ack(&mut record, &delivery.entry_id),
        }
        let mut conn = self.conn.clone();
        match (self.record_script(&delivery.entry_id, &self.finish_script, &record)).await {
            Ok(true) => {}
            Ok(false) => return Err(self.not_acknowledged()),
            Err(e) if is_oom(&e) => {
                // Out of memory: writes are refused, but XACK and XTRIM are
                // not, and the trim frees the entries every consumer group
                // is done with. The request has reached the upstream:
                // acknowledge and trim first, record the result when Redis
                // can (the drain retries until it can).
                warn!(stream = %self.keys.stream,
                    "Redis is out of memory: acknowledging before recording the result");
                let mut ack = redis::pipe();
                self.ack(&mut ack, &delivery.entry_id);
                ack.query_async::<()>(&mut conn)
                    .await
                    .map_err(unavailable)?;
                self.release(&delivery.entry_id);
                self.trim_stream(None).await?;
                return evalsha_pipe(&mut conn, &self.finish_script, &record)
                    .await
                    .map_err(unavailable);
            }
            Err(e) => return Err(unavailable(e)),
        }
        self.release(&delivery.entry_id);
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
            pipe.hincr(&self.keys.counters, CounterField::DISPATCHED, 1)
                .ignore();
        }
        // The dead letter, with the ticket's attempts read in the script.
        let ticket_key = match &delivery.request {
            Ok(r) => self.keys.ticket(&r.ticket),
            Err(_) => format!("{}-", self.keys.ticket_prefix),
        };
        let mut xadd = redis::cmd("EVAL");
        xadd.arg(DEAD_LUA)
            .arg(3)
            .arg(&self.keys.dead)
            .arg(ticket_key)
            .arg(&self.keys.stream)
            .arg(&delivery.entry_id)
            .arg(GROUP)
            .arg(&error.code)
            .arg(&error.detail);
        if let Ok(request) = &delivery.request {
            let admitted_at = request.admitted_at_ms.to_string();
            for (name, value) in Self::entry_fields(request) {
                let value = if name == EntryField::ADMITTED_AT {
                    admitted_at.as_bytes()
                } else {
                    value
                };
                xadd.arg(name).arg(value);
            }
        }
        // `DEAD_LUA` acknowledges the entry first and writes only if that
        // took it off the pending list, so it goes before `FINISH_LUA`,
        // which acknowledges it too.
        if dead_letter {
            pipe.add_command(xadd).ignore();
        }
        match &delivery.request {
            Ok(request) => {
                // The ticket's error and its `failed` event, once.
                let finish = self.finish(
                    delivery,
                    &request.ticket,
                    TicketStatus::Failed,
                    &[
                        (TicketField::ERROR_CODE, error.code.as_bytes()),
                        (TicketField::ERROR_DETAIL, error.detail.as_bytes()),
                    ],
                    &[
                        (EventField::CODE, &error.code),
                        (EventField::DETAIL, &error.detail),
                    ],
                    false,
                );
                pipe.add_command(finish).ignore();
            }
            Err(_) if !dead_letter => self.ack(&mut pipe, &delivery.entry_id),
            Err(_) => {}
        }
        if !self
            .record(&delivery.entry_id, &pipe)
            .await
            .map_err(unavailable)?
        {
            return Err(self.not_acknowledged());
        }
        self.release(&delivery.entry_id);
        Ok(())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        // XINFO fails on a stream not yet made: one with no entries is not
        // a lost backend.
        self.ensure_group().await?;
        let mut conn = self.conn.clone();
        let (counters, groups): (
            (Option<u64>, Option<u64>, Option<u64>, Option<u64>),
            StreamInfoGroupsReply,
        ) = redis::pipe()
            .cmd("HMGET")
            .arg(&self.keys.counters)
            .arg(CounterField::ADMITTED)
            .arg(CounterField::DISPATCHED)
            .arg(CounterField::REPLAYED)
            .arg(CounterField::RETURNED)
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.keys.stream)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let (admitted, dispatched) = (counters.0.unwrap_or(0), counters.1.unwrap_or(0));
        // Replayed dead letters are back in line without a new admission.
        let replayed = counters.2.unwrap_or(0);
        let (pending, last_delivered) = groups
            .groups
            .into_iter()
            .find(|g| g.name == GROUP)
            .map_or((0, "0-0".into()), |g| {
                (g.pending as u64, g.last_delivered_id)
            });
        // The oldest undispatched entry is the first after the group's
        // last-delivered id; its id holds its admission time in ms.
        let next: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.keys.stream)
            .arg(format!("({last_delivered}"))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let oldest_age = next
            .ids
            .first()
            .and_then(|entry| reply::id_ms(&entry.id))
            .map(|ms| Duration::from_millis(now_ms().saturating_sub(ms)));
        Ok(QueueStats {
            depth: (admitted + replayed).saturating_sub(dispatched),
            in_flight: pending,
            oldest_age,
            admitted,
            dispatched,
            returned: counters.3.unwrap_or(0),
        })
    }

    async fn products_sold(&self) -> Result<BTreeMap<String, u64>, QueueError> {
        let mut conn = self.conn.clone();
        let counters: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.keys.counters)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((counters.into_iter())
            .filter_map(|(field, n)| {
                let product = field.strip_prefix(CounterField::SOLD_PREFIX)?;
                Some((product.to_string(), n.parse().ok()?))
            })
            .collect())
    }
}
