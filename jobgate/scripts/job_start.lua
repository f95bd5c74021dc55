-- A worker taking a job: refuse it if it already has a terminal status (revoked while
-- queued, or a redelivery of a finished job), else record the start once and publish it.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local status = redis.call('HGET', KEYS[1], 'status')
if status then return {0, status} end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return {1}
