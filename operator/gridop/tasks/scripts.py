"""Lua scripts: every state transition is one atomic script over a whole batch of tasks.

Every key a script touches is declared in KEYS (the batch's keys, all under one `{sid}` hash
tag, so a batch lives on one Redis Cluster slot and its scripts run on one shard). The layout is
chosen so that the hot path writes as little per task as possible:

- the queue holds *runs* of pending tasks (`lo:hi:attempt:submitted:queued`), not one entry per
  task: a submission chunk of 5,000 tasks is one list entry, and a claim splits a run;
- a claim is one lease entry, one claim record (its runs) and one count, whatever its size: the
  tasks of a live claim need no per-task bookkeeping at all;
- a task gets one record field when it leaves a claim (`t`: finished with its output, failed, or
  retrying), written once;
- one terminal event per script call (indices as a comma list, small outputs alongside), not
  one per task; cancelling a batch is one event and O(1) in its size.
"""

from __future__ import annotations

import re

# Key roles, in KEYS[] order for every script.
KEYS = ("meta", "q", "q1", "t", "in", "err", "fa", "ia", "lease", "cn", "ch", "retry", "n", "done", "wake",
        "idle", "hand", "apx")

_PRELUDE = """
local meta, q, q1, t, inl, err, fa, ia = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local lease, cn, ch, retry, n, done, wake = KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local idle, hand, apx = KEYS[16], KEYS[17], KEYS[18]
-- Bulk writes: one command per key per script instead of one per task (Redis time per task is
-- dominated by command dispatch).
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
-- ARGV[from..#ARGV] pushed onto a list, 4,000 at a time (Lua's stack limit); returns its length.
local function push_args(key, from)
  local len
  for lo = from, #ARGV, 4000 do len = redis.call('RPUSH', key, unpack(ARGV, lo, math.min(lo + 3999, #ARGV))) end
  return len
end
local function nudge()
  redis.call('RPUSH', wake, 1)
  redis.call('LTRIM', wake, -64, -1)
end
-- A run of pending tasks: "lo:hi:attempt:submitted:queued".
local function parse_run(e)
  local lo, hi, a, sub, qd = string.match(e, '^(%d+):(%d+):(%d+):([^:]*):([^:]*)$')
  return tonumber(lo), tonumber(hi), tonumber(a), sub, qd
end
-- "run;run;..." -> list of {lo, hi, attempt, submitted}.
local function parse_runs(body)
  local runs = {}
  for e in string.gmatch(body, '[^;]+') do
    local lo, hi, a, sub = parse_run(e)
    runs[#runs + 1] = {lo, hi, a, sub}
  end
  return runs
end
-- A claim's runs, from its record ("worker|claimed|run;run;...", kept after the claim ends).
local function runs_of(claim)
  local rec = redis.call('HGET', ch, claim)
  if not rec then return {} end
  return parse_runs(string.match(rec, '^[^|]*|[^|]*|(.*)$'))
end
-- A live claim, from its entry in cn ("left|run;run;..."): how many of its tasks are not reported
-- yet, its runs, and the runs' text; nil if the claim is not live. (An entry that is a bare count
-- was written by an earlier gridop: its runs are read from the claim's record.)
local function live_claim(claim)
  local entry = redis.call('HGET', cn, claim)
  if not entry then return nil end
  local left, body = string.match(entry, '^(%d+)|(.*)$')
  if not left then return tonumber(entry), runs_of(claim), nil end
  return tonumber(left), parse_runs(body), body
end
local function run_of(runs, i)
  i = tonumber(i)
  for _, r in ipairs(runs) do
    if i and i >= r[1] and i <= r[2] then return r end
  end
  return nil
end
local function backoff(a)
  local base = tonumber(redis.call('HGET', meta, 'backoff') or '1')
  local mult = tonumber(redis.call('HGET', meta, 'backoff_mult') or '2')
  local cap = tonumber(redis.call('HGET', meta, 'backoff_max') or '60')
  local d = base * (mult ^ (a - 1))
  if d > cap then d = cap end
  return d
end
local function is_open()
  local flags = redis.call('HMGET', meta, 'cancelled', 'suspended')
  return flags[1] ~= '1' and flags[2] ~= '1'
end
-- Whether any task is queued (an empty list does not exist): one command where an idle worker's
-- claim would make three (the batch's state, then both queues).
local function queued()
  return redis.call('EXISTS', q1, q) > 0
end
-- Claim up to `count` pending tasks for `worker`: a lone task whose last worker died under it
-- (q1) is claimed alone, so if it is what kills workers it takes no neighbour down with it.
-- Returns {claim, claimed, #runs, runs..., inputs...} or nil.
local function claim_work(worker, count, now, deadline)
  if count <= 0 then return nil end
  local runs, taken = {}, 0
  local solo = redis.call('LPOP', q1)
  if solo then
    runs[1] = solo
    taken = 1
  else
    while taken < count do
      local e = redis.call('LPOP', q)
      if not e then break end
      local lo, hi, a, sub, qd = parse_run(e)
      local k = math.min(count - taken, hi - lo + 1)
      if lo + k <= hi then
        redis.call('LPUSH', q, (lo + k) .. ':' .. hi .. ':' .. a .. ':' .. sub .. ':' .. qd)
        e = lo .. ':' .. (lo + k - 1) .. ':' .. a .. ':' .. sub .. ':' .. qd
      end
      runs[#runs + 1] = e
      taken = taken + k
    end
  end
  if taken == 0 then return nil end
  local claim = worker .. ':' .. redis.call('HINCRBY', meta, 'claims', 1)
  redis.call('HSET', ch, claim, worker .. '|' .. now .. '|' .. table.concat(runs, ';'))
  redis.call('HSET', cn, claim, taken .. '|' .. table.concat(runs, ';'))
  redis.call('ZADD', lease, deadline, claim)
  redis.call('HINCRBY', n, 'pending', -taken)
  redis.call('HINCRBY', n, 'processing', taken)
  local reply = {claim, now, #runs}
  for _, e in ipairs(runs) do reply[#reply + 1] = e end
  for _, e in ipairs(runs) do
    local lo, hi = parse_run(e)
    for _, v in ipairs(redis.call('LRANGE', inl, lo, hi)) do reply[#reply + 1] = v end
  end
  return reply
end
-- Terminal events of this call, written as one stream entry at the end.
local ev_f, ev_o, ev_x, ev_bytes = {}, {}, {}, 0
local function emit()
  if #ev_f == 0 and #ev_x == 0 then return end
  local args = {done, '*'}
  if #ev_f > 0 then
    args[#args + 1] = 'f'; args[#args + 1] = table.concat(ev_f, ',')
    -- Small outputs ride along, so a waiting client needs no second read.
    if ev_bytes <= 16384 and #ev_o == #ev_f then args[#args + 1] = 'o'; args[#args + 1] = table.concat(ev_o, ',') end
  end
  if #ev_x > 0 then args[#args + 1] = 'x'; args[#args + 1] = table.concat(ev_x, ',') end
  redis.call('XADD', unpack(args))
end
-- A failed attempt of kind application | timeout | infrastructure, leaving state `from`: recorded
-- on the task (its last error) and in the batch's counters.
local function attempt_failed(i, kind, message, from)
  redis.call('HSET', err, i, kind .. '\\0' .. (message or ''))
  redis.call('HINCRBY', n, 'e:' .. kind, 1)
  redis.call('HINCRBY', n, from, -1)
end
local function fail(i, claim, started, now)
  redis.call('HSET', t, i, 'x|' .. claim .. '|' .. started .. '|' .. now)
  redis.call('HINCRBY', n, 'failed', 1)
  ev_x[#ev_x + 1] = i
end
-- A failed attempt, retried with backoff while the budget for its kind lasts (infrastructure
-- failures -- a lost lease: the worker died or was cut off -- have a budget of their own, so they
-- never spend the application's retries), else failed.
local function retry_or_fail(i, r, claim, started, now, kind, message, from)
  attempt_failed(i, kind, message, from)
  local allowed
  if kind == 'infrastructure' then
    allowed = redis.call('HINCRBY', ia, i, 1) <= tonumber(redis.call('HGET', meta, 'max_infra') or '3')
  else
    allowed = redis.call('HINCRBY', fa, i, 1) < tonumber(redis.call('HGET', meta, 'max_attempts') or '1')
  end
  if allowed and redis.call('HGET', meta, 'cancelled') ~= '1' then
    redis.call('HSET', t, i, 'r|' .. claim .. '|' .. started .. '|' .. now)
    redis.call('ZADD', retry, tonumber(now) + backoff(r[3]), i .. ':' .. r[3] .. ':' .. r[4])
    redis.call('HINCRBY', n, 'retrying', 1)
    return 'retrying'
  end
  fail(i, claim, started, now)
  return 'failed'
end
-- `reported` more tasks of a live claim were reported; once the last one is, its lease goes.
local function release(claim, left, body, reported)
  if left - reported <= 0 then
    redis.call('HDEL', cn, claim)
    redis.call('ZREM', lease, claim)
  elseif reported > 0 then
    redis.call('HSET', cn, claim, body and ((left - reported) .. '|' .. body) or (left - reported))
  end
end
"""


