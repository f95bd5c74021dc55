-- A registered endpoint's pace (jobgate.webhooks.throttle): its rate_limit (deliveries
-- per second) and a pause its receiver asked for (429 or 503 with Retry-After, written
-- by endpoint_pause.lua). Included by delivery_begin.lua. Per endpoint, under its key
-- (P:endpoint:<id>), all of it harmless to lose (a lost key only lets a burst through):
--   :next    the time of the endpoint's next free turn (a turn every 1/rate s)
--   :slots   zset attempt task id -> the turn it was given, for attempts waiting on it
--   :paused  until when the receiver asked to be left alone
local THROTTLE_EARLY = 0.005 -- a turn this close is taken now (clocks, float rounding)

-- The value of `name` in a flat HGETALL reply, or nil.
local function throttle_field(pairs_, name)
  for i = 1, #pairs_, 2 do
    if pairs_[i] == name then return pairs_[i + 1] end
  end
  return nil
end

-- When attempt `task_id` to the endpoint at `base` may be sent: nil for now (its turn
-- taken), else the time of its turn (given to it, kept for it in :slots). `rate` is the
-- endpoint's rate_limit (nil or 0: none), `ttl` what the keys outlive the turn by.
local function throttle_turn(base, task_id, rate, now, ttl)
  local paused = tonumber(redis.call('GET', base .. ':paused')) or 0
  if (not rate or rate <= 0) and paused <= now then return nil end
  local slots, next_key = base .. ':slots', base .. ':next'
  local mine = tonumber(redis.call('ZSCORE', slots, task_id))
  if mine then
    if mine >= paused then -- given before no pause that covers it: still its turn
      if mine > now + THROTTLE_EARLY then return mine end -- brought forward early
      redis.call('ZREM', slots, task_id)
      return nil
    end
    redis.call('ZREM', slots, task_id) -- a pause came over it: a new turn, after it
  end
  local every = 0
  if rate and rate > 0 then every = 1 / rate end
  local turn = math.max(now, tonumber(redis.call('GET', next_key)) or 0, paused)
  redis.call('SET', next_key, tostring(turn + every), 'PX',
             math.ceil((turn + every - now + ttl) * 1000))
  if turn <= now + THROTTLE_EARLY then return nil end
  redis.call('ZADD', slots, turn, task_id)
  local keep = math.ceil(turn - now + ttl)
  if redis.call('TTL', slots) < keep then redis.call('EXPIRE', slots, keep) end
  return turn
end
