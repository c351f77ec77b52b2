-- ARGV: count, now, lease_deadline, worker. Returns a claim (see claim_work) or {}.
-- needs: is_open, queued, claim_work
if not queued() or not is_open() then return {} end
return claim_work(ARGV[4], tonumber(ARGV[1]), ARGV[2], ARGV[3]) or {}
