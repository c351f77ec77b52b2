-- needs: events
local function fail(i, claim, started, now)
  redis.call('HSET', t, i, 'x|' .. claim .. '|' .. started .. '|' .. now)
  redis.call('HINCRBY', n, 'failed', 1)
  ev_x[#ev_x + 1] = i
end
