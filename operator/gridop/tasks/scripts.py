"""Lua scripts: every state transition is one atomic script over a whole batch of tasks.

Each script gets one key, the batch's `meta` hash, and derives the others from it by role
(all share the `{sid}` hash tag, so a batch lives on one Redis Cluster slot). Passing one key
instead of eighteen keeps the per-call cost down on the hot path. Counters in `n` move with
every transition, so the totals per state are always one HGETALL away.
"""

from __future__ import annotations

# Key roles, in KEYS[] order for every script.
KEYS = ("meta", "q", "st", "att", "lease", "own", "in", "out", "err", "n", "retry", "done",
        "ts:submitted", "ts:queued", "ts:claimed", "ts:started", "ts:finished", "wake")

_PRELUDE = """
local meta = KEYS[1]
local base = string.sub(meta, 1, #meta - 4)
local q, st, att, lease, own, inp, out, err, n, retry, done = base .. 'q', base .. 'st', base .. 'att', base .. 'lease', base .. 'own', base .. 'in', base .. 'out', base .. 'err', base .. 'n', base .. 'retry', base .. 'done'
local ts_sub, ts_q, ts_claim, ts_start, ts_fin, wake = base .. 'ts:submitted', base .. 'ts:queued', base .. 'ts:claimed', base .. 'ts:started', base .. 'ts:finished', base .. 'wake'
local idle, q1, ek, iatt, apx = base .. 'idle', base .. 'q1', base .. 'ek', base .. 'iatt', base .. 'apx'
-- The next tasks to claim. A task whose last attempt ended with a lost lease (its worker died)
-- is claimed alone: if it is what killed the worker, it takes no neighbour down with it again.
local function pop_work(count)
  local solo = redis.call('LPOP', q1)
  if solo then return {solo} end
  return redis.call('LPOP', q, count)
end
-- Bulk writes: one command per key per script instead of one per task (Redis time per task is
-- dominated by command dispatch, so this is most of the data plane's throughput).
local function chunks(list, fn, step)
  step = step or 4000
  for lo = 1, #list, step do fn(unpack(list, lo, math.min(lo + step - 1, #list))) end
end
local function hset_all(key, pairs) chunks(pairs, function(...) redis.call('HSET', key, ...) end) end
local function hmget_all(key, fields)
  local values = {}
  chunks(fields, function(...)
    local part = redis.call('HMGET', key, ...)
    for j = 1, #part do values[#values + 1] = part[j] end
  end)
  return values
end
-- Claim the pending ones among `ids` for `worker`; returns flat {i, token, attempt, input, ...}
-- and how many were claimed (counters are the caller's).
local function claim_all(ids, worker, now, deadline)
  local states, attempts = hmget_all(st, ids), hmget_all(att, ids)
  local taken, set_st, set_own, set_att, set_ts, leases = {}, {}, {}, {}, {}, {}
  local tokens, tries = {}, {}
  for j, i in ipairs(ids) do
    if states[j] == 'pending' then
      local a = tonumber(attempts[j] or '0') + 1
      local token = worker .. ':' .. a
      taken[#taken + 1] = i
      tokens[#tokens + 1] = token
      tries[#tries + 1] = a
      set_st[#set_st + 1] = i; set_st[#set_st + 1] = 'processing'
      set_own[#set_own + 1] = i; set_own[#set_own + 1] = token
      set_att[#set_att + 1] = i; set_att[#set_att + 1] = a
      set_ts[#set_ts + 1] = i; set_ts[#set_ts + 1] = now
      leases[#leases + 1] = deadline; leases[#leases + 1] = i
    end
  end
  local result = {}
  if #taken == 0 then return result, 0 end
  hset_all(st, set_st); hset_all(own, set_own); hset_all(att, set_att); hset_all(ts_claim, set_ts)
  chunks(leases, function(...) redis.call('ZADD', lease, ...) end)
  local inputs = hmget_all(inp, taken)
  for j, i in ipairs(taken) do
    result[#result + 1] = i
    result[#result + 1] = tokens[j]
    result[#result + 1] = tries[j]
    result[#result + 1] = inputs[j]
  end
  return result, #taken
end
-- Claim task i for `worker` (the caller checked it is pending and accounted the counters).
local function take(i, worker, now, deadline)
  local a = redis.call('HINCRBY', att, i, 1)
  local token = worker .. ':' .. a
  redis.call('HSET', st, i, 'processing')
  redis.call('HSET', own, i, token)
  redis.call('ZADD', lease, deadline, i)
  redis.call('HSET', ts_claim, i, now)
  return token, a
end
local function backoff(a)
  local base = tonumber(redis.call('HGET', meta, 'backoff') or '1')
  local mult = tonumber(redis.call('HGET', meta, 'backoff_mult') or '2')
  local cap = tonumber(redis.call('HGET', meta, 'backoff_max') or '60')
  local d = base * (mult ^ (a - 1))
  if d > cap then d = cap end
  return d
end
-- A failed attempt of kind application | timeout | infrastructure: recorded on the task and in
-- the batch's counters. Infrastructure failures (lost lease: the worker died or was cut off)
-- have a budget of their own, so they never spend the application's retries.
local function record_failure(i, kind, message)
  redis.call('HSET', ek, i, kind)
  redis.call('HINCRBY', n, 'e:' .. kind, 1)
  if message then redis.call('HSET', err, i, message) end
end
local function fail(i, from, now)
  redis.call('HINCRBY', n, from, -1)
  redis.call('HSET', st, i, 'failed')
  redis.call('HSET', ts_fin, i, now)
  redis.call('HINCRBY', n, 'failed', 1)
  redis.call('XADD', done, '*', 'i', i, 's', 'failed')
end
-- Retry (with backoff) while the budget for this kind of failure lasts, else fail; `from` is the
-- state being left.
local function retry_or_fail(i, from, now, message, kind)
  local a = tonumber(redis.call('HGET', att, i) or '0')
  record_failure(i, kind, message)
  local allowed
  if kind == 'infrastructure' then
    allowed = redis.call('HINCRBY', iatt, i, 1) <= tonumber(redis.call('HGET', meta, 'max_infra') or '3')
  else
    local lost = tonumber(redis.call('HGET', iatt, i) or '0')
    allowed = a - lost < tonumber(redis.call('HGET', meta, 'max_attempts') or '1')
  end
  if allowed and redis.call('HGET', meta, 'cancelled') ~= '1' then
    redis.call('HINCRBY', n, from, -1)
    redis.call('HSET', st, i, 'retrying')
    redis.call('ZADD', retry, now + backoff(a), i)
    redis.call('HINCRBY', n, 'retrying', 1)
    return 'retrying'
  end
  fail(i, from, now)
  return 'failed'
end
"""

