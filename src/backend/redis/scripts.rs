//! The Lua scripts that make each multi-key step one atomic round trip.
//! Every key a script touches shares the queue's hash tag. The key and
//! field names they spell as literals are documented in `schema.rs`, whose
//! test checks that the two agree.

/// Admission of a batch of requests in one round trip: for each, in order,
/// idempotency, sold-out flag, stock, capacity, sequence number, stream
/// entry and ticket hash, atomically — so a burst never oversells the stock
/// nor overfills the queue, not even by one. Idempotency comes first: a
/// client retrying an admitted request gets its ticket even if the stock has
/// run out since. A later request of the batch sees what an earlier one
/// wrote (the same Idempotency-Key twice in one batch is a replay).
///
/// During a pre-queue window (and while pre-queued entries are being
/// released) the entry waits in the ticket hash and a sorted set instead of
/// the stream; see `RELEASE_LUA`.
///
/// KEYS: stream, counters, knobs, prequeue, events, quota, then for each
///       request its ticket and idempotency keys.
/// ARGV: `ADMIT_BATCH_ARGS` values the whole batch shares: ticket TTL
///       seconds, partitions, this partition's index, the queue's name in
///       events, the events' `MINID` threshold ('' = events off), the
///       prefix of proof-of-work seed keys (`<base>:pow:`), the configured
///       stock ('' = unlimited), max_queue, the fair sale's per-client and
///       per-client-and-product maxima ('' = none), the quota's TTL
///       seconds and give-back on cancel (0/1); then for each request
///       `ADMIT_ARGS` values: ticket id, admitted-at ms, the claim's
///       fingerprint ('' = no Idempotency-Key), pre-queue score in the
///       window ('-' = a pre-queue is configured but the window is over,
///       '' = none is), the entry's values m, p, h, b, c, f, x, k, pr (the
///       names are literals here and in `RELEASE_LUA`; the schema version
///       `v` is a literal too), the product's configured stock ('' =
///       unlimited), then the proof-of-work seed id ('' = none) and its
///       remaining lifetime in ms. A partition holds its share of the stock
///       and of the capacity (the first `total % partitions` partitions one
///       more).
/// Lifecycle events (`schema.rs`, [`EventField`](super::schema::EventField)):
/// each admission writes `admitted`; the one that takes the last unit
/// of (this partition's share of) the stock writes `sold_out`, reason `stock`.
/// Returns the queue's dispatch count, then one value per request: its
/// sequence number (an integer) when admitted, else {'replayed', ticket,
/// seq}, {'full', depth, 0}, {'sold_out', 0, 0}, {'product_sold_out', 0,
/// 0}, {'quota', 0, 0}, {'reused', 0, 0} or {'pow_reused', 0, 0}.
///
/// A fair sale (README "Running a fair sale"), after the queue's stock and
/// before the capacity: the product's sold-out knob `sold_out:<pr>` and its
/// stock (knob `stock:<pr>`, else the configured one) against the counter
/// `sold:<pr>`; then the client's counts in the quota hash (`c:<client>`,
/// `p:<pr>:<client>`, its TTL renewed by each admission). A ticket that
/// may give back on cancel keeps `gb`, `pr` and `cl` (`CANCEL_LUA`).
///
/// Proof of work: a seed is good for one admission across every instance.
/// Its key (`<base>:pow:<id>`, built here from the prefix, on the queue's
/// slot) is written with the admission and lives as long as the seed; a
/// seed whose key exists is refused, after the idempotency check, so a
/// retry of an admitted request with the same header gets its ticket.
///
/// Cost (README "Where an admission's time goes"): redis-server spends
/// per admission roughly a thousand instructions for each argument and a
/// few thousand for each command, so the counters and knobs are read
/// once and written once per call, the limits every request of a batch
/// shares are passed once, field names are literals, a stream entry's
/// values go to `XADD` in place (no table and `unpack`), the TTLs are
/// one `PEXPIREAT` at a time read once from Redis's clock (`EXPIRE`
/// rewrites itself for propagation), and the events are trimmed once per
/// call (`XTRIM MINID ~`) rather than on each `XADD`.
pub const ADMIT_LUA: &str = r#"
-- Locals, not globals: each use of a global is a table lookup.
local ARGV, KEYS = ARGV, KEYS
local counters = redis.call('HMGET', KEYS[2], 'dispatched', 'admitted', 'seq', 'replayed', 'returned')
local dispatched = tonumber(counters[1] or '0')
local admitted = tonumber(counters[2] or '0')
local seq = tonumber(counters[3] or '0')
-- Replayed dead letters hold places in line (capacity), not stock.
local replayed = tonumber(counters[4] or '0')
-- Units cancelled tickets gave back (`CANCEL_LUA`).
local returned = tonumber(counters[5] or '0')
local knobs = redis.call('HMGET', KEYS[3], 'sold_out', 'stock')
local ttl, parts, index = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local expire_at = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000) + ttl * 1000)
local ev_key, ev_queue, ev_min = KEYS[5], ARGV[4], ARGV[5]
local pow_prefix = ARGV[6]
local stock = knobs[2] or ARGV[7]
local max_queue, qmax, qpmax, qttl, give_back = tonumber(ARGV[8]), ARGV[9], ARGV[10], ARGV[11], ARGV[12] == '1'
local quota = qmax ~= '' or qpmax ~= ''
local function share(total)
  local s = math.floor(total / parts)
  if index < total % parts then s = s + 1 end
  return s
