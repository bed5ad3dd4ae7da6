//! The embedded dead letters: kept in the queue's state with ids like a
//! stream's (`<ms>-<seq>`), replayed and discarded under the same lock as
//! every other change, so a dead letter is taken once.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::time::Instant;

use super::MemoryQueue;
use crate::backend::dead_letters::{parse_id, DEAD_SCAN_BUDGET};
use crate::backend::{
    DeadLetter, DeadLetters, DeadPage, DeadQuery, Discard, QueueError, QueuedRequest, Replay,
};
use crate::ticket::{now_ms, TicketError, TicketRecord, TicketStatus};

/// One dead letter as kept.
#[derive(Clone)]
struct Kept {
    request: Option<QueuedRequest>,
    error: TicketError,
    attempts: Option<u32>,
}

/// The dead letters of one embedded queue, by id.
#[derive(Default)]
pub(super) struct DeadBuf {
    kept: BTreeMap<(u64, u64), Kept>,
    last: (u64, u64),
}

impl DeadBuf {
    /// Keeps one, under the next id.
    pub fn push(
        &mut self,
        request: Option<QueuedRequest>,
        error: TicketError,
        attempts: Option<u32>,
    ) {
        let now = now_ms();
        // Like an `XADD *` id: the time, made to grow.
        self.last = if now > self.last.0 {
            (now, 0)
        } else {
            (self.last.0, self.last.1 + 1)
        };
        let kept = Kept {
            request,
            error,
            attempts,
        };
        self.kept.insert(self.last, kept);
    }

    /// The requests kept, oldest first.
    pub fn requests(&self) -> Vec<(QueuedRequest, TicketError)> {
        self.kept
            .values()
            .filter_map(|k| Some((k.request.clone()?, k.error.clone())))
            .collect()
    }

    fn letter(id: (u64, u64), kept: &Kept) -> DeadLetter {
        DeadLetter {
            id: format!("{}-{}", id.0, id.1),
            code: kept.error.code.clone(),
            detail: kept.error.detail.clone(),
            attempts: kept.attempts,
            failed_at_ms: id.0,
            request: kept.request.clone(),
        }
    }

    fn page(&self, query: &DeadQuery) -> Result<DeadPage, QueueError> {
        let after = match &query.after {
            Some(a) => Some(
                parse_id(a)
                    .ok_or_else(|| QueueError::Protocol(format!("bad dead-letter cursor `{a}`")))?,
            ),
            None => None,
        };
        let limit = query.limit.max(1);
        let ids: Box<dyn Iterator<Item = (&(u64, u64), &Kept)>> = match (query.oldest_first, after)
        {
            (true, Some(a)) => Box::new(
                self.kept
                    .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            (true, None) => Box::new(self.kept.iter()),
            (false, Some(a)) => Box::new(self.kept.range(..a).rev()),
            (false, None) => Box::new(self.kept.iter().rev()),
        };
        let mut out = Vec::new();
        let mut last = None;
        let mut more = false;
        for (scanned, (id, kept)) in ids.enumerate() {
            if out.len() == limit || scanned == DEAD_SCAN_BUDGET {
                more = true;
                break;
            }
            last = Some(*id);
            if query.code.as_ref().is_none_or(|c| *c == kept.error.code) {
                out.push(Self::letter(*id, kept));
            }
        }
        Ok(DeadPage {
            dead_letters: out,
            next: last.filter(|_| more).map(|(ms, seq)| format!("{ms}-{seq}")),
        })
    }
}

#[async_trait]
impl DeadLetters for MemoryQueue {
    async fn list_dead(&self, query: &DeadQuery) -> Result<DeadPage, QueueError> {
        self.lock().dead.page(query)
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        let Some(key) = parse_id(id) else {
            return Ok(None);
        };
        let s = self.lock();
        Ok(s.dead.kept.get(&key).map(|k| DeadBuf::letter(key, k)))
    }

    async fn replay_dead(&self, id: &str, actor: &str) -> Result<Replay, QueueError> {
        let Some(key) = parse_id(id) else {
            return Ok(Replay::NotFound);
        };
        let mut s = self.lock();
        let Some(kept) = s.dead.kept.get(&key) else {
            return Ok(Replay::NotFound);
        };
        let Some(request) = kept.request.clone() else {
            let why = format!(
                "it kept no readable request ({}): discard it",
                kept.error.code
            );
            return Ok(Replay::Refused(why));
        };
        if s.knobs.sold_out {
            let why = "the queue is sold out: the replay would fail unsent";
            return Ok(Replay::Refused(why.into()));
        }
        let now = Instant::now();
        let status = s
            .tickets
            .get(&request.ticket)
            .filter(|(_, expires)| *expires > now)
            .map(|(record, _)| record.status);
        if let Some(status) = status.filter(|st| *st != TicketStatus::Failed) {
            let why = format!("its ticket is {}, not failed", status.as_str());
            return Ok(Replay::Refused(why));
        }
        s.dead.kept.remove(&key);
        // The back of the line, counted in `replayed`: no stock is spent.
        s.replayed += 1;
        let ticket = request.ticket.clone();
        let admitted_at_ms = request.admitted_at_ms;
        let seq = s.enqueue(request, None);
        let record = TicketRecord {
            status: TicketStatus::Queued,
            seq,
            attempts: 0,
            admitted_at_ms,
            completed_at_ms: None,
            response: None,
            error: None,
        };
        s.tickets.insert(ticket.clone(), (record, now + self.ttl));
        let fields = [
            ("dead_letter", id.to_string()),
            ("actor", actor.to_string()),
        ];
        s.events
            .record("replayed", now_ms(), Some(&ticket), &fields);
        drop(s);
        self.arrived.notify_one();
        self.changed(&ticket);
        Ok(Replay::Replayed { ticket })
    }

    async fn discard_dead(&self, id: &str, actor: &str) -> Result<Discard, QueueError> {
        let Some(key) = parse_id(id) else {
            return Ok(Discard::NotFound);
        };
        let mut s = self.lock();
        let Some(kept) = s.dead.kept.remove(&key) else {
            return Ok(Discard::NotFound);
        };
        let ticket = kept.request.map(|r| r.ticket);
        let fields = [
            ("dead_letter", id.to_string()),
            ("code", kept.error.code),
            ("actor", actor.to_string()),
        ];
        s.events
            .record("discarded", now_ms(), ticket.as_ref(), &fields);
        Ok(Discard::Discarded { ticket })
    }

    async fn count_dead(&self) -> Result<u64, QueueError> {
        Ok(self.lock().dead.kept.len() as u64)
    }
}
