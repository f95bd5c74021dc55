-- The broker took the job's message of token ARGV[1] (its publish was confirmed): mark it
-- handed, so the sweeper does not send it again. Nothing for a record that is gone.
-- KEYS: job record. ARGV: token. Returns 0.
if redis.call('HEXISTS', KEYS[1], 'job_id') == 1 then
  redis.call('HSET', KEYS[1], 'sent', ARGV[1])
end
return 0
