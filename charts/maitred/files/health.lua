-- Argo CD health of a maitred.dev/PostgresPooler, from the status the operator writes
-- (operator/pooler_operator/status.py): Suspended while spec.paused, Progressing until the operator has
-- reconciled the current generation and while pods come up or roll, Degraded when its Degraded condition
-- (or a misconfigured autotuner) asks for a person, Healthy when Ready.
local hs = {}

local function condition(conditions, kind)
  for _, c in ipairs(conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function say(c)
  local message = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    message = message .. ": " .. c.message
  end
  return message
end

if obj.spec ~= nil and obj.spec.paused == true then
  hs.status = "Suspended"
  hs.message = "spec.paused: the operator leaves the pooler's objects as they are"
  return hs
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile generation " .. generation
  return hs
end

local degraded = condition(status.conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = say(degraded)
  return hs
end

local applied = condition(status.conditions, "ConfigApplied")
if applied ~= nil and applied.status == "False" then
  hs.status = "Degraded"
  hs.message = say(applied)
  return hs
end

local autotuned = condition(status.conditions, "Autotuned")
if autotuned ~= nil and autotuned.status == "False" and autotuned.reason == "Misconfigured" then
  hs.status = "Degraded"
  hs.message = say(autotuned)
  return hs
end

local ready = condition(status.conditions, "Ready")
if ready == nil or ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = ready ~= nil and say(ready) or "Waiting for the Ready condition"
  return hs
end
if ready.reason == "RollingOut" then
  hs.status = "Progressing"
  hs.message = say(ready)
  return hs
end

hs.status = "Healthy"
hs.message = say(ready)
if autotuned ~= nil and autotuned.reason == "Holding" then
  hs.message = hs.message .. "; autotuner " .. say(autotuned)
end
return hs
