-- Sets the terminal fields only if no terminal status is recorded yet: the first of the
-- worker (success/failure), the revoke path or a re-run wins, exactly once per job. The
-- winner also counts the outcome, tells live listeners, takes the job off the live set,
-- queues the webhook delivery message it was given (ARGV[4] onto list KEYS[4]) if the job
-- has a callback URL, marking that delivery open (KEYS[6]) until an attempt records it,
-- and gets back what its other side effects need (callback URL, batch id, whether it
-- queued): one round trip for the whole end of a job, and no end recorded without its
-- webhook.
-- The end is put on the archive stream (KEYS[7]) here too, so the database gets it (the
-- entry says no attempt changed: jobgate.archive reads no attempt log for it), unless it
-- is committed to the row already (ARGV[13] '1') and its webhook is queued here, and
-- Celery's meta (ARGV[11], key KEYS[8]; the worker gives its SUCCESS) is written with it:
-- Celery's state and jobgate's record then change in one step, with no read in between
-- seeing one without the other.
-- A job without a callback URL goes to its partner's registered endpoints instead: the
-- fan-out step's message (ARGV[8]) is queued and marked open (ARGV[9]) here, unless the
-- partner's mirror (ARGV[10] .. partner id) says it has no endpoint at all ('0'); a
-- partner whose mirror is missing gets the step, which then asks the database.
-- The job leaves the dispatcher (its partner's queue, the delayed set or the live set):
-- a revoked job that waited never starts, and an ended one frees its partner's slot for
-- the next job the window has room for (dispatch.lua).
-- KEYS: job record, stats, events channel, webhooks queue, live jobs, open deliveries,
-- archive stream, Celery meta key.
-- ARGV: retention, status, event, message ('' none), open member, open deadline, job id,
-- fan-out message ('' none), its open member, partner key prefix, Celery meta ('' none),
-- its expiry in s ('' none), end committed ('1' or ''), then what every dispatching
-- script takes (Store.dispatch_args:
-- key prefix, now, fixed dispatch window (0 auto), default max running jobs (0 none)),
-- then the record's field/value pairs.
-- Returns {-1} no record, {0} already ended, {1, callback URL, batch id, queued 0/1,
-- fan-out 0 not looked at / 1 queued / 2 no endpoint, ids dispatched unsent...}.
--! include celery_meta
--! include dispatch
-- A record always has its job_id field; the terminal fields written below do not touch
-- the other three.
local found = redis.call('HMGET', KEYS[1], 'job_id', 'status', 'callback_url', 'batch_id', 'partner_id')
if not found[1] then return {-1} end
if found[2] then return {0} end
redis.call('HSET', KEYS[1], unpack(ARGV, 18))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('PUBLISH', KEYS[3], ARGV[3])
dispatch_done(ARGV[14], found[5] or '', ARGV[7])
write_celery_meta(KEYS[8], ARGV[11], ARGV[12], false)
local callback = found[3] or ''
-- An end committed to the row whose webhook is queued here needs no entry of its own: the
-- attempt's record puts the job on the stream (delivery_record.lua) with everything since.
if not (ARGV[13] == '1' and callback ~= '' and ARGV[4] ~= '') then
  redis.call('XADD', KEYS[7], '*', 's', 'job:' .. ARGV[7], 'a', '0')  -- no attempt yet
end
local queued = 0
local fan = 0
if callback ~= '' and ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[4], ARGV[4])
  redis.call('ZADD', KEYS[6], ARGV[6], ARGV[5])
  queued = 1
elseif callback == '' and ARGV[8] ~= '' and found[5] then
  fan = 2
  if redis.call('HGET', ARGV[10] .. found[5], 'endpoints') ~= '0' then
    redis.call('LPUSH', KEYS[4], ARGV[8])
    redis.call('ZADD', KEYS[6], ARGV[6], ARGV[9])
    -- Until the step has run, the archiver keeps the record in Redis (the step reads it).
    redis.call('HSET', KEYS[1], 'fanout', 'queued')
    fan = 1
  end
end
local unsent = dispatch(ARGV[14], tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[15]))
return {1, callback, found[4] or '', queued, fan, unpack(unsent)}
