-- Argo CD health check of dsp-mqtt.io/MqttAsset (mqtt-dsp-operator); docs/operations.md says
-- how to install it, e2e/tests/argocd_health.rs tests it. Only Lua 5.1's base library is used:
-- Argo CD runs custom checks without the string and math libraries.

-- Ready=False reasons the operator retries by itself, with backoff (controller::Error::is_retryable):
-- Progressing. Every other reason is a refusal that waits for a change of the resource or of the
-- operator configuration: Degraded.
local retried = {
  Unavailable = true,
  Timeout = true,
  Unreachable = true,
  KubernetesApi = true,
  Finalizer = true,
  CleanupPending = true,
}

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function health()
  local status = obj.status
  if status == nil then
    return { status = "Progressing", message = "waiting for the operator's first status" }
  end
  -- Before the generation check: a paused resource does not observe new generations.
  local paused = condition(status, "Paused")
  if paused ~= nil and paused.status == "True" then
    return { status = "Suspended", message = paused.message or "" }
  end
  local generation = tonumber(obj.metadata.generation)
  local observed = tonumber(status.observedGeneration)
  if generation ~= nil and (observed == nil or observed < generation) then
    return { status = "Progressing", message = "waiting for the operator to observe generation " .. generation }
  end
  local ready = condition(status, "Ready")
  if ready == nil then
    return { status = "Progressing", message = "waiting for the Ready condition" }
  end
  local readyObserved = tonumber(ready.observedGeneration)
  if generation ~= nil and readyObserved ~= nil and readyObserved < generation then
    return { status = "Progressing", message = "waiting for the operator to observe generation " .. generation }
  end
  local message = ready.message or ""
  if ready.status == "True" then
    return { status = "Healthy", message = message }
  end
  if ready.status == "False" and not retried[ready.reason] then
    return { status = "Degraded", message = message }
  end
  return { status = "Progressing", message = message }
end

return health()
