-- A worker node's sign of life, stamped with Redis's clock, which every process reads
-- alike (a gateway comparing its own clock with a worker's could count a live worker as
-- dead): its liveness key, which delivery claims check, for ARGV[2] s, and its entry in
-- the set of workers /readyz counts, which forgets nodes silent for ARGV[3] s.
-- KEYS: liveness key, workers set. ARGV: node, TTL in s, forget after s.
-- Returns Redis's time in seconds.
local now = tonumber(redis.call('TIME')[1])
redis.call('SET', KEYS[1], now, 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
return now
