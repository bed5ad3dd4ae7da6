//! The Redis dead letters: the `dead` stream ([`DeadField`] + the entry's
//! [`EntryField`]s), written by the line's `fail` (`DEAD_LUA`), read here
//! with `XRANGE`/`XREVRANGE`, and replayed or discarded by a script each,
//! so that a dead letter is taken once however many ask at the same time.

use async_trait::async_trait;
use redis::streams::{StreamId, StreamRangeReply};
use redis::Value;

use super::schema::{DeadField, EntryField};
use super::{reply, unavailable, RedisQueue};
use crate::backend::dead_letters::{parse_id, DEAD_SCAN_BUDGET};
use crate::backend::{DeadLetter, DeadLetters, DeadPage, DeadQuery, Discard, QueueError, Replay};
use crate::ticket::{now_ms, TicketId};

/// Entries read per range while a code filter skips some.
const RANGE: usize = 500;

/// Writes a dead letter (in the transaction that fails its ticket): the
/// entry id, code and detail, the ticket's attempts as its hash has them
/// (none when it has expired), then the entry's own fields. The shebang
/// makes Redis refuse it when out of memory, aborting the transaction.
///
/// Once per entry: it acknowledges the entry first and writes only if that
/// took it off the pending list. So a failure retried after a reply that
/// timed out (the first write was applied) writes no second dead letter,
/// and neither does an entry the group's takeover found deleted from the
/// stream and dead-lettered itself (`maintain_claims`, `entry_deleted`):
/// whichever takes the entry off the pending list records it.
///
/// KEYS: dead, ticket, stream. ARGV: entry id, consumer group, code, detail,
/// then the entry's field/value pairs.
pub const DEAD_LUA: &str = r#"#!lua
if redis.call('XACK', KEYS[3], ARGV[2], ARGV[1]) == 0 then return 0 end
local fields = {'entry', ARGV[1], 'code', ARGV[3], 'detail', ARGV[4]}
local att = redis.call('HGET', KEYS[2], 'att')
if att then
  fields[#fields + 1] = 'attempts'
  fields[#fields + 1] = att
end
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], '*', unpack(fields))
return 1
"#;

/// Replays a dead letter, atomically: puts its request back at the end of
/// the line (the next sequence number, counted in `replayed`, not in
/// `admitted`: no stock is spent), the ticket back to `queued` with no
/// attempts (recreated with the ticket TTL if it had expired), removes the
/// dead letter and writes the `replayed` event. Refused, and nothing
/// changed, when the dead letter kept no request, the ticket is not
/// `failed`, or the queue is sold out. The new entry has no `w` (the
/// promise made at admission is not this wait's) and `r`, the dead
/// letter's id. The ticket key is built here: it shares the hash tag.
///
/// KEYS: dead, stream, counters, knobs, events. ARGV: dead letter id,
/// ticket key prefix, now ms, ticket TTL seconds, change channel, queue,
/// `MINID` threshold ('' = events off), actor, the id as the admin API
/// names it (`<partition>:<id>` on a partitioned queue). Returns {'ok', ticket},
/// {'missing'} or {'refused', why}.
pub const REPLAY_LUA: &str = r#"
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return {'missing'} end
local f = {}
local raw = found[1][2]
for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
if not f['t'] or not f['m'] then
  return {'refused', 'it kept no readable request (' .. (f['code'] or 'no code') .. '): discard it'}
end
if redis.call('HGET', KEYS[4], 'sold_out') == '1' then
  return {'refused', 'the queue is sold out: the replay would fail unsent'}
end
local tkey = ARGV[2] .. f['t']
local st = redis.call('HGET', tkey, 'st')
if st and st ~= 'failed' then
  return {'refused', 'its ticket is ' .. st .. ', not failed'}