end
local stock_share = stock ~= '' and share(tonumber(stock))
local max_share = share(max_queue)
local names = {'m', 'p', 'h', 'b', 'c', 'f', 'x', 'k', 'pr'}
-- Whether pre-queued entries wait: read when first needed.
local prequeued = nil
-- Events are trimmed by age once per call, after the batch's last one:
-- `MINID ~` on each XADD would cost a third of the event.
local evented = false
local function event(...)
  if ev_min ~= '' then
    redis.call('XADD', ev_key, '*', 'v', '1', 'queue', ev_queue, ...)
    evented = true
  end
end
-- The dispatch count first, the same for every request of the call.
local out = {dispatched}
local wrote = false
for i = 0, (#ARGV - 12) / 16 - 1 do
  local a = 12 + 16 * i
  local tkey, ikey = KEYS[7 + 2 * i], KEYS[8 + 2 * i]
  local id, adm, fp = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local claimed = fp ~= ''
  local pow = ARGV[a + 15]
  local word, x, y = 'ok', 0, 0
  local prev = claimed and redis.call('HMGET', ikey, 't', 'f', 's')
  local depth = admitted + replayed - dispatched
  -- The fair sale: the product's knobs and count, the client's counts.
  local pr, cl = ARGV[a + 13], ARGV[a + 9]
  local pknobs, psold, pstock = nil, 0, ''
  local qc, qp = 0, 0
  if not (prev and prev[1]) then
    if pr ~= '' then
      pknobs = redis.call('HMGET', KEYS[3], 'stock:' .. pr, 'sold_out:' .. pr)
      psold = tonumber(redis.call('HGET', KEYS[2], 'sold:' .. pr) or '0')
      pstock = pknobs[1] or ARGV[a + 14]
    end
    if quota then
      local q = redis.call('HMGET', KEYS[6], 'c:' .. cl, 'p:' .. pr .. ':' .. cl)
      qc, qp = tonumber(q[1] or '0'), tonumber(q[2] or '0')
    end
  end
  if prev and prev[1] then
    if prev[2] ~= fp then word = 'reused'
    else word, x, y = 'replayed', prev[1], tonumber(prev[3]) end
  elseif pow ~= '' and redis.call('EXISTS', pow_prefix .. pow) == 1 then
    word = 'pow_reused'
  elseif knobs[1] == '1' or (stock_share and admitted - returned >= stock_share) then
    word = 'sold_out'
  elseif pknobs and (pknobs[2] == '1' or (pstock ~= '' and psold >= share(tonumber(pstock)))) then
    word = 'product_sold_out'
  elseif (qmax ~= '' and qc >= tonumber(qmax)) or (qpmax ~= '' and pr ~= '' and qp >= tonumber(qpmax)) then
    word = 'quota'
  elseif depth >= max_share then
    word, x = 'full', depth
  else
    admitted = admitted + 1
    wrote = true
    local s = '0'
    local score = ARGV[a + 4]
    local pre = score ~= '' and score ~= '-'
    if score == '-' and prequeued == nil then
      prequeued = redis.call('ZCARD', KEYS[4]) > 0
    end
    if pre or (score == '-' and prequeued) then
      -- Pre-queued: random score in the window; during the release, after
      -- every pre-queued entry, in arrival order.
      if not pre then score = 2 + admitted end
      local fields = {'e:v', '1', 'e:t', id, 'e:a', adm}
      for j, name in ipairs(names) do
        fields[#fields + 1] = 'e:' .. name
        fields[#fields + 1] = ARGV[a + 4 + j]
      end
      redis.call('HSET', tkey, unpack(fields))
      redis.call('ZADD', KEYS[4], score, id)
      prequeued = true
    else
      seq = seq + 1
      -- '%d', not tostring's '%.14g': integers, formatted as such.
      s = string.format('%d', seq)
      -- Arguments in place, not a table and `unpack`: cheaper per call.
      if pr == '' then
        redis.call('XADD', KEYS[1], '*', 'v', '1', 's', s, 'w', string.format('%d', depth), 't', id,
          'm', ARGV[a + 5], 'p', ARGV[a + 6], 'h', ARGV[a + 7], 'b', ARGV[a + 8],
          'c', cl, 'f', ARGV[a + 10], 'x', ARGV[a + 11], 'a', adm, 'k', ARGV[a + 12])
      else
        redis.call('XADD', KEYS[1], '*', 'v', '1', 's', s, 'w', string.format('%d', depth), 't', id,
          'm', ARGV[a + 5], 'p', ARGV[a + 6], 'h', ARGV[a + 7], 'b', ARGV[a + 8],
          'c', cl, 'f', ARGV[a + 10], 'x', ARGV[a + 11], 'a', adm, 'k', ARGV[a + 12],
          'pr', pr)
      end
    end
    redis.call('HSET', tkey, 'st', 'queued', 'seq', s, 'att', '0', 'adm', adm)
    if pr ~= '' then
      redis.call('HSET', tkey, 'pr', pr)
      psold = redis.call('HINCRBY', KEYS[2], 'sold:' .. pr, 1)
    end
    if quota then
      redis.call('HINCRBY', KEYS[6], 'c:' .. cl, 1)
      if pr ~= '' then redis.call('HINCRBY', KEYS[6], 'p:' .. pr .. ':' .. cl, 1) end
      redis.call('EXPIRE', KEYS[6], qttl)
      redis.call('HSET', tkey, 'cl', cl)
    end
    if give_back then redis.call('HSET', tkey, 'gb', '1') end
    redis.call('PEXPIREAT', tkey, expire_at)
    event('type', 'admitted', 'at', adm, 'ticket', id)
    if stock_share and admitted - returned == stock_share then event('type', 'sold_out', 'at', adm, 'reason', 'stock') end
    if pstock ~= '' and psold == share(tonumber(pstock)) then event('type', 'sold_out', 'at', adm, 'reason', 'stock', 'product', pr) end
    if pow ~= '' then redis.call('SET', pow_prefix .. pow, '1', 'PX', ARGV[a + 16]) end
    if claimed then
      redis.call('HSET', ikey, 't', id, 'f', fp, 's', s)
      redis.call('PEXPIREAT', ikey, expire_at)
    end
    x = tonumber(s)
  end
  if word == 'ok' then out[i + 2] = x else out[i + 2] = {word, x, y} end
end
if wrote then redis.call('HSET', KEYS[2], 'admitted', admitted, 'seq', seq) end
if evented then redis.call('XTRIM', ev_key, 'MINID', '~', ev_min) end
return out
"#;

/// Values `ADMIT_LUA` takes once per call, before the requests' values.
pub const ADMIT_BATCH_ARGS: usize = 12;

/// Values `ADMIT_LUA` takes for each request of a batch.
pub const ADMIT_ARGS: usize = 16;

/// Moves up to ARGV[1] pre-queued entries, lowest (random) score first, into
/// the stream, giving each its sequence number now. Returns {moved, left}.
/// A field the pre-queued entry lacks (`v` and `k` of one pre-queued by an
/// older version) stays absent from the stream entry.
///
/// KEYS: prequeue, stream, counters. ARGV: batch, ticket key prefix.
/// The ticket keys are built here: they share the queue's hash tag, so the
/// script stays on one cluster slot.
pub const RELEASE_LUA: &str = r#"
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local names = {'t', 'm', 'p', 'h', 'b', 'c', 'f', 'x', 'a', 'v', 'k', 'pr'}
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
      if values[j] and (values[j] ~= '' or name ~= 'pr') then
        entry[#entry + 1] = name
        entry[#entry + 1] = values[j]
      end
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
/// acknowledged instead, unsent (-2); the trim removes it (`trim.rs`). A change of status is
/// published on the change channel.
///
/// Events: `dispatched` with the attempt number, or `expired` for a ticket
/// that has gone — once per ticket, also across a crash that redelivers the
/// entry: a marker key set with `NX` says it was written.
///
/// KEYS: ticket, counters, stream, events, expired marker. ARGV: fresh (0/1),
/// change channel, ticket id, entry id, consumer group, queue, `MINID`
/// threshold ('' = events off), now ms, ticket TTL seconds.
pub const START_ATTEMPT_LUA: &str = r#"
local function event(...)
  if ARGV[7] ~= '' then
    redis.call('XADD', KEYS[4], 'MINID', '~', ARGV[7], '*', 'v', '1', 'queue', ARGV[6], 'at', ARGV[8], 'ticket', ARGV[3], ...)
  end
end
if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[2], 'dispatched', 1) end
local st = redis.call('HGET', KEYS[1], 'st')
if not st and ARGV[3] ~= '' and ARGV[7] ~= '' and redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[9]) then event('type', 'expired') end
if not st then return -1 end
if st == 'cancelled' then
  redis.call('XACK', KEYS[3], ARGV[5], ARGV[4])
  return -2
end
if st ~= 'in_flight' then
  redis.call('HSET', KEYS[1], 'st', 'in_flight')
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
local attempt = redis.call('HINCRBY', KEYS[1], 'att', 1)
event('type', 'dispatched', 'attempt', attempt)
return attempt
"#;

/// Cancels a queued ticket: atomic against `START_ATTEMPT_LUA`, so a ticket
/// is either cancelled before its first attempt or not at all. Returns
/// `{'missing'}`, `{'refused', status}` or `{'ok'}`.
///
/// Writes the `cancelled` event. A ticket admitted with `gb` gives back, in
/// the same step, its unit to the queue's stock (`returned`) and to its
/// product's (`sold:<pr>`), and its place to its client's counts in the
/// quota hash (never below zero, nor into a quota hash that expired).
///
/// KEYS: ticket, events, counters, quota. ARGV: now ms, ttl seconds, change
/// channel, ticket id, queue, `MINID` threshold ('' = events off).
pub const CANCEL_LUA: &str = r#"
local st = redis.call('HGET', KEYS[1], 'st')
if not st then return {'missing'} end
if st == 'cancelled' then return {'already'} end
if st ~= 'queued' then return {'refused', st} end
redis.call('HSET', KEYS[1], 'st', 'cancelled', 'cmp', ARGV[1])
local back = redis.call('HMGET', KEYS[1], 'gb', 'pr', 'cl')
if back[1] == '1' then
  redis.call('HINCRBY', KEYS[3], 'returned', 1)
  if back[2] then redis.call('HINCRBY', KEYS[3], 'sold:' .. back[2], -1) end
  local function down(field)
    if tonumber(redis.call('HGET', KEYS[4], field) or '0') > 0 then
      redis.call('HINCRBY', KEYS[4], field, -1)
    end
  end
  if back[3] then
    down('c:' .. back[3])
    if back[2] then down('p:' .. back[2] .. ':' .. back[3]) end
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[6], '*', 'v', '1', 'queue', ARGV[5], 'type', 'cancelled', 'at', ARGV[1], 'ticket', ARGV[4])
end
return {'ok'}
"#;

/// Reserves drain slots on the queue's shared schedule (GCRA): the key holds
/// when the next free slot is due, in microseconds of Redis's clock, which
/// every instance shares. A slot is never handed out twice, so N instances
/// together get one slot a period. A schedule behind by less than the
/// tolerance (a drainer woke late) goes on where it was, so lateness costs
/// no rate; one further behind (idle) restarts with at most `burst` slots
/// due at once. When the rate rose since the last reservation (the period
/// key holds the period it was made at), the slots already handed out ahead
/// of now are re-spaced at the new period: their holders drop them and
/// reserve again, so a rise takes effect at once instead of after the last
/// slow slot. Returns the first slot's due time and now, in microseconds.
///
/// KEYS: rate, rate period. ARGV: period µs, burst, count, tolerance µs.
pub const RESERVE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period, burst, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local first = tonumber(redis.call('GET', KEYS[1]) or '0')
local before = tonumber(redis.call('GET', KEYS[2]) or '0')
if before > period and first > now then first = now + math.floor((first - now) * period / before) end
local backlog = (burst - 1) * period
if first < now - math.max(backlog, tonumber(ARGV[4])) then first = now - backlog end
local after = first + count * period
local ttl = math.max(0, math.floor((after - now) / 1000)) + 60000
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', ttl)
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
return {first, now}
"#;

/// One adaptive-drain step on the `drain_rate` knob, unless the same kind of
/// step (any step, for an increase) was taken in the last `spacing` ms by
/// any instance. Mirrors `RateStep::apply`: `rate · mul + add`, rounded to
/// thousandths, clamped to `[floor, ceiling]`. Returns the knobs after the
/// step as HGETALL does, or nil when no step was taken.
///
/// A step writes a `knobs_changed` event, actor `adaptive`.
///
/// KEYS: knobs, events. ARGV: down (0/1), mul, add, floor, ceiling,
/// configured rate, spacing ms, queue, `MINID` threshold ('' = events off).
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
if ARGV[9] ~= '' then
  local changes = cjson.encode({drain_rate = {old = current, new = rate}})
  redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[9], '*', 'v', '1', 'queue', ARGV[8],
    'type', 'knobs_changed', 'at', now, 'actor', 'adaptive', 'changes', changes)
end
return redis.call('HGETALL', KEYS[1])
"#;

/// Ends a ticket, once: records its final state (`completed` with the
/// upstream's answer, or `failed` with the error), renews its TTL, publishes
/// the change and writes the terminal event — unless the ticket has a final
/// state already (a completion retried after a timeout that was applied, an
/// entry redelivered after a crash), which then stays as it was, with its
/// one event. A ticket that expired while queued is recorded again. The
/// entry is acknowledged in the same step, whatever the ticket's state, so
/// a completion is one `EVALSHA` and no transaction; the shebang makes Redis
/// refuse the whole script when out of memory (as it refuses `HSET`), the
/// acknowledgement included.
///
/// KEYS: ticket, events, stream. ARGV: status, now ms, ttl seconds, change
/// channel, ticket id, queue, `MINID` threshold ('' = events off), consumer
/// group, entry id, n, then n ticket field/value pairs, then the event's own
/// field/value pairs.
pub const FINISH_LUA: &str = r#"#!lua
redis.call('XACK', KEYS[3], ARGV[8], ARGV[9])
local st = redis.call('HGET', KEYS[1], 'st')
if st == 'completed' or st == 'failed' or st == 'cancelled' then return 0 end
local n = tonumber(ARGV[10])
local fields = {'st', ARGV[1], 'cmp', ARGV[2]}
for i = 11, 10 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
if ARGV[7] ~= '' then
  local event = {'v', '1', 'queue', ARGV[6], 'type', ARGV[1], 'at', ARGV[2], 'ticket', ARGV[5]}
  for i = 11 + 2 * n, #ARGV do event[#event + 1] = ARGV[i] end
  redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[7], '*', unpack(event))
