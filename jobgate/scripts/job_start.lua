-- A worker taking a job: refuse it if it already has a terminal status (revoked while
-- queued, or a redelivery of a finished job), else record the start once, which worker
-- runs it and how many runs it has had (a run > 1 means an earlier one was lost with its
-- worker; its progress is dropped: the run starts over, as Celery's STARTED says), and
-- publish STARTED. Given Celery's STARTED meta (ARGV[4], expiring after
-- ARGV[5] s), writes it too, as the tracer's track_started would. A message sent from
-- Python (a broker apart, jobgate/handoff.py) carries its send's token (ARGV[6]): one
-- that is not the record's last send is a second message of the job, refused ('stale').
-- KEYS: job record, events channel, Celery meta key. ARGV: started_at, STARTED event,
-- worker node name, meta ('' none), meta expiry in s ('' none), send token ('' none).
-- Returns {-1} no record, {0, status or 'stale'} refused, {1, runs, started_at} run it
-- (the run's start travels with the worker to its end, which commits it).
--! include celery_meta
-- A record always has its job_id field: one HMGET tells "no record" and "ended" apart,
-- and reads what the start's single HSET builds on.
local found = redis.call('HMGET', KEYS[1], 'job_id', 'status', 'started_at', 'runs', 'send')
if not found[1] then return {-1} end
local status = found[2]
if status then return {0, status} end
local send = ARGV[6] or ''
if send ~= '' and found[5] and found[5] ~= send then return {0, 'stale'} end
local runs = (tonumber(found[4]) or 0) + 1
local started_at = found[3] or ARGV[1]
redis.call('HSET', KEYS[1], 'started_at', started_at, 'worker', ARGV[3], 'runs', tostring(runs))
if runs > 1 then redis.call('HDEL', KEYS[1], 'progress') end
redis.call('PUBLISH', KEYS[2], ARGV[2])
write_celery_meta(KEYS[3], ARGV[4], ARGV[5], false)
return {1, runs, started_at}