end
local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('HINCRBY', KEYS[3], 'replayed', 1)
local entry = {'s', seq, 'r', ARGV[9]}
for _, name in ipairs({'v', 't', 'm', 'p', 'h', 'b', 'c', 'f', 'x', 'a', 'k', 'pr'}) do
  if f[name] then
    entry[#entry + 1] = name
    entry[#entry + 1] = f[name]
  end
end
redis.call('XADD', KEYS[2], '*', unpack(entry))
redis.call('HDEL', tkey, 'cmp', 'ec', 'ed', 'rs', 'rh', 'rb')
redis.call('HSET', tkey, 'st', 'queued', 'seq', seq, 'att', '0', 'adm', f['a'] or ARGV[3])
redis.call('EXPIRE', tkey, ARGV[4])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[5], f['t'])
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[5], 'MINID', '~', ARGV[7], '*', 'v', '1', 'queue', ARGV[6],
    'type', 'replayed', 'at', ARGV[3], 'ticket', f['t'], 'dead_letter', ARGV[9], 'actor', ARGV[8])
end
return {'ok', f['t']}
"#;

/// Discards a dead letter with its `discarded` event, atomically; the
/// ticket stays as it is (`failed`).
///
/// KEYS: dead, events. ARGV: dead letter id, now ms, queue, `MINID`
/// threshold ('' = events off), actor, the id as the admin API names it.
/// Returns {'ok', ticket or ''} or {'missing'}.
pub const DISCARD_LUA: &str = r#"
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return {'missing'} end
local raw = found[1][2]
local ticket, code = '', ''
for i = 1, #raw, 2 do
  if raw[i] == 't' then ticket = raw[i + 1] elseif raw[i] == 'code' then code = raw[i + 1] end
