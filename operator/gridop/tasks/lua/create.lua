-- ARGV: total, content digest, now, max_attempts, backoff, backoff_mult, backoff_max, max_infra,
-- open. Declares a batch, atomically: returns {initial-submission cursor, total} -- 0 for a new
-- batch, the resume point when the same content was declared before -- or {-1, total} when the
-- id already holds other content. A streamed submission (open = 1) declares no total up front:
-- it grows with each chunk until the sender closes it; its digest is the send's own id (its
-- content is not known in advance), so only a replay of the same call resumes it. A retry policy the operator wrote from the
-- TaskBatch (policy_source) wins over the submitter's.
-- needs: backoff
local total = redis.call('HGET', meta, 'total')
if total then
  if redis.call('HGET', meta, 'digest') ~= ARGV[2] then return {-1, tonumber(total)} end
  return {tonumber(redis.call('HGET', meta, 'cursor') or '0'), tonumber(total)}
end
local declared = ARGV[1]
if ARGV[9] == '1' then declared = 0 end
redis.call('HSET', meta, 'total', declared, 'submitted', 0, 'cursor', 0, 'digest', ARGV[2], 'created', ARGV[3],
           'open', ARGV[9])
redis.call('HSETNX', meta, 'cancelled', 0)
redis.call('HSETNX', meta, 'suspended', 0)
if redis.call('HGET', meta, 'policy_source') ~= 'taskbatch' then
  redis.call('HSET', meta, 'max_attempts', ARGV[4], 'backoff', ARGV[5], 'backoff_mult', ARGV[6], 'backoff_max', ARGV[7],
             'max_infra', ARGV[8])
end
for _, s in ipairs({'pending', 'processing', 'retrying', 'finished', 'failed', 'cancelled'}) do
  redis.call('HSETNX', n, s, 0)
end
return {0, tonumber(declared)}
