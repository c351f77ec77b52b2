-- ARGV: now, append id, payloads... Appends to an existing batch; returns {first new index, last
-- terminal-event id} (the id lets the caller wait for these tasks without missing an event), {-1}
-- if there is no batch, {-2} if it was cancelled, {-3} while its initial submission is still
-- being written. Replaying an append id (a retry after a lost reply) returns the first reply's
-- index and appends nothing. An idle worker waiting on the batch gets a task handed over, already
-- claimed for it: no queue round trip.
-- needs: push_args, nudge
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
    redis.call('RPUSH', hand, claim .. '\n' .. now .. '\n' .. run .. '\n' .. ARGV[3 + i - first])
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
