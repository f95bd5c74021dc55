-- Claim an attempt (SET NX EX) for this worker node, or take it over when the node
-- holding it is no longer alive (its liveness key expired: it died mid-attempt, so the
-- redelivered message may try again at once). If the attempt is done (a duplicate
-- message: its delivery is closed again in KEYS[4]), or held by a live node (or by this
-- node, or by a holder with no node name), return nil.
-- Otherwise the subject's record (HGETALL, empty if gone), its stored
-- body (or false) and its owner's hash (empty if none): the partner named by the record's
-- 'partner_id', or, for an endpoint's message, the endpoint named by its ARGV[6] field.
-- The owner key is only known from the record, so it is built here from ARGV[2] (one
-- Redis, not a cluster).
-- KEYS: claim, body, subject record, open deliveries. ARGV: lease seconds, owner key
-- prefix, node name, worker liveness key prefix, this attempt's task id, owner field
-- (default 'partner_id').
-- Returns nil, or {record pairs, body or false, partner pairs}.
if not redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[1]) then
  local holder = redis.call('GET', KEYS[1])
  if holder == 'done' then
    redis.call('ZREM', KEYS[4], ARGV[5])
    return false
  end
  if not holder or holder == '' or holder == ARGV[3] then return false end
  if redis.call('EXISTS', ARGV[4] .. holder) == 1 then return false end
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[1])
end
local record = redis.call('HGETALL', KEYS[3])
local partner = {}
for i = 1, #record, 2 do
  if record[i] == (ARGV[6] or 'partner_id') then
    if record[i + 1] ~= '' then partner = redis.call('HGETALL', ARGV[2] .. record[i + 1]) end
    break
  end
end
return {record, redis.call('GET', KEYS[2]), partner}
