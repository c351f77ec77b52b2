-- needs: (nothing)
-- Whether any task is queued (an empty list does not exist): one command where an idle worker's
-- claim would make three (the batch's state, then both queues).
local function queued()
  return redis.call('EXISTS', q1, q) > 0
end
