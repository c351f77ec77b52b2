-- needs: parse_run
-- Claim up to `count` pending tasks for `worker`: a lone task whose last worker died under it
-- (q1) is claimed alone, so if it is what kills workers it takes no neighbour down with it.
-- Returns {claim, claimed, #runs, runs..., inputs...} or nil.
local function claim_work(worker, count, now, deadline)
  if count <= 0 then return nil end
  local runs, taken = {}, 0
  local solo = redis.call('LPOP', q1)
  if solo then
    runs[1] = solo
    taken = 1
  else
    while taken < count do
      local e = redis.call('LPOP', q)
      if not e then break end
      local lo, hi, a, sub, qd = parse_run(e)
      local k = math.min(count - taken, hi - lo + 1)
      if lo + k <= hi then
        redis.call('LPUSH', q, (lo + k) .. ':' .. hi .. ':' .. a .. ':' .. sub .. ':' .. qd)
        e = lo .. ':' .. (lo + k - 1) .. ':' .. a .. ':' .. sub .. ':' .. qd
      end
      runs[#runs + 1] = e
      taken = taken + k
    end
  end
  if taken == 0 then return nil end
  local claim = worker .. ':' .. redis.call('HINCRBY', meta, 'claims', 1)
  redis.call('HSET', ch, claim, worker .. '|' .. now .. '|' .. table.concat(runs, ';'))
  redis.call('HSET', cn, claim, taken .. '|' .. table.concat(runs, ';'))
  redis.call('ZADD', lease, deadline, claim)
  redis.call('HINCRBY', n, 'pending', -taken)
  redis.call('HINCRBY', n, 'processing', taken)
  local reply = {claim, now, #runs}
  for _, e in ipairs(runs) do reply[#reply + 1] = e end
  for _, e in ipairs(runs) do
    local lo, hi = parse_run(e)
    for _, v in ipairs(redis.call('LRANGE', inl, lo, hi)) do reply[#reply + 1] = v end
  end
  return reply
end