def _fragments(prelude: str) -> list[tuple[set[str], str]]:
    """The prelude's top-level pieces (a helper with the comment above it), each with the names it defines."""
    pieces: list[list[str]] = []
    for line in prelude.strip("\n").split("\n"):
        top = line.startswith(("local ", "-- "))
        after_comment = bool(pieces) and pieces[-1][-1].startswith("--")
        if not pieces or (top and not after_comment):
            pieces.append([line])
        else:
            pieces[-1].append(line)
    fragments = []
    for piece in pieces:
        names: set[str] = set()
        for line in piece:
            if m := re.match(r"local function (\w+)", line):
                names.add(m.group(1))
            elif m := re.match(r"local ([\w, ]+?) =", line):
                names.update(name.strip() for name in m.group(1).split(","))
        fragments.append((names, "\n".join(piece)))
    return fragments


_FRAGMENTS = _fragments(_PRELUDE)


def _script(body: str) -> str:
    """`body` after the prelude's pieces it uses, directly or through another piece. Lua runs the
    whole text on every call: the helper functions a script never calls would be built as
    closures each time (measurable on a round trip's two scripts). A Lua local is defined before
    it is used, so one pass from the last piece back to the first finds them all."""
    needed, used = body, []
    for names, fragment in reversed(_FRAGMENTS):
        if any(re.search(rf"\b{name}\b", needed) for name in names):
            used.append(fragment)
            needed += "\n" + fragment
    return "\n".join([*reversed(used), body])