end
redis.call('XDEL', KEYS[1], ARGV[1])
if ARGV[4] ~= '' then
  local event = {'v', '1', 'queue', ARGV[3], 'type', 'discarded', 'at', ARGV[2]}
  if ticket ~= '' then
    event[#event + 1] = 'ticket'
    event[#event + 1] = ticket
  end
  for _, v in ipairs({'dead_letter', ARGV[6], 'code', code, 'actor', ARGV[5]}) do event[#event + 1] = v end
  redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', unpack(event))
end
return {'ok', ticket}
"#;

/// A dead letter from its stream entry.
fn parse(entry: StreamId) -> DeadLetter {
    let text = |name: &str| entry.map.get(name).map(reply::as_string);
    let request = entry
        .map
        .contains_key(EntryField::TICKET)
        .then(|| reply::parse_entry(&entry.map).ok())
        .flatten();
    DeadLetter {
        failed_at_ms: reply::id_ms(&entry.id).unwrap_or(0),
        code: text(DeadField::CODE).unwrap_or_default(),
        detail: text(DeadField::DETAIL).unwrap_or_default(),
        attempts: entry
            .map
            .get(DeadField::ATTEMPTS)
            .and_then(reply::as_u64)
            .and_then(|n| u32::try_from(n).ok()),
        request,
        id: entry.id,
    }
}

/// The words of a script's answer.
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(reply::as_string).collect(),
        other => vec![reply::as_string(other)],
    }
}

impl RedisQueue {
    /// A dead letter's id as the admin API names it: the stream id, with
    /// the partition in front on a partitioned queue (as
    /// [`crate::backend::Partitioned`] names it).
    fn public_dead_id(&self, id: &str) -> String {
        match self.partitions {
            1 => id.to_string(),
            _ => format!("{}:{id}", self.partition),
        }
    }
}

#[async_trait]
impl DeadLetters for RedisQueue {
    async fn list_dead(&self, query: &DeadQuery) -> Result<DeadPage, QueueError> {
        let limit = query.limit.max(1);
        // Where the range starts: after the cursor, or at the right end.
        let mut from = match &query.after {
            Some(after) => {
                parse_id(after).ok_or_else(|| {
                    QueueError::Protocol(format!("bad dead-letter cursor `{after}`"))
                })?;
                format!("({after}")
            }
            None if query.oldest_first => "-".into(),
            None => "+".into(),
        };
        let (command, to) = match query.oldest_first {
            true => ("XRANGE", "+"),
            false => ("XREVRANGE", "-"),
        };
        let mut out = Vec::new();
        let mut scanned = 0;
        let mut conn = self.conn.clone();
        loop {
            let count = match query.code {
                None => limit - out.len(),
                Some(_) => RANGE,
            };
            let page: StreamRangeReply = redis::cmd(command)
                .arg(&self.keys.dead)
                .arg(&from)
                .arg(to)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let got = page.ids.len();
            for entry in page.ids {
                scanned += 1;
                from = format!("({}", entry.id);
                let letter = parse(entry);
                if query.code.as_ref().is_none_or(|c| *c == letter.code) {
                    out.push(letter);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            if out.len() == limit || (got == count && scanned >= DEAD_SCAN_BUDGET) {
                // More may follow: on after the last one looked at.
                let next = Some(from[1..].to_string());
                return Ok(DeadPage {
                    dead_letters: out,
                    next,
                });
            }
            if got < count {
                // The end: nothing after these.
                return Ok(DeadPage {
                    dead_letters: out,
                    next: None,
                });
            }
        }
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        if parse_id(id).is_none() {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.keys.dead)
            .arg(id)
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(page.ids.into_iter().next().map(parse))
    }

    async fn replay_dead(&self, id: &str, actor: &str) -> Result<Replay, QueueError> {
        if parse_id(id).is_none() {
            return Ok(Replay::NotFound);
        }
        let (queue, min_id) = self.event_args();
        let mut conn = self.conn.clone();
        let answer: Value = self
            .replay_script
            .key(&self.keys.dead)
            .key(&self.keys.stream)
            .key(&self.keys.counters)
            .key(&self.keys.knobs)
            .key(&self.keys.events)
            .arg(id)
            .arg(&self.keys.ticket_prefix)
            .arg(now_ms())
            .arg(self.ttl_secs)
            .arg(&self.keys.changes)
            .arg(queue)
            .arg(min_id)
            .arg(actor)
            .arg(self.public_dead_id(id))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let words = words(&answer);
        Ok(match words.first().map(String::as_str) {
            Some("ok") => {
                let ticket = words.get(1).cloned().unwrap_or_default();
                let ticket = TicketId::parse(&ticket)
                    .ok_or_else(|| QueueError::Protocol(format!("stored ticket id `{ticket}`")))?
                    .0;
                Replay::Replayed { ticket }
            }
            Some("missing") => Replay::NotFound,
            Some("refused") => Replay::Refused(words.get(1).cloned().unwrap_or_default()),
            _ => return Err(QueueError::Protocol(format!("replay answered {answer:?}"))),
        })
    }

    async fn discard_dead(&self, id: &str, actor: &str) -> Result<Discard, QueueError> {
        if parse_id(id).is_none() {
            return Ok(Discard::NotFound);
        }
        let (queue, min_id) = self.event_args();
        let mut conn = self.conn.clone();
        let answer: Value = self
            .discard_script
            .key(&self.keys.dead)
            .key(&self.keys.events)
            .arg(id)
            .arg(now_ms())
            .arg(queue)
            .arg(min_id)
            .arg(actor)
            .arg(self.public_dead_id(id))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let words = words(&answer);
        Ok(match words.first().map(String::as_str) {
            Some("ok") => Discard::Discarded {
                ticket: words
                    .get(1)
                    .and_then(|t| TicketId::parse(t))
                    .map(|(t, _)| t),
            },
            Some("missing") => Discard::NotFound,
            _ => return Err(QueueError::Protocol(format!("discard answered {answer:?}"))),
        })
    }

    async fn count_dead(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("XLEN")
            .arg(&self.keys.dead)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }
}
