-- ARGV: deadline, then the claims this worker holds. Extends the live ones; returns the others
-- (cancelled, or reclaimed after a lapsed lease).
-- needs: (nothing)
local lost = {}
for k = 2, #ARGV do
  if redis.call('ZSCORE', lease, ARGV[k]) then
    redis.call('ZADD', lease, 'XX', ARGV[1], ARGV[k])
  else
    lost[#lost + 1] = ARGV[k]
  end
end
return lost
