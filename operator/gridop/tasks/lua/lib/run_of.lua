-- needs: (nothing)
local function run_of(runs, i)
  i = tonumber(i)
  for _, r in ipairs(runs) do
    if i and i >= r[1] and i <= r[2] then return r end
  end
  return nil
end
