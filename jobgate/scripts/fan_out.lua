-- Fan one event out to its endpoints, once: for each endpoint's message not created yet,
-- write its record, index it (per endpoint, per subject), store the event's body under it
-- (SET NX: the bytes fixed at the event), queue its first attempt (inline brokers) and
-- mark that attempt open, unless the message is held (its endpoint is disabled: kept,
-- not sent); then close the fan-out step itself. A repeated step (a redelivered or
-- re-queued message) finds every record and queues nothing again.
-- KEYS: open deliveries, webhooks queue, the subject's message index.
-- ARGV: fan-out task id, retention, open deadline, body, index score, then per message
-- groups of 7: record key, record JSON (flat object), body key, endpoint index key,
-- delivery task id, message ('' when the caller sends it), held ('1') or not ('').
-- Returns the delivery task ids of the messages created now and not held.
local created = {}
for i = 6, #ARGV, 7 do
  if redis.call('EXISTS', ARGV[i]) == 0 then
    local fields = cjson.decode(ARGV[i + 1])
    for name, value in pairs(fields) do redis.call('HSET', ARGV[i], name, value) end
    redis.call('EXPIRE', ARGV[i], ARGV[2])
    redis.call('SET', ARGV[i + 2], ARGV[4], 'NX', 'EX', ARGV[2])
    redis.call('ZADD', ARGV[i + 3], ARGV[5], fields['msg_id'])
    redis.call('EXPIRE', ARGV[i + 3], ARGV[2])
    redis.call('SADD', KEYS[3], fields['msg_id'])
    redis.call('EXPIRE', KEYS[3], ARGV[2])
    if ARGV[i + 6] == '' then
      if ARGV[i + 5] ~= '' then redis.call('LPUSH', KEYS[2], ARGV[i + 5]) end
      redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i + 4])
      created[#created + 1] = ARGV[i + 4]
    end
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return created
