-- needs: parse_run
-- "run;run;..." -> list of {lo, hi, attempt, submitted}.
local function parse_runs(body)
  local runs = {}
  for e in string.gmatch(body, '[^;]+') do
    local lo, hi, a, sub = parse_run(e)
    runs[#runs + 1] = {lo, hi, a, sub}
  end
  return runs
end
