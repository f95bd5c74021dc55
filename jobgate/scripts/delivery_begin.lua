-- Claim an attempt (SET NX EX); if taken, nil. Otherwise the subject's record (HGETALL,
-- empty if gone), its stored body (or false) and its partner's hash (empty if none). The
-- partner key is only known from the record, so it is built here from ARGV[2] (one Redis,
-- not a cluster: jobgate never shards).
-- KEYS: claim, body, subject record. ARGV: lease seconds, partner key prefix.
if not redis.call('SET', KEYS[1], 'running', 'NX', 'EX', ARGV[1]) then return false end
local record = redis.call('HGETALL', KEYS[3])
local partner = {}
for i = 1, #record, 2 do
  if record[i] == 'partner_id' then
    if record[i + 1] ~= '' then partner = redis.call('HGETALL', ARGV[2] .. record[i + 1]) end
    break
  end
end
return {record, redis.call('GET', KEYS[2]), partner}
