-- ARGV: indices... Their records and last errors, the batch's live claims with their runs, and
-- its meta {cancelled, total, cancelled_at}: what a reader needs to tell each task's state, read
-- atomically.
-- needs: hmget_all
local ids = {}
for k = 1, #ARGV do ids[k] = ARGV[k] end
local live = redis.call('HKEYS', cn)
local runs = {}
if #live > 0 then runs = hmget_all(ch, live) end
return {hmget_all(t, ids), hmget_all(err, ids), live, runs, redis.call('HMGET', meta, 'cancelled', 'total', 'cancelled_at')}