# ARGV: count, now, lease_deadline, worker
CLAIM = _PRELUDE + """
local count, now, deadline, worker = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', meta, 'cancelled') == '1' or redis.call('HGET', meta, 'suspended') == '1' then return {} end
local ids = pop_work(count)
if not ids then return {} end
local result, claimed = claim_all(ids, worker, now, deadline)
if claimed > 0 then
  redis.call('HINCRBY', n, 'pending', -claimed)
  redis.call('HINCRBY', n, 'processing', claimed)
end
return result
"""

# ARGV: now, next_count, worker, lease_seconds, idle_ttl, then (i, token, outcome, payload, started)
# per task; outcome is ok, or a failure: error | timeout (retried within the budget) or
# fatal | fatal-timeout (failed at once), of kind timeout for the *timeout ones, else application. After recording the outcomes, the worker's next step
# happens in the same call: claim up to next_count more tasks, or, when there are none and
# idle_ttl > 0, register it for direct handoff. Returns {applied, stale, idle entry or false,
# then i, token, attempt, input per newly claimed task}.
COMPLETE = _PRELUDE + """
local now, next_count, worker, lease_s, idle_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local ids = {}
for k = 6, #ARGV, 5 do ids[#ids + 1] = ARGV[k] end
local owners, states = hmget_all(own, ids), hmget_all(st, ids)
local applied, stale, finished = 0, 0, 0
local released, set_out, set_st, set_fin, set_start = {}, {}, {}, {}, {}
for j, i in ipairs(ids) do
  local k = 6 + (j - 1) * 5
  local token, outcome, payload, started = ARGV[k + 1], ARGV[k + 2], ARGV[k + 3], ARGV[k + 4]
  if owners[j] == token and states[j] == 'processing' then
    released[#released + 1] = i
    if started ~= '' then set_start[#set_start + 1] = i; set_start[#set_start + 1] = started end
    if outcome == 'ok' then
      set_out[#set_out + 1] = i; set_out[#set_out + 1] = payload
      set_st[#set_st + 1] = i; set_st[#set_st + 1] = 'finished'
      set_fin[#set_fin + 1] = i; set_fin[#set_fin + 1] = now
      -- Small outputs ride along in the event, so a waiting client needs no second read.
      if #payload <= 512 then
        redis.call('XADD', done, '*', 'i', i, 's', 'finished', 'o', payload)
      else
        redis.call('XADD', done, '*', 'i', i, 's', 'finished')
      end
      finished = finished + 1
    else
      local kind = 'application'
      if outcome == 'timeout' or outcome == 'fatal-timeout' then kind = 'timeout' end
      if outcome == 'error' or outcome == 'timeout' then
        retry_or_fail(i, 'processing', tonumber(now), payload, kind)
      else
        record_failure(i, kind, payload)
        fail(i, 'processing', now)
      end
    end
    applied = applied + 1
  else
    stale = stale + 1  -- reclaimed after a lost lease, or cancelled: this result does not count
  end
end
if #released > 0 then
  chunks(released, function(...) redis.call('HDEL', own, ...) end)
  chunks(released, function(...) redis.call('ZREM', lease, ...) end)
end
hset_all(out, set_out); hset_all(st, set_st); hset_all(ts_fin, set_fin); hset_all(ts_start, set_start)
if finished > 0 then
  redis.call('HINCRBY', n, 'processing', -finished)
  redis.call('HINCRBY', n, 'finished', finished)
end
local result = {applied, stale, false}
if next_count > 0 and redis.call('HGET', meta, 'cancelled') ~= '1' and redis.call('HGET', meta, 'suspended') ~= '1' then
  local next_ids = pop_work(next_count)
  local claimed_list, claimed = {}, 0
  if next_ids then claimed_list, claimed = claim_all(next_ids, worker, now, tonumber(now) + lease_s) end
  if claimed > 0 then
    redis.call('HINCRBY', n, 'pending', -claimed)
    redis.call('HINCRBY', n, 'processing', claimed)
    for _, v in ipairs(claimed_list) do result[#result + 1] = v end
  elseif idle_ttl > 0 then
    local entry = worker .. '|' .. lease_s .. '|' .. (tonumber(now) + idle_ttl)
    redis.call('RPUSH', idle, entry)
    result[3] = entry
  end
end
return result
"""