# ARGV: count, now, lease_deadline, worker. Returns a claim (see claim_work) or {}.
CLAIM = _script("""
if not queued() or not is_open() then return {} end
return claim_work(ARGV[4], tonumber(ARGV[1]), ARGV[2], ARGV[3]) or {}
""")

# ARGV: now, next_count, worker, lease_seconds, idle_ttl, claim, n_ok, then (i, started, output)
# per finished task, then (i, outcome, message, started) per failed one: outcome error | timeout
# (retried within the budget) or fatal | fatal-timeout (failed at once), of kind timeout for the
# *timeout ones, else application. Results of a claim that is no longer live (its lease lapsed
# and was swept, or the batch was cancelled) or of tasks already reported are stale and dropped.
# After recording, the worker's next step happens in the same call: claim up to next_count more,
# or, when none can be claimed and idle_ttl > 0, register it for direct handoff.
# Returns {applied, stale, idle entry or false, then a claim or nothing}.
COMPLETE = _script("""
local now, next_count, worker, lease_s, idle_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local claim, n_ok = ARGV[6], tonumber(ARGV[7])
local first_failure = 8 + n_ok * 3
local applied, stale, finished, failed_now = 0, 0, 0, 0
local left, runs, body = live_claim(claim)
local live = left ~= nil
runs = runs or {}
-- While no task of the claim has been reported (the claim's size is left), none of these can
-- have been: only a replayed or repeated report needs to look (a task's record says it was).
local size = 0
for _, r in ipairs(runs) do size = size + r[2] - r[1] + 1 end
local fresh, now_seen = live and left == size, {}
local function reported_before(i)
  if fresh then return now_seen[i] end
  return redis.call('HGET', t, i)
end
if live and n_ok > 0 then
  local ids = {}
  for k = 8, first_failure - 1, 3 do ids[#ids + 1] = ARGV[k] end
  local seen = fresh and {} or hmget_all(t, ids)
  local set_t = {}
  for j, i in ipairs(ids) do
    local k = 8 + (j - 1) * 3
    if not seen[j] and not now_seen[i] and run_of(runs, i) then
      now_seen[i] = true
      local output = ARGV[k + 2]
      set_t[#set_t + 1] = i
      set_t[#set_t + 1] = 'f|' .. claim .. '|' .. ARGV[k + 1] .. '|' .. now .. '|' .. output
      ev_f[#ev_f + 1] = i
      ev_o[#ev_o + 1] = output
      ev_bytes = ev_bytes + #output + 1
      finished = finished + 1
    else
      stale = stale + 1
    end
  end
  hset_all(t, set_t)
else
  stale = stale + n_ok
end
for k = first_failure, #ARGV, 4 do
  local i, outcome, message, started = ARGV[k], ARGV[k + 1], ARGV[k + 2], ARGV[k + 3]
  local r = live and run_of(runs, i)
  if r and not reported_before(i) then
    now_seen[i] = true
    local kind = 'application'
    if outcome == 'timeout' or outcome == 'fatal-timeout' then kind = 'timeout' end
    if outcome == 'error' or outcome == 'timeout' then
      retry_or_fail(i, r, claim, started, now, kind, message, 'processing')
    else
      attempt_failed(i, kind, message, 'processing')
      fail(i, claim, started, now)
    end
    failed_now = failed_now + 1
  else
    stale = stale + 1
  end
end
applied = finished + failed_now
if finished > 0 then
  redis.call('HINCRBY', n, 'processing', -finished)
  redis.call('HINCRBY', n, 'finished', finished)
end
if live then release(claim, left, body, applied) end
emit()
local result = {applied, stale, false}
if next_count > 0 then
  -- (no task queued: offered for hand-off, whatever the batch's state -- an append hands over
  -- nothing while it is suspended, and refuses tasks once it is cancelled)
  local got = queued() and is_open() and claim_work(worker, next_count, now, tonumber(now) + tonumber(lease_s))
  if got then
    for _, v in ipairs(got) do result[#result + 1] = v end
  elseif idle_ttl > 0 then
    local entry = worker .. '|' .. lease_s .. '|' .. (tonumber(now) + idle_ttl)
    redis.call('RPUSH', idle, entry)
    result[3] = entry
  end
end
return result
""")

