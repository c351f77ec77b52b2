-- needs: (nothing)
-- ARGV[from..#ARGV] pushed onto a list, 4,000 at a time (Lua's stack limit); returns its length.
local function push_args(key, from)
  local len
  for lo = from, #ARGV, 4000 do len = redis.call('RPUSH', key, unpack(ARGV, lo, math.min(lo + 3999, #ARGV))) end
  return len
end
