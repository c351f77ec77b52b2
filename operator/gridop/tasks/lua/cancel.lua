-- ARGV: now. Cancels everything not yet terminal, in O(1) of the batch's size: the queue, the
-- retries and the live claims go; a task with no terminal record in a cancelled batch is
-- cancelled. One event says so. Returns {pending, retrying, processing}.
-- needs: (nothing)
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
