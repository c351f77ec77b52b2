-- needs: chunks
local function hset_all(key, pairs) chunks(pairs, function(...) redis.call('HSET', key, ...) end) end