end
return 1
"#;

/// Patches the knobs hash and records who changed what: a `knobs_changed`
/// event with `actor` and `changes` (each knob whose value moved,
/// `{"drain_rate":{"old":null,"new":40}}`, `null` = as configured), and a
/// `sold_out` event when the flag goes up. Nothing is recorded for a patch
/// that moved nothing, nor when the actor is '' (a partition's copy of a
/// change recorded on partition 0). A product's knobs (`stock:<p>`,
/// `sold_out:<p>`) are knobs like the others; a product's flip to sold out
/// writes a `sold_out` event with its `product`. Returns the knobs as HGETALL does.
///
/// KEYS: knobs, events. ARGV: actor, sold-out reason, queue, `MINID`
/// threshold ('' = events off), now ms, then field/value pairs ('' deletes
/// the field).
pub const KNOBS_LUA: &str = r#"
local names = {}
for i = 6, #ARGV, 2 do names[#names + 1] = ARGV[i] end
local before = {}
if #names > 0 then before = redis.call('HMGET', KEYS[1], unpack(names)) end
for i = 6, #ARGV, 2 do
  -- '+<units>:<configured>' adds to the stored value (else the configured
  -- one), never below 0: a product's stock added to in one step.
  local units, configured = ARGV[i + 1]:match('^%+(%-?%d+):(%d*)$')
  if units then
    local base = tonumber(before[(i - 4) / 2] or configured) or 0
    ARGV[i + 1] = string.format('%.0f', math.max(0, base + tonumber(units)))
  end
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
local knobs = redis.call('HGETALL', KEYS[1])
if ARGV[1] == '' or ARGV[4] == '' then return knobs end
-- As JSON: flags are booleans (unset: false, but `open` unset is null),
-- numbers numbers, unset numbers null.
local function value(name, v)
  if name == 'paused' or name == 'sold_out' or name:sub(1, 9) == 'sold_out:' then return v == '1' end
  if not v or v == '' then return cjson.null end
  if name == 'open' then return v == '1' end
  return tonumber(v)
end
local changes, moved = {}, false
for j, name in ipairs(names) do
  local old, new = value(name, before[j]), value(name, ARGV[5 + 2 * j])
  if old ~= new then
    changes[name] = {old = old, new = new}
    moved = true
  end
end
local function event(...)
  redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', 'v', '1', 'queue', ARGV[3], 'at', ARGV[5], ...)
end
if moved then event('type', 'knobs_changed', 'actor', ARGV[1], 'changes', cjson.encode(changes)) end
if changes['sold_out'] and changes['sold_out'].new == true then event('type', 'sold_out', 'reason', ARGV[2]) end
for _, name in ipairs(names) do
  if name:sub(1, 9) == 'sold_out:' and changes[name] and changes[name].new == true then
    event('type', 'sold_out', 'reason', ARGV[2], 'product', name:sub(10))
  end
end
return knobs
"#;