# ARGV: deadline, then the claims this worker holds. Extends the live ones; returns the others
# (cancelled, or reclaimed after a lapsed lease).
HEARTBEAT = _script("""
local lost = {}
for k = 2, #ARGV do
  if redis.call('ZSCORE', lease, ARGV[k]) then
    redis.call('ZADD', lease, 'XX', ARGV[1], ARGV[k])
  else
    lost[#lost + 1] = ARGV[k]
  end
end
return lost
""")

# ARGV: now, limit. Lapsed claims: their unreported tasks -> retrying/failed; due retries -> pending.
SWEEP = _script("""
local now, limit = ARGV[1], tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', lease, '-inf', now, 'LIMIT', 0, limit)
local retried, failed = 0, 0
for _, claim in ipairs(expired) do
  redis.call('ZREM', lease, claim)
  redis.call('HDEL', cn, claim)
  for _, r in ipairs(runs_of(claim)) do
    for i = r[1], r[2] do
      if not redis.call('HGET', t, i) then
        if retry_or_fail(i, r, claim, '', now, 'infrastructure',
                         'lease expired: the worker stopped heartbeating (lost or killed)', 'processing') == 'failed' then
          failed = failed + 1
        else
          retried = retried + 1
        end
      end
    end
  end
end
local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, limit)
local requeued = 0
for _, member in ipairs(due) do
  redis.call('ZREM', retry, member)
  local i, a, sub = string.match(member, '^(%d+):(%d+):(.*)$')
  local rec = redis.call('HGET', t, i)
  if rec and string.sub(rec, 1, 1) == 'r' then
    redis.call('HDEL', t, i)
    local e = i .. ':' .. i .. ':' .. (tonumber(a) + 1) .. ':' .. sub .. ':' .. now
    local last = redis.call('HGET', err, i) or ''
    if string.sub(last, 1, 15) == 'infrastructure\\0' then redis.call('RPUSH', q1, e) else redis.call('RPUSH', q, e) end
    requeued = requeued + 1
  end
end
if requeued > 0 then
  redis.call('HINCRBY', n, 'retrying', -requeued)
  redis.call('HINCRBY', n, 'pending', requeued)
  nudge()
end
emit()
return {#expired, retried, failed, requeued}
""")

