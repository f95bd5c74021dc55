-- A worker node's sign of life, stamped with Redis's clock, which every process reads
-- alike (a gateway comparing its own clock with a worker's could count a live worker as
-- dead): its liveness key, which delivery claims check, for ARGV[2] s, and its entry in
-- the set of workers /readyz counts, which forgets nodes silent for ARGV[3] s.
-- A node with job-pool slots (ARGV[4] > 0) counts them in KEYS[3], which the dispatcher's
-- automatic window adds up over the live nodes (dispatch.lua).
-- With KEYS[4] and ARGV[5]: what the node runs (JSON: its pools and slots, for the
-- dashboard), kept in that hash as long as the node stays in the set of workers.
-- KEYS: liveness key, workers set, job-pool slots[, workers' pools]. ARGV: node, TTL in s,
-- forget after s, slots[, pools JSON]. Returns Redis's time in seconds.
local now = tonumber(redis.call('TIME')[1])
redis.call('SET', KEYS[1], now, 'EX', ARGV[2])
if tonumber(ARGV[4]) > 0 then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
redis.call('ZADD', KEYS[2], now, ARGV[1])
local cutoff = now - tonumber(ARGV[3])
if KEYS[4] and ARGV[5] then
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[5])
  local forgotten = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, 100)
  if #forgotten > 0 then redis.call('HDEL', KEYS[4], unpack(forgotten)) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
return now
