-- A worker node's sign of life, stamped with Redis's clock, which every process reads
-- alike (a gateway comparing its own clock with a worker's could count a live worker as
-- dead): its liveness key, which delivery claims check, for ARGV[2] s, and its entry in
-- the set of workers /readyz counts, which forgets nodes silent for ARGV[3] s.
-- A node with job-pool slots (ARGV[4] > 0) counts them in KEYS[3], which the dispatcher's
-- automatic window adds up over the live nodes (dispatch.lua).
-- KEYS: liveness key, workers set, job-pool slots. ARGV: node, TTL in s, forget after s,
-- slots. Returns Redis's time in seconds.
local now = tonumber(redis.call('TIME')[1])
redis.call('SET', KEYS[1], now, 'EX', ARGV[2])
if tonumber(ARGV[4]) > 0 then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
return now