# ARGV: now. Cancels everything not yet terminal, in O(1) of the batch's size: the queue, the
# retries and the live claims go; a task with no terminal record in a cancelled batch is
# cancelled. One event says so. Returns {pending, retrying, processing}.
CANCEL = _script("""
redis.call('HSET', meta, 'cancelled', '1', 'cancelled_at', ARGV[1])
local c = redis.call('HMGET', n, 'pending', 'retrying', 'processing')
local p, r, x = tonumber(c[1] or '0'), tonumber(c[2] or '0'), tonumber(c[3] or '0')
redis.call('DEL', q, q1, retry, lease, cn, idle, hand)
if p > 0 then redis.call('HINCRBY', n, 'pending', -p) end
if r > 0 then redis.call('HINCRBY', n, 'retrying', -r) end
if x > 0 then redis.call('HINCRBY', n, 'processing', -x) end
if p + r + x > 0 then
  redis.call('HINCRBY', n, 'cancelled', p + r + x)
  redis.call('XADD', done, '*', 'c', '1')
end
return {p, r, x}
""")

# ARGV: now, append id, payloads... Appends to an existing batch; returns {first new index, last
# terminal-event id} (the id lets the caller wait for these tasks without missing an event), {-1}
# if there is no batch, {-2} if it was cancelled, {-3} while its initial submission is still
# being written. Replaying an append id (a retry after a lost reply) returns the first reply's
# index and appends nothing. An idle worker waiting on the batch gets a task handed over, already
# claimed for it: no queue round trip.
APPEND = _script("""
-- One read and one write of the batch's meta hash (its state, counters and claim sequence):
-- this script is on every single-task round trip's path.
local m = redis.call('HMGET', meta, 'total', 'cancelled', 'suspended', 'submitted', 'claims')
if not m[1] then return {-1} end
if m[2] == '1' then return {-2} end
local seen = redis.call('HGET', apx, ARGV[2])
if seen then return {tonumber(seen), '0-0'} end
local first = tonumber(m[1])
local now, count = ARGV[1], #ARGV - 2
if push_args(inl, 3) ~= first + count then
  redis.call('LTRIM', inl, 0, -count - 1)  -- the first submission is still being written: not yet
  return {-3}
end
redis.call('HSET', apx, ARGV[2], first)
local i, last, handed, claims = first, first + count - 1, 0, tonumber(m[5] or '0')
while m[3] ~= '1' and i <= last do
  -- Idle registrations are "worker|lease seconds|registration expiry".
  local entry = redis.call('LPOP', idle)
  if not entry then break end
  local worker, lease_s, expires = string.match(entry, '^(.*)|([^|]*)|([^|]*)$')
  if worker and tonumber(expires) > tonumber(now) then
    local run = i .. ':' .. i .. ':1:' .. now .. ':' .. now
    claims = claims + 1
    local claim = worker .. ':' .. claims
    redis.call('HSET', ch, claim, worker .. '|' .. now .. '|' .. run)
    redis.call('HSET', cn, claim, '1|' .. run)
    redis.call('ZADD', lease, tonumber(now) + tonumber(lease_s), claim)
    redis.call('RPUSH', hand, claim .. '\\n' .. now .. '\\n' .. run .. '\\n' .. ARGV[3 + i - first])
    i = i + 1
    handed = handed + 1
  end
end
redis.call('HSET', meta, 'total', first + count, 'submitted', tonumber(m[4] or '0') + count, 'claims', claims)
if handed > 0 then redis.call('HINCRBY', n, 'processing', handed) end
if i <= last then
  redis.call('RPUSH', q, i .. ':' .. last .. ':1:' .. now .. ':' .. now)
  redis.call('HINCRBY', n, 'pending', last - i + 1)
  nudge()
end
local newest = redis.call('XREVRANGE', done, '+', '-', 'COUNT', 1)
if #newest > 0 then return {first, newest[1][1]} end
return {first, '0-0'}
""")

