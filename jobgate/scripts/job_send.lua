-- A job's message about to be sent from Python (a broker apart from the store's Redis):
-- give the send a new token (ARGV[1]), which only that message may start the job with,
-- unless the job has started or ended, or has no record: the broker holds its message then.
-- KEYS: job record. ARGV: token. Returns 1 to send, 0 not to.
local found = redis.call('HMGET', KEYS[1], 'job_id', 'status', 'started_at')
if not found[1] or found[2] or found[3] then return 0 end
redis.call('HSET', KEYS[1], 'send', ARGV[1])
return 1
