-- needs: (nothing)
local function nudge()
  redis.call('RPUSH', wake, 1)
  redis.call('LTRIM', wake, -64, -1)
end
