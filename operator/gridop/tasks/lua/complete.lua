-- ARGV: now, next_count, worker, lease_seconds, idle_ttl, claim, n_ok, then (i, started, output)
-- per finished task, then (i, outcome, message, started) per failed one: outcome error | timeout
-- (retried within the budget) or fatal | fatal-timeout (failed at once), of kind timeout for the
-- *timeout ones, else application. Results of a claim that is no longer live (its lease lapsed
-- and was swept, or the batch was cancelled) or of tasks already reported are stale and dropped.
-- After recording, the worker's next step happens in the same call: claim up to next_count more,
-- or, when none can be claimed and idle_ttl > 0, register it for direct handoff.
-- Returns {applied, stale, idle entry or false, then a claim or nothing}.
-- needs: hset_all, hmget_all, live_claim, run_of, is_open, queued, claim_work, events, emit, attempt_failed, fail, retry_or_fail, release
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
