-- Count one member's outcome once (a member already counted is ignored: re-runs and
-- retries of the finish path cannot count twice). The member that completes the batch
-- sets finished_at, takes the batch off the live set and, if the batch has a callback URL,
-- queues batch.completed in this same script (ARGV[5] onto KEYS[4], marked open in
-- KEYS[5]), so a completed batch never lacks its event.
-- The completed batch goes on the archive stream (KEYS[7]). A batch without a callback
-- URL goes to its partner's endpoints: the fan-out step's message (ARGV[9], open member
-- ARGV[10]) is queued here unless the partner's mirror (ARGV[11] .. partner id) says it
-- has no endpoint (a disabled one counts: it gets held messages).
-- KEYS: batch hash, counted members, member ids, webhooks queue, open deliveries, live
-- batches, archive stream. ARGV: member job id, outcome counter, finished_at, retention, message ('' when
-- the caller sends it), open member, open deadline, batch id, fan-out message ('' none),
-- its open member, partner key prefix.
-- Returns {-1} unknown batch, {0} not the last member, {1, wants_event, queued} and, for
-- a batch without callback given a fan-out message, a 4th: 1 queued, 2 no endpoint.
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return {0} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
local completed = redis.call('HINCRBY', KEYS[1], 'completed', 1)
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if completed < total or redis.call('HEXISTS', KEYS[1], 'finished_at') == 1 then return {0} end
redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
redis.call('ZREM', KEYS[6], ARGV[8])
redis.call('XADD', KEYS[7], '*', 's', 'batch:' .. ARGV[8])
local callback = redis.call('HGET', KEYS[1], 'callback_url') or ''
if callback == '' then
  local partner = redis.call('HGET', KEYS[1], 'partner_id')
  if not ARGV[9] or ARGV[9] == '' then return {1, 0, 0} end
  if not partner or partner == '' then return {1, 0, 0, 2} end
  if redis.call('HGET', ARGV[11] .. partner, 'endpoints') == '0' then return {1, 0, 0, 2} end
  redis.call('LPUSH', KEYS[4], ARGV[9])
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[10])
  return {1, 0, 0, 1}
end
if ARGV[5] == '' then return {1, 1, 0} end
redis.call('LPUSH', KEYS[4], ARGV[5])
redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6])
return {1, 1, 1}
