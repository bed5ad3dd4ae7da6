//! Sharing the work stream with other consumer groups: an entry leaves the
//! stream once every group on it is done with it, or once it is older than
//! `stream_retention` and our own group is done with it — never before our
//! own group is.
//!
//! Redis 7.0 has no `XACKDEL`, so finishing an entry only acknowledges it
//! (`XACK`), and this trim, run every second by the queue's upkeep, removes
//! the finished prefix of the stream with `XTRIM MINID`. A group is done
//! with every entry below its oldest pending entry (`XPENDING`), or, when
//! nothing is pending, with every entry up to its last-delivered id
//! (`XINFO GROUPS`). The trim is exact (`=`, not `~`): `~` would only trim
//! less, never an entry our group still needs, but it leaves up to a radix
//! node of finished entries behind, so an idle stream would not empty.
//!
//! The positions are read before the trim, not in one atomic step, and that
//! is safe: a group's done-below point only moves forward (new deliveries
//! are always above the last-delivered id, acknowledgements only shrink the
//! pending list), so a point read a moment ago is at most too cautious.

use std::time::Duration;

use redis::streams::{StreamInfoGroup, StreamInfoGroupsReply, StreamPendingReply};

use super::schema::GROUP;
use super::{unavailable, RedisQueue};
use crate::backend::{GroupLag, QueueError, StreamReport, MAX_REPORTED_GROUPS};
use crate::ticket::now_ms;

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// `<ms>-<seq>`, or a bare `<ms>` (sequence 0).
    pub fn parse(id: &str) -> Option<EntryId> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id above this one.
    pub fn next(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where a consumer group stands on the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPosition {
    pub last_delivered: EntryId,
    /// Its oldest delivered and unacknowledged entry, if any.
    pub oldest_pending: Option<EntryId>,
}

impl GroupPosition {
    /// The group is done with every entry below this id: it was delivered
    /// and acknowledged (or lies before where the group was created).
    pub fn done_below(&self) -> EntryId {
        self.oldest_pending
            .unwrap_or_else(|| self.last_delivered.next())
    }
}

/// How far to trim: `XTRIM MINID` removes the entries below an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimPlan {
    /// Every group is done with the entries below it.
    pub finished: EntryId,
    /// Where to trim to: `finished`, or further when retention lets go of
    /// entries another group has not finished; never past our own group's
    /// done-below point.
    pub target: EntryId,
}

/// The trim point for our group `ours`, the `others` on the stream and the
/// retention floor (entries older than it are not kept for other groups);
/// no floor: only what every group is done with.
pub fn plan(ours: &GroupPosition, others: &[GroupPosition], floor: Option<EntryId>) -> TrimPlan {
    let ours = ours.done_below();
    let finished = others
        .iter()
        .map(GroupPosition::done_below)
        .fold(ours, EntryId::min);
    let target = match floor {
        Some(floor) => ours.min(finished.max(floor)),
        None => finished,
    };
    TrimPlan { finished, target }
}

/// The entries of a stream of `len` a group has not read yet: what Redis
/// reports (capped at `len`: trimmed entries it never read are not there to
/// read), else — Redis answers nil while deleted-entry tombstones lie ahead
/// of the group, left by `XDEL` (say, by an older gateway version) —
/// `len`, an upper bound until the trim has passed the tombstones.
pub fn lag(group: &StreamInfoGroup, len: u64) -> u64 {
    group.lag.map_or(len, |lag| (lag as u64).min(len))
}

impl RedisQueue {
    /// [`crate::backend::Line::tend_stream`] with `retention`; `None` trims
    /// only what every group is done with (the out-of-memory path).
    pub(super) async fn trim_stream(
        &self,
        retention: Option<Duration>,
    ) -> Result<StreamReport, QueueError> {
        self.ensure_group().await?;
        let mut conn = self.conn.clone();
        let (info, len): (StreamInfoGroupsReply, u64) = redis::pipe()
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.keys.stream)
            .cmd("XLEN")
            .arg(&self.keys.stream)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        // The oldest pending entry of each group that has some.
        let mut pending = redis::pipe();
        for g in info.groups.iter().filter(|g| g.pending > 0) {
            pending.cmd("XPENDING").arg(&self.keys.stream).arg(&g.name);
        }
        let oldest: Vec<StreamPendingReply> = if pending.is_empty() {
            Vec::new()
        } else {
            pending.query_async(&mut conn).await.map_err(unavailable)?
        };
        let mut oldest = oldest.into_iter();
        let mut ours = None;
        let mut others = Vec::new();
        for g in &info.groups {
            let oldest_pending = match g.pending > 0 {
                true => match oldest.next() {
                    Some(StreamPendingReply::Data(d)) => EntryId::parse(&d.start_id),
                    _ => None,
                },
                false => None,
            };
            let Some(last_delivered) = EntryId::parse(&g.last_delivered_id) else {
                return Err(QueueError::Protocol(format!(
                    "group `{}` has last-delivered id `{}`",
                    g.name, g.last_delivered_id
                )));
            };
            let position = GroupPosition {
                last_delivered,
                oldest_pending,
            };
            if g.name == GROUP {
                ours = Some(position);
            } else {
                others.push(position);
            }
        }
        let mut report = StreamReport {
            groups: reported_groups(&info.groups, len),
            trimmed_unfinished: 0,
        };
        // Our group vanished (deleted by hand): nothing is known safe to trim.
        let Some(ours) = ours else {
            return Ok(report);
        };
        let floor = retention.map(|age| EntryId {
            ms: now_ms().saturating_sub(age.as_millis() as u64),
            seq: 0,
        });
        let plan = plan(&ours, &others, floor);
        let trim = |pipe: &mut redis::Pipeline, to: EntryId| {
            pipe.cmd("XTRIM")
                .arg(&self.keys.stream)
                .arg("MINID")
                .arg("=")
                .arg(to.to_string());
        };
        let mut pipe = redis::pipe();
        trim(&mut pipe, plan.finished);
        if plan.target > plan.finished {
            trim(&mut pipe, plan.target);
        }
        let trimmed: Vec<u64> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        report.trimmed_unfinished = trimmed.get(1).copied().unwrap_or(0);
        Ok(report)
    }
}

