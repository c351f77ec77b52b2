-- ARGV: entry, holding ('1' when the worker already took a handed-over task), and with holding,
-- the registration to put in its place. A worker stops waiting: withdraw its idle registration.
-- If a sender consumed it, a task was handed over for it: return one (unless the worker already
-- holds one), so none is left waiting for its lease. A worker that took the task handed over for
-- another (Redis serves blocked readers in the order they blocked, which need not be the order
-- they registered in) gives its registration to that worker, which is still waiting: the next
-- hand-off then goes to the worker that will receive it, rather than crossing over again.
-- needs: (nothing)
if redis.call('LREM', idle, 1, ARGV[1]) == 1 then
  if ARGV[3] then redis.call('LPUSH', idle, ARGV[3]) end
  return false
end
if ARGV[2] == '1' then return false end
return redis.call('LPOP', hand)
