-- needs: (nothing)
-- Bulk writes: one command per key per script instead of one per task (Redis time per task is
-- dominated by command dispatch).
local function chunks(list, fn, step)
  step = step or 4000
  for lo = 1, #list, step do fn(unpack(list, lo, math.min(lo + step - 1, #list))) end
end
