-- needs: (nothing)
-- `reported` more tasks of a live claim were reported; once the last one is, its lease goes.
local function release(claim, left, body, reported)
  if left - reported <= 0 then
    redis.call('HDEL', cn, claim)
    redis.call('ZREM', lease, claim)
  elseif reported > 0 then
    redis.call('HSET', cn, claim, body and ((left - reported) .. '|' .. body) or (left - reported))
  end
end
