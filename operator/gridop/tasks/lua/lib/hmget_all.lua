-- needs: chunks
local function hmget_all(key, fields)
  local values = {}
  chunks(fields, function(...)
    local part = redis.call('HMGET', key, ...)
    for j = 1, #part do values[#values + 1] = part[j] end
  end)
  return values
end
