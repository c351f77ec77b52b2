-- needs: (nothing)
-- A run of pending tasks: "lo:hi:attempt:submitted:queued".
local function parse_run(e)
  local lo, hi, a, sub, qd = string.match(e, '^(%d+):(%d+):(%d+):([^:]*):([^:]*)$')
  return tonumber(lo), tonumber(hi), tonumber(a), sub, qd
end
