-- Redeliver an event in one step, so that calls at once never start two retry chains. The
-- summary (KEYS[1]) holds under 'next:<event>' the due entry of the attempt its delivery
-- has queued or scheduled (delivery_record.lua writes it, and this script for a chain it
-- starts). If that entry still waits on the due set, it is due now (the caller moves it
-- onto its queue) and stays open until then plus the grace; if it is open but not on the
-- due set, it is queued or running: nothing to do; so is the automatic chain's first
-- attempt (ARGV[4]) while open. Otherwise the delivery ended: the new chain's first
-- attempt (ARGV[5], entry ARGV[6]) is marked open and recorded for the caller to send.
-- A new chain's 'pending' state is mirrored on the job record while it exists (ARGV[8]).
-- KEYS: summary, due set, open deliveries, job record. ARGV: event, now, open deadline,
-- the automatic chain's first task id, the new chain's first task id, its entry,
-- retention, mirror flag ('1' for a job).
-- Returns {'due', entry}, {'open', ''} or {'new', ''}.
local field = 'next:' .. ARGV[1]
local entry = redis.call('HGET', KEYS[1], field)
if entry then
  local id = cjson.decode(entry)['id']
  if redis.call('ZSCORE', KEYS[2], entry) then
    redis.call('ZADD', KEYS[2], ARGV[2], entry)
    redis.call('ZADD', KEYS[3], ARGV[3], id)
    return {'due', entry}
  end
  if redis.call('ZSCORE', KEYS[3], id) then return {'open', ''} end
end
if redis.call('ZSCORE', KEYS[3], ARGV[4]) then return {'open', ''} end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[1], field, ARGV[6], 'state', 'pending')
redis.call('EXPIRE', KEYS[1], ARGV[7])
if ARGV[8] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'webhook_state', 'pending')
end
return {'new', ''}
