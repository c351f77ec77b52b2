-- needs: backoff, attempt_failed, fail
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
