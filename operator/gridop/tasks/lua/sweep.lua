-- ARGV: now, limit. Lapsed claims: their unreported tasks -> retrying/failed; due retries -> pending.
-- needs: nudge, runs_of, emit, retry_or_fail
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
    if string.sub(last, 1, 15) == 'infrastructure\0' then redis.call('RPUSH', q1, e) else redis.call('RPUSH', q, e) end
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
