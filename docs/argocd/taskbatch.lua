-- Argo CD health check for gridop.io/TaskBatch (resource.customizations.health.gridop.io_TaskBatch)
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
local message = (ready ~= nil and ready.message) or ""
local phase = obj.status.phase
if phase == "Failed" or (stalled ~= nil and stalled.status == "True") then
  hs.status = "Degraded"
  hs.message = (stalled ~= nil and stalled.status == "True" and stalled.message) or message
elseif phase == "Succeeded" or phase == "Cancelled" then
  hs.status = "Healthy"
  hs.message = message
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message
else
  hs.message = message ~= "" and message or hs.message
end
return hs
