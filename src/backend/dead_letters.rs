//! Dead letters: the requests the drain gave up on (attempts exhausted, an
//! entry it could not read), kept whole so an operator can look at them,
//! put them back in line once the order service is fixed, or discard them.
//!
//! A dead letter is written by [`super::Line::fail`] in the same step that
//! fails its ticket. Replaying one puts the stored request back in line
//! under its own ticket (the upstream gets the same `Idempotency-Key`, the
//! ticket id), the ticket back to `queued` with no attempts, and removes
//! the dead letter — in one atomic step, so two replays of one dead letter
//! deliver once: the second finds it gone.
//!
//! The counters stay right: a replayed entry takes the next sequence
//! number (the back of the line) and counts in `replayed`, not in
//! `admitted`, so it holds a place in the depth (`admitted + replayed -
//! dispatched`) and in the capacity, but spends no stock: its admission
//! spent its unit, and the order it stands for was never placed.

use async_trait::async_trait;
use serde::Serialize;

use super::{QueueError, QueuedRequest};
use crate::ticket::TicketId;

/// One dead letter as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its id: a stream id `<ms>-<seq>` (`<partition>:<ms>-<seq>` for a
    /// partitioned queue).
    pub id: String,
    /// Why the drain gave up (`upstream_unavailable`, `corrupt_entry`,
    /// `entry_deleted`), as the ticket's `error`.
    pub code: String,
    pub detail: String,
    /// Attempts the ticket had when it failed (`None`: not known — its
    /// ticket had expired, or it was written by an older version).
    pub attempts: Option<u32>,
    /// When it was dead-lettered, ms since the epoch.
    pub failed_at_ms: u64,
    /// The request, whole; `None` when the entry could not be read (such a
    /// dead letter can be discarded, not replayed).
    pub request: Option<QueuedRequest>,
}

/// What to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadQuery {
    /// A `next` cursor from an earlier page: go on after it.
    pub after: Option<String>,
    /// Only dead letters with this `code`.
    pub code: Option<String>,
    /// At most this many (at least 1).
    pub limit: usize,
    /// Oldest first (bulk actions, so replays keep their order in line);
    /// else newest first (what an operator wants to see).
    pub oldest_first: bool,
}

/// One page of dead letters.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadPage {
    pub dead_letters: Vec<DeadLetter>,
    /// Where the next page starts (as `after`), `None` at the end. A page
    /// filtered by code may come back short, even empty, with a cursor.
    pub next: Option<String>,
}

/// The answer to a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Back in line; the ticket is `queued` again.
    Replayed { ticket: TicketId },
    /// No such dead letter: never was, discarded, or replayed already.
    NotFound,
    /// It stays a dead letter, and this says why: it kept no readable
    /// request, its ticket is not `failed` (the upstream answered it after
    /// all), or the queue is sold out (it would fail unsent).
    Refused(String),
}

/// The answer to a discard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    /// Removed; the ticket (if it kept one) stays `failed`.
    Discarded { ticket: Option<TicketId> },
    /// No such dead letter.
    NotFound,
}

/// Entries looked at for one page at most when a code filter skips most
/// of them: the page may come back short with a cursor past them.
pub const DEAD_SCAN_BUDGET: usize = 10_000;

/// The dead letters of one queue.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Called for `GET /admin/queues/{q}/dead-letters` and bulk actions: a
    /// page in the query's order, without waiting.
    async fn list_dead(&self, query: &DeadQuery) -> Result<DeadPage, QueueError>;

    /// Called for `GET …/dead-letters/{id}`: one, `None` when unknown
    /// (also for an id that is not one of this backend's).
    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, QueueError>;

    /// Called for `POST …/dead-letters/{id}/replay`: puts the request back
    /// in line (see the module's doc) and writes the `replayed` event with
    /// `actor`, in one atomic step with removing the dead letter.
    async fn replay_dead(&self, id: &str, actor: &str) -> Result<Replay, QueueError>;

    /// Called for `DELETE …/dead-letters/{id}`: removes it, with its
    /// `discarded` event naming `actor`, in one step.
    async fn discard_dead(&self, id: &str, actor: &str) -> Result<Discard, QueueError>;

    /// Called every second by the queue's upkeep for the
    /// `flashgate_dead_letters` gauge: how many there are, cheaply.
    async fn count_dead(&self) -> Result<u64, QueueError>;
}

/// What a bulk action does to each dead letter it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    Replay,
    Discard,
}

/// What a bulk action did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BulkOutcome {
    /// Dead letters replayed (or discarded).
    pub done: u64,
    /// Those left as they were, each `{id, why}`.
    pub refused: Vec<Refusal>,
    /// More may match: call again with this as `after`. `None`: none left.
    pub next: Option<String>,
}

/// A dead letter a bulk replay left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub id: String,
    pub why: String,
}

/// Replays or discards the dead letters with `code`, oldest first (replays
/// keep their order in line), at most `limit` per call, after the cursor
/// `after`, and none dead-lettered after `until_ms` (a pass started then
/// ends there: a replay that fails again is not taken again by the same
/// pass). Each one is its own atomic step: one that a concurrent call
/// took first is skipped, never done twice.
pub async fn bulk(
    dead: &dyn DeadLetters,
    code: &str,
    action: BulkAction,
    limit: usize,
    after: Option<String>,
    until_ms: u64,
    actor: &str,
) -> Result<BulkOutcome, QueueError> {
    let page = dead
        .list_dead(&DeadQuery {
            after,
            code: Some(code.to_string()),
            limit: limit.max(1),
            oldest_first: true,
        })
        .await?;
    let mut out = BulkOutcome {
        next: page.next,
        ..BulkOutcome::default()
    };
    for letter in page.dead_letters {
        if letter.failed_at_ms > until_ms {
            out.next = None;
            break;
        }
        match action {
            BulkAction::Replay => match dead.replay_dead(&letter.id, actor).await? {
                Replay::Replayed { .. } => out.done += 1,
                Replay::NotFound => {}
                Replay::Refused(why) => out.refused.push(Refusal { id: letter.id, why }),
            },
            BulkAction::Discard => {
                if let Discard::Discarded { .. } = dead.discard_dead(&letter.id, actor).await? {
                    out.done += 1;
                }
            }
        }
    }
    Ok(out)
}

/// A stream id, `<ms>-<seq>`, exactly (no shorthand): what a dead letter id
/// must be before it goes near Redis.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_whole_stream_ids() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        for bad in [
            "",
            "5",
            "5-",
            "-5",
            "a-1",
            "1-b",
            "1-2-3",
            "+",
            "(1-0",
            "99999999999999999999999-0",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
