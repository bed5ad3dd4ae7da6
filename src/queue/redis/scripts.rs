//! The Lua scripts that make each multi-key step one atomic round trip.
//! Every key a script touches shares the queue's hash tag.

/// Admission in one round trip: idempotency, sold-out flag, stock, capacity,
/// sequence number, stream entry and ticket hash, atomically — so a burst
/// never oversells the stock nor overfills the queue, not even by one.
/// Idempotency comes first: a client retrying an admitted request gets its
/// ticket even if the stock has run out since.
///
/// During a pre-queue window (and while pre-queued entries are being
/// released) the entry waits in the ticket hash and a sorted set instead of
/// the stream; see `RELEASE_LUA`.
///
/// KEYS: stream, counters, ticket, idempotency, knobs, prequeue.
/// ARGV: ticket id, ttl seconds, max_queue, admitted-at ms, has-claim (0/1),
///       fingerprint, configured stock ('' = unlimited), pre-queue score in
///       the window ('-' = a pre-queue is configured but the window is over,
///       '' = none is), partitions, this partition's index, then the entry's
///       values in the order of `RedisQueue::entry_fields`
///       (the names are literals here and in `RELEASE_LUA`). A partition holds its share of
///       the stock and of the capacity (the first `total % partitions`
///       partitions one more).
///
/// Cost, as measured under a burst: each argument becomes a Lua string and
/// each Lua number written back becomes a string through `printf`, so the
/// field names are literals here rather than arguments, and the sequence
/// number is turned into a string once for its four writes.
pub const ADMIT_LUA: &str = r#"
local counters = redis.call('HMGET', KEYS[2], 'dispatched', 'admitted', 'seq')
local dispatched = tonumber(counters[1] or '0')
if ARGV[5] == '1' then
  local prev = redis.call('HMGET', KEYS[4], 't', 'f', 's')
  if prev[1] then
    if prev[2] ~= ARGV[6] then return {'reused'} end
    return {'replayed', prev[1], tonumber(prev[3]), dispatched}
  end
end
local knobs = redis.call('HMGET', KEYS[5], 'sold_out', 'stock')
if knobs[1] == '1' then return {'sold_out'} end
local parts, index = tonumber(ARGV[9]), tonumber(ARGV[10])
local admitted = tonumber(counters[2] or '0')
local stock = knobs[2] or ARGV[7]
if stock ~= '' then
  local total = tonumber(stock)
  local share = math.floor(total / parts)
  if index < total % parts then share = share + 1 end
  if admitted >= share then return {'sold_out'} end
