//! Dead letters of a partitioned queue: each partition keeps its own (in
//! the step that fails a ticket there); reads merge them by id. A dead
//! letter's id is `<partition>:<ms>-<seq>`; a cursor is every partition's,
//! comma-separated, each an id to go on after, `^` for "from the start"
//! or `.` for "read to its end".

use std::cmp::Reverse;

use async_trait::async_trait;

use super::Partitioned;
use crate::backend::dead_letters::parse_id;
use crate::backend::{
    DeadLetter, DeadLetters, DeadPage, DeadQuery, Discard, QueueBackend, QueueError, Replay,
};

/// A partition's cursor before its first page.
const START: &str = "^";
/// A partition's cursor once read to its end.
const END: &str = ".";

impl Partitioned {
    /// The partition and its own id of `<partition>:<id>`.
    fn dead_part(&self, id: &str) -> Option<(&dyn QueueBackend, String)> {
        let (p, inner) = id.split_once(':')?;
        let p: usize = p.parse().ok()?;
        parse_id(inner)?;
        Some((self.parts.get(p)?.as_ref(), inner.to_string()))
    }

    fn dead_cursors(&self, after: Option<&str>) -> Result<Vec<String>, QueueError> {
        let Some(after) = after else {
            return Ok(vec![START.to_string(); self.parts.len()]);
        };
        let cursors: Vec<String> = after.split(',').map(str::to_string).collect();
        let valid = |c: &String| c == START || c == END || parse_id(c).is_some();
        if cursors.len() != self.parts.len() || !cursors.iter().all(valid) {
            return Err(QueueError::Protocol(format!(
                "bad dead-letter cursor `{after}`"
            )));
        }
        Ok(cursors)
    }
}

/// A dead letter of partition `p`, under the queue-wide id.
fn named(p: usize, mut letter: DeadLetter) -> DeadLetter {
    letter.id = format!("{p}:{}", letter.id);
    letter
}

#[async_trait]
impl DeadLetters for Partitioned {
    async fn list_dead(&self, query: &DeadQuery) -> Result<DeadPage, QueueError> {
        let cursors = self.dead_cursors(query.after.as_deref())?;
        let limit = query.limit.max(1);
        // Every partition's first `limit` in the query's order.
        let mut pages = Vec::with_capacity(self.parts.len());
        for (part, cursor) in self.parts.iter().zip(&cursors) {
            if cursor == END {
                pages.push(None);
                continue;
            }
            let q = DeadQuery {
                after: (cursor != START).then(|| cursor.clone()),
                ..query.clone()
            };
            pages.push(Some(part.list_dead(&q).await?));
        }
        // Then the first `limit` of them all.
        let mut all: Vec<((u64, u64), usize, usize)> = Vec::new();
        for (i, page) in pages.iter().enumerate() {
            for (j, letter) in page.iter().flat_map(|p| p.dead_letters.iter().enumerate()) {
                all.push((parse_id(&letter.id).unwrap_or_default(), i, j));
            }
        }
        if query.oldest_first {
            all.sort();
        } else {
            all.sort_by_key(|&(id, i, _)| (Reverse(id), i));
        }
        all.truncate(limit);
        let mut taken: Vec<Option<usize>> = vec![None; pages.len()];
        for &(_, i, j) in &all {
            taken[i] = Some(taken[i].map_or(j, |t| t.max(j)));
        }
        let mut next = Vec::with_capacity(pages.len());
        for (i, page) in pages.iter().enumerate() {
            let Some(page) = page else {
                next.push(END.to_string());
                continue;
            };
            next.push(match taken[i] {
                // Every one it gave went out: on from where it stopped.
                Some(j) if j + 1 == page.dead_letters.len() => {
                    page.next.clone().unwrap_or_else(|| END.into())
                }
                Some(j) => page.dead_letters[j].id.clone(),
                None if page.dead_letters.is_empty() => {
                    page.next.clone().unwrap_or_else(|| END.into())
                }
                None => cursors[i].clone(),
            });
        }
        let mut pages: Vec<Vec<Option<DeadLetter>>> = pages
            .into_iter()
            .map(|p| p.map_or_else(Vec::new, |p| p.dead_letters.into_iter().map(Some).collect()))
            .collect();
        let dead_letters = all
            .into_iter()
            .filter_map(|(_, i, j)| pages[i][j].take().map(|l| named(i, l)))
            .collect();
        let done = next.iter().all(|c| c == END);
        Ok(DeadPage {
            dead_letters,
            next: (!done).then(|| next.join(",")),
        })
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        let Some((part, inner)) = self.dead_part(id) else {
            return Ok(None);
        };
        let p = id
            .split_once(':')
            .map_or(0, |(p, _)| p.parse().unwrap_or(0));
        Ok(part.dead_letter(&inner).await?.map(|l| named(p, l)))
    }

    async fn replay_dead(&self, id: &str, actor: &str) -> Result<Replay, QueueError> {
        // A dead letter lives in its ticket's partition: the replay puts
        // it back in that partition's line, where its ticket is.
        match self.dead_part(id) {
            Some((part, inner)) => part.replay_dead(&inner, actor).await,
            None => Ok(Replay::NotFound),
        }
    }

    async fn discard_dead(&self, id: &str, actor: &str) -> Result<Discard, QueueError> {
        match self.dead_part(id) {
            Some((part, inner)) => part.discard_dead(&inner, actor).await,
            None => Ok(Discard::NotFound),
        }
    }

    async fn count_dead(&self) -> Result<u64, QueueError> {
        let mut total = 0;
        for part in &self.parts {
            total += part.count_dead().await?;
        }
        Ok(total)
    }
}
