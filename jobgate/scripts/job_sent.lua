-- The broker took the job's message of token ARGV[1] (its publish was confirmed): mark it
-- handed, so the sweeper does not send it again. Nothing for a record that is gone, nor
-- for a token the record no longer holds (a slow confirm of a send the sweeper redid).
-- KEYS: job record. ARGV: token. Returns 0.
if redis.call('HGET', KEYS[1], 'send') == ARGV[1] then  -- a later send's token: not this one
  redis.call('HSET', KEYS[1], 'sent', ARGV[1])
end
return 0
