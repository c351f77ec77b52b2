-- No ARGV. The batch's meta and counters, read atomically (a submission chunk moves both).
-- needs: (nothing)
return {redis.call('HGETALL', meta), redis.call('HGETALL', n)}
