-- needs: parse_runs
-- A claim's runs, from its record ("worker|claimed|run;run;...", kept after the claim ends).
local function runs_of(claim)
  local rec = redis.call('HGET', ch, claim)
  if not rec then return {} end
  return parse_runs(string.match(rec, '^[^|]*|[^|]*|(.*)$'))
end
