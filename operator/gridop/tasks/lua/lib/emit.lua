-- needs: events
local function emit()
  if #ev_f == 0 and #ev_x == 0 then return end
  local args = {done, '*'}
  if #ev_f > 0 then
    args[#args + 1] = 'f'; args[#args + 1] = table.concat(ev_f, ',')
    -- Small outputs ride along, so a waiting client needs no second read.
    if ev_bytes <= 16384 and #ev_o == #ev_f then args[#args + 1] = 'o'; args[#args + 1] = table.concat(ev_o, ',') end
  end
  if #ev_x > 0 then args[#args + 1] = 'x'; args[#args + 1] = table.concat(ev_x, ',') end
  redis.call('XADD', unpack(args))
end
