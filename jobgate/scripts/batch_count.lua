-- Count one member's outcome once (a member already counted is ignored: re-runs and
-- retries of the finish path cannot count twice). Returns 1 when this member was the
-- last one, i.e. exactly once per batch; 0 otherwise; -1 if the batch is unknown.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
local completed = redis.call('HINCRBY', KEYS[1], 'completed', 1)
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if completed < total or redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
return 1