# ARGV: deadline, then (i, token) per in-flight task. Returns the ids this worker no longer owns.
HEARTBEAT = _PRELUDE + """
local deadline = ARGV[1]
local lost = {}
for k = 2, #ARGV, 2 do
  local i, token = ARGV[k], ARGV[k + 1]
  if redis.call('HGET', own, i) == token and redis.call('HGET', st, i) == 'processing' then
    redis.call('ZADD', lease, 'XX', deadline, i)
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# ARGV: now, limit. Expired leases -> retrying/failed; due retries -> pending.
SWEEP = _PRELUDE + """
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', lease, '-inf', now, 'LIMIT', 0, limit)
local retried, failed = 0, 0
for _, i in ipairs(expired) do
  redis.call('ZREM', lease, i)
  redis.call('HDEL', own, i)
  if redis.call('HGET', st, i) == 'processing' then
    if retry_or_fail(i, 'processing', now, 'lease expired: the worker stopped heartbeating (lost or killed)',
                     'infrastructure') == 'failed' then
      failed = failed + 1
    else
      retried = retried + 1
    end
  end
end
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, limit)
local requeued = 0
for _, i in ipairs(due) do
  redis.call('ZREM', retry, i)
  if redis.call('HGET', st, i) == 'retrying' then
    redis.call('HSET', st, i, 'pending')
    redis.call('HSET', ts_q, i, now)
    if redis.call('HGET', ek, i) == 'infrastructure' then redis.call('RPUSH', q1, i) else redis.call('RPUSH', q, i) end
    requeued = requeued + 1
  end
end
if requeued > 0 then
  redis.call('HINCRBY', n, 'retrying', -requeued)
  redis.call('HINCRBY', n, 'pending', requeued)
  redis.call('RPUSH', wake, 1)
  redis.call('LTRIM', wake, -64, -1)
