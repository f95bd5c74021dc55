-- Record one attempt and close its claim, atomically: number it (HINCRBY), summarise it,
-- append its entry (ARGV[7] is the entry's JSON up to '"attempt":', the number is added
-- here), trim and expire the log, mirror state and attempts on the job record only while
-- it exists (ARGV[8] == '1'), mark the claim done (KEYS[3], '' for none), close this
-- attempt in the open deliveries and, when another attempt follows, schedule it on the
-- due set and mark it open: an attempt is never recorded without its successor. The
-- summary keeps that successor's due entry under 'next:<event>' (none once no attempt
-- follows), for a redelivery to bring it forward (delivery_redeliver.lua).
-- The subject goes on the archive stream (KEYS[7]) so the attempt reaches the database.
-- An endpoint's message also appends the entry to the endpoint's attempts (KEYS[8], a
-- sorted set by a per-endpoint sequence KEYS[9]; '' for none), trimmed to ARGV[6] * 50.
-- The first attempt of a job's event also stores the body it built and sent (KEYS[10],
-- ARGV[16]; '' for none) unless one is stored already (the first writer wins). A job's
-- body is a function of its record (jobgate.events.Subject.from_record): an attempt that
-- died before its record built the same bytes, and so does the next one.
-- The attempt gives back its slot among its partner's deliveries in flight (KEYS[11],
-- '' for none), and the first attempts in the partner's line (KEYS[12]) are brought
-- forward as far as slots are free (inflight.lua; the limit is the mirror's, KEYS[13],
-- else ARGV[17]).
-- The message log: the receiver's answer (ARGV[20], JSON; '' for none) is kept once, in
-- the subject's responses hash (KEYS[14]) under the attempt's number, beside the log
-- entry, and leaves it when the log drops that attempt (the same MAX_LOG), expiring with it.
-- An endpoint's own headers the attempt sent (ARGV[21], JSON; '' for none) are kept
-- once per endpoint and set of values (KEYS[15]), for the retention like its attempts.
-- KEYS: summary, log, claim, job record, open deliveries, due set, archive stream,
-- endpoint attempts, endpoint sequence, body, partner's in-flight set, its line, its
-- mirror, responses, the endpoint's headers sent.
-- ARGV: state, webhook id, event, at, retention, max log, entry head, mirror flag, this
-- attempt's task id, next attempt's task id ('' none), its open deadline, its due time,
-- its due entry, the archive entry ('job:<id>' or 'batch:<id>'), the done claim's TTL,
-- the body, the default limit, now, the open grace of an attempt brought forward, the
-- response, the endpoint's headers.
-- Returns {the attempt's number, the due entries brought forward}.
--! include inflight
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'webhook_id', ARGV[2], 'event', ARGV[3],
           'last_attempt_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
-- RPUSH answers the log's length: trim only past ARGV[6] entries.
if redis.call('RPUSH', KEYS[2], ARGV[7] .. tostring(n) .. '}') > tonumber(ARGV[6]) then
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
if KEYS[14] and KEYS[14] ~= '' then
  if ARGV[20] ~= '' then redis.call('HSET', KEYS[14], tostring(n), ARGV[20]) end
  if n > tonumber(ARGV[6]) then
    redis.call('HDEL', KEYS[14], tostring(n - tonumber(ARGV[6])))
  end
  redis.call('EXPIRE', KEYS[14], ARGV[5])
end
if ARGV[8] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'webhook_state', ARGV[1], 'webhook_attempts', tostring(n))
end
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], 'done', 'EX', ARGV[15]) end
if KEYS[8] and KEYS[8] ~= '' then
  local seq = redis.call('INCR', KEYS[9])
  redis.call('ZADD', KEYS[8], seq, ARGV[7] .. tostring(n) .. '}')
  redis.call('ZREMRANGEBYRANK', KEYS[8], 0, -(tonumber(ARGV[6]) * 50) - 1)
  redis.call('EXPIRE', KEYS[8], ARGV[5])
  redis.call('EXPIRE', KEYS[9], ARGV[5])
end
if KEYS[15] and KEYS[15] ~= '' then
  redis.call('SET', KEYS[15], ARGV[21], 'EX', ARGV[5])
end
if KEYS[10] and KEYS[10] ~= '' then
  redis.call('SET', KEYS[10], ARGV[16], 'NX', 'EX', ARGV[5])
end
redis.call('XADD', KEYS[7], '*', 's', ARGV[14])
redis.call('ZREM', KEYS[5], ARGV[9])
if ARGV[10] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[11], ARGV[10])
  redis.call('ZADD', KEYS[6], ARGV[12], ARGV[13])
  redis.call('HSET', KEYS[1], 'next:' .. ARGV[3], ARGV[13])
else
  redis.call('HDEL', KEYS[1], 'next:' .. ARGV[3])
end
local woken = {}
if KEYS[11] and KEYS[11] ~= '' then
  woken = inflight_release(KEYS[11], KEYS[12], KEYS[13], ARGV[17], ARGV[9], KEYS[6], KEYS[5],
                           tonumber(ARGV[18]), tonumber(ARGV[19]))
end
return {n, woken}
