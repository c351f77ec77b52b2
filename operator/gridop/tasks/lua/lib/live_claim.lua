-- needs: parse_runs, runs_of
-- A live claim, from its entry in cn ("left|run;run;..."): how many of its tasks are not reported
-- yet, its runs, and the runs' text; nil if the claim is not live. (An entry that is a bare count
-- was written by an earlier gridop: its runs are read from the claim's record.)
local function live_claim(claim)
  local entry = redis.call('HGET', cn, claim)
  if not entry then return nil end
  local left, body = string.match(entry, '^(%d+)|(.*)$')
  if not left then return tonumber(entry), runs_of(claim), nil end
  return tonumber(left), parse_runs(body), body
end
