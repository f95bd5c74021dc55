-- A receiver answered 429 or 503 with Retry-After: its endpoint is paused until ARGV[1]
-- (Unix seconds), or later if a pause already reaches further (throttle.lua reads it).
-- KEYS: the endpoint's pause key (P:endpoint:<id>:paused). ARGV: until, now.
-- Returns the pause in effect.
local until_, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if until_ > current and until_ > now then
  redis.call('SET', KEYS[1], tostring(until_), 'PX', math.ceil((until_ - now) * 1000) + 1000)
  return tostring(until_)
end
return tostring(current)
