-- A partner's webhook deliveries in flight (the limit max_inflight_deliveries,
-- jobgate.limits): an attempt takes a slot when it begins (delivery_begin.lua) and gives
-- it back when it ends (delivery_record.lua, delivery_release.lua). Over the limit the
-- attempt is deferred: it joins the partner's line and waits on the due set, due at a
-- fallback time; a slot that frees brings the first ones in line forward (due now), so
-- they run in the order they were deferred and new attempts queue behind them. Included
-- by those three scripts. Per partner:
--   inflight   zset attempt task id -> lease expiry (a worker that died stops counting)
--   deferred   zset due entry -> when it was first deferred (its place in line)
-- and the partner's mirror (P:partner:<id>) holds its own max_inflight_deliveries.
local INFLIGHT_WAKE_MAX = 100 -- waiting attempts one call brings forward at most

-- The partner's limit: its own, else the default (0: none).
local function inflight_limit(partner_key, default)
  return tonumber(redis.call('HGET', partner_key, 'max_inflight_deliveries'))
    or tonumber(default) or 0
end

-- Slots free under limit (> 0): expired leases are dropped first.
local function inflight_free(inflight, limit, now)
  redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
  return limit - redis.call('ZCARD', inflight)
end

-- Bring the first `free` attempts in line forward (due now, open for a grace more):
-- one already due, or queued or running (open, off the due set), keeps its slot; one
-- neither due nor open has ended and leaves the line. Returns the entries brought forward.
local function inflight_wake(deferred, due, open, free, now, grace)
  local woken, ended, kept = {}, {}, 0
  free = math.min(free, INFLIGHT_WAKE_MAX)
  if free <= 0 then return woken end
  for _, entry in ipairs(redis.call('ZRANGE', deferred, 0, free + INFLIGHT_WAKE_MAX - 1)) do
    if kept >= free then break end
    local at = redis.call('ZSCORE', due, entry)
    if at then
      kept = kept + 1
      if tonumber(at) > now then
        redis.call('ZADD', due, now, entry)
        redis.call('ZADD', open, now + grace, cjson.decode(entry)['id'])
        woken[#woken + 1] = entry
      end
    elseif redis.call('ZSCORE', open, cjson.decode(entry)['id']) then
      kept = kept + 1
    else
      ended[#ended + 1] = entry
    end
  end
  if #ended > 0 then redis.call('ZREM', deferred, unpack(ended)) end
  return woken
end

-- An attempt ended: its slot frees (task_id) and the first in line are brought forward,
-- as far as slots are free (no limit: up to INFLIGHT_WAKE_MAX). Returns those entries.
local function inflight_release(inflight, deferred, partner_key, default, task_id, due, open,
                                now, grace)
  redis.call('ZREM', inflight, task_id)
  if redis.call('EXISTS', deferred) == 0 then return {} end
  local limit = inflight_limit(partner_key, default)
  local free = INFLIGHT_WAKE_MAX
  if limit > 0 then free = inflight_free(inflight, limit, now) end
  return inflight_wake(deferred, due, open, free, now, grace)
end
