-- needs: (nothing)
-- A failed attempt of kind application | timeout | infrastructure, leaving state `from`: recorded
-- on the task (its last error) and in the batch's counters.
local function attempt_failed(i, kind, message, from)
  redis.call('HSET', err, i, kind .. '\0' .. (message or ''))
  redis.call('HINCRBY', n, 'e:' .. kind, 1)
  redis.call('HINCRBY', n, from, -1)
end
