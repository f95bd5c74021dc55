-- A progress report: kept in the record and published, unless the job already has a
-- terminal status (0): revoked, or ended while a redelivered copy runs.
-- A record that expired meanwhile is not recreated (2: nothing written, keep going).
-- Given Celery's PROCESSING meta (ARGV[3], expiring after ARGV[4] s), the script also
-- writes it as Celery's update_state would (SET + PUBLISH on the meta key, never over a
-- SUCCESS): one round trip per report instead of three.
-- KEYS: job record, events channel, Celery meta key. ARGV: progress JSON, event, meta
-- ('' none), meta expiry in s ('' none). Returns 1 written, 0 ended, 2 no record.
--! include celery_meta
local found = redis.call('HMGET', KEYS[1], 'job_id', 'status')  -- a record has its job_id
if not found[1] then return 2 end
if found[2] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
write_celery_meta(KEYS[3], ARGV[3], ARGV[4], true)
return 1