end
return {#expired, retried, failed, requeued}
"""

# ARGV: now. Cancels everything not yet terminal; returns {pending, retrying, processing}.
CANCEL = _PRELUDE + """
local now = ARGV[1]
redis.call('HSET', meta, 'cancelled', '1')
local counts = {pending = 0, retrying = 0, processing = 0}
local function cancel(i, from)
  if redis.call('HGET', st, i) == from then
    redis.call('HSET', st, i, 'cancelled')
    redis.call('HSET', ts_fin, i, now)
    redis.call('XADD', done, '*', 'i', i, 's', 'cancelled')
    counts[from] = counts[from] + 1
  end
end
for _, i in ipairs(redis.call('LRANGE', q1, 0, -1)) do cancel(i, 'pending') end
for _, i in ipairs(redis.call('LRANGE', q, 0, -1)) do cancel(i, 'pending') end
redis.call('DEL', q, q1)
for _, i in ipairs(redis.call('ZRANGE', retry, 0, -1)) do cancel(i, 'retrying') end
redis.call('DEL', retry)
for _, i in ipairs(redis.call('ZRANGE', lease, 0, -1)) do cancel(i, 'processing') end
redis.call('DEL', lease, own)
local total = counts.pending + counts.retrying + counts.processing
for from, c in pairs(counts) do
  if c > 0 then redis.call('HINCRBY', n, from, -c) end
end
if total > 0 then redis.call('HINCRBY', n, 'cancelled', total) end
return {counts.pending, counts.retrying, counts.processing}
"""

# ARGV: now, append id, payloads... Appends to an existing batch; returns {first new index, last
# terminal-event id} (the id lets the caller wait for these tasks without missing an event), {-1}
# if there is no batch, {-2} if it was cancelled. Replaying an append id (a retry after a lost
# reply) returns the first reply's index and appends nothing.
APPEND = _PRELUDE + """
if not redis.call('HGET', meta, 'total') then return {-1} end
if redis.call('HGET', meta, 'cancelled') == '1' then return {-2} end
local now = ARGV[1]
local seen = redis.call('HGET', apx, ARGV[2])
if seen then return {tonumber(seen), '0-0'} end
local count = #ARGV - 2
local total = redis.call('HINCRBY', meta, 'total', count)
local first = total - count
redis.call('HSET', apx, ARGV[2], first)
local open = redis.call('HGET', meta, 'cancelled') ~= '1' and redis.call('HGET', meta, 'suspended') ~= '1'
-- A worker waiting idle gets the task handed straight to its inbox, already claimed: no queue
-- round trip. Entries are "worker|lease seconds|registration expiry".
local function idle_worker()
  while open do
    local entry = redis.call('LPOP', idle)
    if not entry then return nil end
    local worker, lease_s, expires = string.match(entry, '^(.*)|([^|]*)|([^|]*)$')
    if worker and tonumber(expires) > tonumber(now) then return worker, tonumber(lease_s) end
  end
  return nil
end
local queued, handed = 0, 0
local set_in, set_ts, set_st, queue = {}, {}, {}, {}
for k = 3, #ARGV do
  local i = first + k - 3
  set_in[#set_in + 1] = i; set_in[#set_in + 1] = ARGV[k]
  set_ts[#set_ts + 1] = i; set_ts[#set_ts + 1] = now
  local worker, lease_s = nil, nil
  if queued == 0 then worker, lease_s = idle_worker() end  -- once one is queued, the rest queue too
  if worker then
    local token, a = take(i, worker, now, tonumber(now) + lease_s)
    redis.call('RPUSH', base .. 'inbox:' .. worker, i .. '\\n' .. token .. '\\n' .. a .. '\\n' .. ARGV[k])
    handed = handed + 1
  else
    set_st[#set_st + 1] = i; set_st[#set_st + 1] = 'pending'
    queue[#queue + 1] = i
    queued = queued + 1
  end
end
hset_all(inp, set_in); hset_all(ts_sub, set_ts); hset_all(ts_q, set_ts); hset_all(st, set_st)
chunks(queue, function(...) redis.call('RPUSH', q, ...) end)
redis.call('HINCRBY', meta, 'submitted', count)
if handed > 0 then redis.call('HINCRBY', n, 'processing', handed) end
if queued > 0 then
  redis.call('HINCRBY', n, 'pending', queued)
  redis.call('RPUSH', wake, 1)
  redis.call('LTRIM', wake, -64, -1)
end
local last = redis.call('XREVRANGE', done, '+', '-', 'COUNT', 1)
if #last > 0 then return {first, last[1][1]} end
return {first, '0-0'}
"""

# ARGV: indices... Returns {last_done_id, terminal_count} while some are not terminal, and
# {last_done_id, terminal_count, state1, payload1, ...} (output or error) once all are.
COLLECT = _PRELUDE + """
local last = redis.call('XREVRANGE', done, '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
local k = #ARGV
local total = tonumber(redis.call('HGET', meta, 'total') or '-1')
local function hmget(key)
  local values = {}
  for lo = 1, k, 4000 do
    local hi = math.min(lo + 3999, k)
    local part = redis.call('HMGET', key, unpack(ARGV, lo, hi))
    for j = 1, #part do values[#values + 1] = part[j] end
  end
  return values
end
local terminal = 0
local states = nil
if k == total then
  for _, s in ipairs({'finished', 'failed', 'cancelled'}) do
    terminal = terminal + tonumber(redis.call('HGET', n, s) or '0')
  end
else
  states = hmget(st)
  for _, s in ipairs(states) do
    if s == 'finished' or s == 'failed' or s == 'cancelled' then terminal = terminal + 1 end
  end
end
if terminal < k then return {last_id, terminal} end
states = states or hmget(st)
local result = {last_id, terminal}
for j = 1, k do
  local s = states[j]
  local payload = false
  if s == 'finished' then payload = redis.call('HGET', out, ARGV[j])
  elseif s == 'failed' then
    payload = (redis.call('HGET', ek, ARGV[j]) or 'application') .. '\\0' .. (redis.call('HGET', err, ARGV[j]) or '')
  end
  result[#result + 1] = s
  result[#result + 1] = payload
end
return result
"""

# ARGV: entry. A worker stops waiting: withdraw its idle registration. If a sender already took
# it, a task is (atomically) in the worker's inbox: return that inbox item so it is not missed.
UNIDLE = _PRELUDE + """
local entry = ARGV[1]
if redis.call('LREM', idle, 1, entry) == 1 then return false end
local worker = string.match(entry, '^(.*)|[^|]*|[^|]*$')
return redis.call('LPOP', base .. 'inbox:' .. worker)
"""

# ARGV: total, content digest, now, max_attempts, backoff, backoff_mult, backoff_max, max_infra.
# Declares a batch, atomically: returns {initial-submission cursor, total} — 0 for a new batch, the
# resume point when the same content was declared before — or {-1, total} when the id already
# holds other content. A retry policy the operator wrote from the TaskBatch (policy_source) wins
# over the submitter's.
CREATE = _PRELUDE + """
local total = redis.call('HGET', meta, 'total')
if total then
  if redis.call('HGET', meta, 'digest') ~= ARGV[2] then return {-1, tonumber(total)} end
  return {tonumber(redis.call('HGET', meta, 'cursor') or '0'), tonumber(total)}
end
redis.call('HSET', meta, 'total', ARGV[1], 'submitted', 0, 'cursor', 0, 'digest', ARGV[2], 'created', ARGV[3])
redis.call('HSETNX', meta, 'cancelled', 0)
redis.call('HSETNX', meta, 'suspended', 0)
if redis.call('HGET', meta, 'policy_source') ~= 'taskbatch' then
  redis.call('HSET', meta, 'max_attempts', ARGV[4], 'backoff', ARGV[5], 'backoff_mult', ARGV[6], 'backoff_max', ARGV[7],
             'max_infra', ARGV[8])
end
for _, s in ipairs({'pending', 'processing', 'retrying', 'finished', 'failed', 'cancelled'}) do
  redis.call('HSETNX', n, s, 0)
end
return {0, tonumber(ARGV[1])}
"""

# ARGV: from, now, payloads... Writes the initial submission's tasks from..from+#payloads-1 if the
# cursor stands at `from`, and returns the cursor after it. Otherwise writes nothing and returns
# the cursor: a concurrent submitter of the same content (or this call's own earlier, replayed
# attempt) got there first, and the caller continues from where it stands.
SUBMIT = _PRELUDE + """
local from = tonumber(ARGV[1])
local cursor = tonumber(redis.call('HGET', meta, 'cursor') or '-1')
if cursor ~= from then return cursor end
local now = ARGV[2]
local count = #ARGV - 2
local set_in, set_st, set_ts, queue = {}, {}, {}, {}
for k = 3, #ARGV do
  local i = from + k - 3
  set_in[#set_in + 1] = i; set_in[#set_in + 1] = ARGV[k]
  set_st[#set_st + 1] = i; set_st[#set_st + 1] = 'pending'
  set_ts[#set_ts + 1] = i; set_ts[#set_ts + 1] = now
  queue[#queue + 1] = i
end
hset_all(inp, set_in); hset_all(st, set_st); hset_all(ts_sub, set_ts); hset_all(ts_q, set_ts)
chunks(queue, function(...) redis.call('RPUSH', q, ...) end)
redis.call('HINCRBY', n, 'pending', count)
redis.call('HINCRBY', meta, 'submitted', count)
redis.call('HSET', meta, 'cursor', from + count)
redis.call('RPUSH', wake, 1)
redis.call('LTRIM', wake, -64, -1)
return from + count
"""
