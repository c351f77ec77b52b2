-- needs: (nothing)
local function backoff(a)
  local base = tonumber(redis.call('HGET', meta, 'backoff') or '1')
  local mult = tonumber(redis.call('HGET', meta, 'backoff_mult') or '2')
  local cap = tonumber(redis.call('HGET', meta, 'backoff_max') or '60')
  local d = base * (mult ^ (a - 1))
  if d > cap then d = cap end
  return d
end