/// Our group first, then the others by name, at most
/// [`MAX_REPORTED_GROUPS`].
fn reported_groups(groups: &[StreamInfoGroup], len: u64) -> Vec<GroupLag> {
    let mut out: Vec<GroupLag> = groups
        .iter()
        .map(|g| GroupLag {
            group: g.name.clone(),
            lag: lag(g, len),
        })
        .collect();
    out.sort_by(|a, b| (a.group != GROUP, &a.group).cmp(&(b.group != GROUP, &b.group)));
    out.truncate(MAX_REPORTED_GROUPS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EntryId {
        EntryId::parse(s).unwrap()
    }

    fn at(last: &str, oldest: Option<&str>) -> GroupPosition {
        GroupPosition {
            last_delivered: id(last),
            oldest_pending: oldest.map(id),
        }
    }

    #[test]
    fn ids_parse_order_and_step() {
        assert_eq!(id("5-3"), EntryId { ms: 5, seq: 3 });
        assert_eq!(id("7"), EntryId { ms: 7, seq: 0 });
        assert!(EntryId::parse("x-1").is_none());
        assert!(id("5-10") > id("5-9"));
        assert!(id("6-0") > id("5-99"));
        assert_eq!(id("5-3").next(), id("5-4"));
        assert_eq!(id(&format!("5-{}", u64::MAX)).next(), id("6-0"));
        assert_eq!(id("5-3").to_string(), "5-3");
    }

    #[test]
    fn a_group_is_done_below_its_oldest_pending_entry_or_past_its_last_delivered() {
        assert_eq!(at("9-0", Some("4-1")).done_below(), id("4-1"));
        assert_eq!(at("9-0", None).done_below(), id("9-1"));
        // A group made on an empty stream has read nothing.
        assert_eq!(at("0-0", None).done_below(), id("0-1"));
    }

    #[test]
    fn alone_our_group_trims_everything_it_finished() {
        let p = plan(&at("9-0", None), &[], None);
        assert_eq!((p.finished, p.target), (id("9-1"), id("9-1")));
        let p = plan(&at("9-0", Some("3-0")), &[], Some(id("100-0")));
        // Retention never trims what our own group still holds.
        assert_eq!((p.finished, p.target), (id("3-0"), id("3-0")));
    }

    #[test]
    fn the_slowest_group_holds_the_trim_point() {
        let others = [at("5-0", None), at("8-0", Some("2-0"))];
        let p = plan(&at("9-0", None), &others, None);
        assert_eq!(
            p,
            TrimPlan {
                finished: id("2-0"),
                target: id("2-0")
            }
        );
        // Our own pending entry can be the slowest.
        let p = plan(&at("9-0", Some("1-5")), &others, None);
        assert_eq!(p.target, id("1-5"));
    }

    #[test]
    fn retention_lets_go_of_old_entries_a_lagging_group_has_not_finished() {
        let lagging = [at("0-0", None)];
        // Entries older than the floor go, unread by the lagging group...
        let p = plan(&at("9-0", None), &lagging, Some(id("6-0")));
        assert_eq!(
            p,
            TrimPlan {
                finished: id("0-1"),
                target: id("6-0")
            }
        );
        // ...but never one our group has not finished.
        let p = plan(&at("9-0", Some("4-0")), &lagging, Some(id("6-0")));
        assert_eq!(p.target, id("4-0"));
        let p = plan(&at("3-0", None), &lagging, Some(id("6-0")));
        assert_eq!(p.target, id("3-1"));
        // A floor below what everyone finished changes nothing.
        let p = plan(&at("9-0", None), &[at("7-0", None)], Some(id("2-0")));
        assert_eq!(
            p,
            TrimPlan {
                finished: id("7-1"),
                target: id("7-1")
            }
        );
    }

    fn group(name: &str, lag: Option<usize>) -> StreamInfoGroup {
        StreamInfoGroup {
            name: name.into(),
            lag,
            ..Default::default()
        }
    }

    #[test]
    fn lag_is_capped_at_the_stream_and_bounded_when_redis_cannot_tell() {
        assert_eq!(lag(&group("a", Some(3)), 10), 3);
        // Entries trimmed away unread are no longer there to be read.
        assert_eq!(lag(&group("a", Some(300)), 10), 10);
        assert_eq!(lag(&group("a", None), 10), 10);
    }

    #[test]
    fn reported_groups_put_ours_first_and_are_capped() {
        let mut groups: Vec<StreamInfoGroup> = (0..30)
            .map(|i| group(&format!("g{i:02}"), Some(i)))
            .collect();
        groups.push(group(GROUP, Some(0)));
        let out = reported_groups(&groups, 100);
        assert_eq!(out.len(), MAX_REPORTED_GROUPS);
        assert_eq!(out[0].group, GROUP);
        assert_eq!(out[1].group, "g00");
        assert_eq!(out[2].lag, 1);
    }
}
