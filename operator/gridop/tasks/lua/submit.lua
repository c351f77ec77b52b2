-- ARGV: from, now, payloads... Writes the initial submission's tasks from..from+#payloads-1 if the
-- cursor stands at `from`, and returns the cursor after it. Otherwise writes nothing and returns
-- the cursor: a concurrent submitter of the same content (or this call's own earlier, replayed
-- attempt) got there first, and the caller continues from where it stands. Returns -2 once the
-- batch was cancelled. One list entry per task for its input, one queue run for the chunk.
-- needs: push_args, nudge
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
