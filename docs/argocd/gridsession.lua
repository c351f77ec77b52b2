-- Argo CD health check for gridop.io/GridSession (resource.customizations.health.gridop.io_GridSession)
local hs = {status = "Progressing", message = "Waiting for the operator"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    conditions[condition.type] = condition
  end
end
local ready, stalled = conditions["Ready"], conditions["Stalled"]
local phase = obj.status.phase
if phase == "Failed" or (stalled ~= nil and stalled.status == "True") then
  hs.status = "Degraded"
  hs.message = (stalled ~= nil and stalled.status == "True" and stalled.message) or (ready ~= nil and ready.message) or "Failed"
elseif phase == "Stopped" then
  hs.status = "Suspended"
  hs.message = "Stopped: " .. ((ready ~= nil and ready.message) or "session stopped")
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
elseif ready ~= nil then
  hs.message = ready.message
end
return hs