end
local depth = admitted - dispatched
local total = tonumber(ARGV[3])
local share = math.floor(total / parts)
if index < total % parts then share = share + 1 end
if depth >= share then return {'full', depth} end
local n = admitted + 1
local seq = '0'
local pre = ARGV[8] ~= '' and ARGV[8] ~= '-'
if pre or (ARGV[8] == '-' and redis.call('ZCARD', KEYS[6]) > 0) then
  -- Pre-queued: random score in the window; during the release, after
  -- every pre-queued entry, in arrival order.
  local score = ARGV[8]
  if not pre then score = 2 + n end
  local names = {'t', 'm', 'p', 'h', 'b', 'c', 'f', 'x', 'a'}
  local fields = {}
  for i, name in ipairs(names) do
    fields[#fields + 1] = 'e:' .. name
    fields[#fields + 1] = ARGV[10 + i]
  end
  redis.call('HSET', KEYS[3], unpack(fields))
  redis.call('ZADD', KEYS[6], score, ARGV[1])
  redis.call('HSET', KEYS[2], 'admitted', n)
else
  seq = tostring(tonumber(counters[3] or '0') + 1)
  redis.call('HSET', KEYS[2], 'admitted', n, 'seq', seq)
  redis.call('XADD', KEYS[1], '*', 's', seq, 'w', depth,
    't', ARGV[11], 'm', ARGV[12], 'p', ARGV[13], 'h', ARGV[14], 'b', ARGV[15],
    'c', ARGV[16], 'f', ARGV[17], 'x', ARGV[18], 'a', ARGV[19])
end
redis.call('HSET', KEYS[3], 'st', 'queued', 'seq', seq, 'att', '0', 'adm', ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[2])
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[4], 't', ARGV[1], 'f', ARGV[6], 's', seq)
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
return {'ok', tonumber(seq), dispatched}
"#;

/// Moves up to ARGV[1] pre-queued entries, lowest (random) score first, into
/// the stream, giving each its sequence number now. Returns {moved, left}.
///
/// KEYS: prequeue, stream, counters. ARGV: batch, ticket key prefix.
/// The ticket keys are built here: they share the queue's hash tag, so the
/// script stays on one cluster slot.
pub const RELEASE_LUA: &str = r#"
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local names = {'t', 'm', 'p', 'h', 'b', 'c', 'f', 'x', 'a'}
local moved = 0
for i = 1, #popped, 2 do
  local key = ARGV[2] .. popped[i]
  local stored = {}
  for j, name in ipairs(names) do stored[j] = 'e:' .. name end
  local values = redis.call('HMGET', key, unpack(stored))
  if values[1] then
    local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
    local dispatched = tonumber(redis.call('HGET', KEYS[3], 'dispatched') or '0')
    local entry = {'s', seq, 'w', math.max(0, seq - 1 - dispatched)}
    for j, name in ipairs(names) do
      entry[#entry + 1] = name
      entry[#entry + 1] = values[j]
    end
    redis.call('XADD', KEYS[2], '*', unpack(entry))
    redis.call('HSET', key, 'seq', seq)
    redis.call('HDEL', key, unpack(stored))
    moved = moved + 1
  end
end
return {moved, redis.call('ZCARD', KEYS[1])}
"#;

/// Starts an attempt: counts the dispatch once, marks the ticket in flight and
/// counts the attempt on the ticket, so attempts add up across instances.
/// Never recreates an expired ticket hash (-1). A cancelled ticket's entry is
/// acknowledged and deleted instead, unsent (-2). A change of status is
/// published on the change channel.
///
/// KEYS: ticket, counters, stream. ARGV: fresh (0/1), change channel, ticket
/// id, entry id, consumer group.
pub const START_ATTEMPT_LUA: &str = r#"
if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[2], 'dispatched', 1) end
local st = redis.call('HGET', KEYS[1], 'st')
if not st then return -1 end
if st == 'cancelled' then
  redis.call('XACK', KEYS[3], ARGV[5], ARGV[4])
  redis.call('XDEL', KEYS[3], ARGV[4])
  return -2
end
if st ~= 'in_flight' then
  redis.call('HSET', KEYS[1], 'st', 'in_flight')
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return redis.call('HINCRBY', KEYS[1], 'att', 1)
"#;

/// Cancels a queued ticket: atomic against `START_ATTEMPT_LUA`, so a ticket
/// is either cancelled before its first attempt or not at all. Returns
/// `{'missing'}`, `{'refused', status}` or `{'ok'}`.
///
/// KEYS: ticket. ARGV: now ms, ttl seconds, change channel, ticket id.
pub const CANCEL_LUA: &str = r#"
local st = redis.call('HGET', KEYS[1], 'st')
if not st then return {'missing'} end
if st == 'cancelled' then return {'ok'} end
if st ~= 'queued' then return {'refused', st} end
redis.call('HSET', KEYS[1], 'st', 'cancelled', 'cmp', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {'ok'}
"#;

/// Reserves drain slots on the queue's shared schedule (GCRA): the key holds
/// when the next free slot is due, in microseconds of Redis's clock, which
/// every instance shares. A slot is never handed out twice, so N instances
/// together get one slot a period. A schedule behind by less than the
/// tolerance (a drainer woke late) goes on where it was, so lateness costs
/// no rate; one further behind (idle) restarts with at most `burst` slots
/// due at once. Returns the first slot's due time minus now, in microseconds.
///
/// KEYS: rate. ARGV: period µs, burst, count, tolerance µs.
pub const RESERVE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period, burst, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local first = tonumber(redis.call('GET', KEYS[1]) or '0')
local backlog = (burst - 1) * period
if first < now - math.max(backlog, tonumber(ARGV[4])) then first = now - backlog end
local after = first + count * period
local ttl = math.max(0, math.floor((after - now) / 1000)) + 60000
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', ttl)
return first - now
"#;

/// One adaptive-drain step on the `drain_rate` knob, unless the same kind of
/// step (any step, for an increase) was taken in the last `spacing` ms by
/// any instance. Mirrors `RateStep::apply`: `rate · mul + add`, rounded to
/// thousandths, clamped to `[floor, ceiling]`. Returns the knobs after the
/// step as HGETALL does, or nil when no step was taken.
///
/// KEYS: knobs. ARGV: down (0/1), mul, add, floor, ceiling, configured rate,
/// spacing ms.
pub const ADAPT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = redis.call('HMGET', KEYS[1], 'drain_rate', 'adapted_at', 'decreased_at')
local last = k[2]
if ARGV[1] == '1' then last = k[3] end
if last and now - tonumber(last) < tonumber(ARGV[7]) then return nil end
local current = tonumber(k[1] or ARGV[6])
local rate = math.floor((current * tonumber(ARGV[2]) + tonumber(ARGV[3])) * 1000 + 0.5) / 1000
rate = math.max(tonumber(ARGV[4]), math.min(tonumber(ARGV[5]), rate))
if rate == current then return nil end
redis.call('HSET', KEYS[1], 'drain_rate', string.format('%.3f', rate), 'adapted_at', now)
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'decreased_at', now) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return redis.call('HGETALL', KEYS[1])
"#;
