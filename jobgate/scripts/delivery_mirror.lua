-- Update the job record's webhook fields only while the record exists (never resurrect
-- an expired job as a hash with no TTL).
-- KEYS: job record. ARGV: webhook state, webhook attempts ('' leaves them).
-- Returns 1 written, 0 no record.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook_state', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'webhook_attempts', ARGV[2]) end
return 1
