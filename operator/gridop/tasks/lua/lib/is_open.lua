-- needs: (nothing)
local function is_open()
  local flags = redis.call('HMGET', meta, 'cancelled', 'suspended')
  return flags[1] ~= '1' and flags[2] ~= '1'
end