# ARGV: entry, holding ('1' when the worker already took a handed-over task), and with holding,
# the registration to put in its place. A worker stops waiting: withdraw its idle registration.
# If a sender consumed it, a task was handed over for it: return one (unless the worker already
# holds one), so none is left waiting for its lease. A worker that took the task handed over for
# another (Redis serves blocked readers in the order they blocked, which need not be the order
# they registered in) gives its registration to that worker, which is still waiting: the next
# hand-off then goes to the worker that will receive it, rather than crossing over again.
UNIDLE = _script("""
if redis.call('LREM', idle, 1, ARGV[1]) == 1 then
  if ARGV[3] then redis.call('LPUSH', idle, ARGV[3]) end
  return false
end
if ARGV[2] == '1' then return false end
return redis.call('LPOP', hand)
""")

# ARGV: total, content digest, now, max_attempts, backoff, backoff_mult, backoff_max, max_infra,
# open. Declares a batch, atomically: returns {initial-submission cursor, total} -- 0 for a new
# batch, the resume point when the same content was declared before -- or {-1, total} when the
# id already holds other content. A streamed submission (open = 1) declares no total up front:
# it grows with each chunk until the sender closes it; its digest is the send's own id (its
# content is not known in advance), so only a replay of the same call resumes it. A retry policy the operator wrote from the
# TaskBatch (policy_source) wins over the submitter's.
CREATE = _script("""
local total = redis.call('HGET', meta, 'total')
if total then
  if redis.call('HGET', meta, 'digest') ~= ARGV[2] then return {-1, tonumber(total)} end
  return {tonumber(redis.call('HGET', meta, 'cursor') or '0'), tonumber(total)}
end
local declared = ARGV[1]
if ARGV[9] == '1' then declared = 0 end
redis.call('HSET', meta, 'total', declared, 'submitted', 0, 'cursor', 0, 'digest', ARGV[2], 'created', ARGV[3],
           'open', ARGV[9])
redis.call('HSETNX', meta, 'cancelled', 0)
redis.call('HSETNX', meta, 'suspended', 0)
if redis.call('HGET', meta, 'policy_source') ~= 'taskbatch' then
  redis.call('HSET', meta, 'max_attempts', ARGV[4], 'backoff', ARGV[5], 'backoff_mult', ARGV[6], 'backoff_max', ARGV[7],
             'max_infra', ARGV[8])
end
for _, s in ipairs({'pending', 'processing', 'retrying', 'finished', 'failed', 'cancelled'}) do
  redis.call('HSETNX', n, s, 0)
end
return {0, tonumber(declared)}
""")

# ARGV: from, now, payloads... Writes the initial submission's tasks from..from+#payloads-1 if the
# cursor stands at `from`, and returns the cursor after it. Otherwise writes nothing and returns
# the cursor: a concurrent submitter of the same content (or this call's own earlier, replayed
# attempt) got there first, and the caller continues from where it stands. Returns -2 once the
# batch was cancelled. One list entry per task for its input, one queue run for the chunk.
SUBMIT = _script("""
local from = tonumber(ARGV[1])
local cursor = tonumber(redis.call('HGET', meta, 'cursor') or '-1')
if cursor ~= from then return cursor end
if redis.call('HGET', meta, 'cancelled') == '1' then return -2 end
local now, count = ARGV[2], #ARGV - 2
push_args(inl, 3)
redis.call('RPUSH', q, from .. ':' .. (from + count - 1) .. ':1:' .. now .. ':' .. now)
redis.call('HINCRBY', n, 'pending', count)
redis.call('HINCRBY', meta, 'submitted', count)
if redis.call('HGET', meta, 'open') == '1' then redis.call('HINCRBY', meta, 'total', count) end
redis.call('HSET', meta, 'cursor', from + count)
nudge()
return from + count
""")

# No ARGV. The batch's meta and counters, read atomically (a submission chunk moves both).
SNAPSHOT = _script("""
return {redis.call('HGETALL', meta), redis.call('HGETALL', n)}
""")

# ARGV: indices... Their records and last errors, the batch's live claims with their runs, and
# its meta {cancelled, total, cancelled_at}: what a reader needs to tell each task's state, read
# atomically.
RECORDS = _script("""
local ids = {}
for k = 1, #ARGV do ids[k] = ARGV[k] end
local live = redis.call('HKEYS', cn)
local runs = {}
if #live > 0 then runs = hmget_all(ch, live) end
return {hmget_all(t, ids), hmget_all(err, ids), live, runs, redis.call('HMGET', meta, 'cancelled', 'total', 'cancelled_at')}
""")
