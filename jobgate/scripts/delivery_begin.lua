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
-- Given this attempt's due entry (ARGV[10]), the attempt also takes a slot among its
-- partner's deliveries in flight (inflight.lua; the partner named by the record's
-- 'partner_id', its keys under the prefix ARGV[7]): its limit is its mirror's
-- max_inflight_deliveries, else ARGV[8]. An attempt holding a slot already (taken over
-- from a dead node) keeps it. With no slot free for it (every slot taken, or kept for
-- the attempts in line before it), it is deferred instead: its claim is dropped, it
-- joins the partner's line (keeping its place if it had one) and waits on the due set
-- (KEYS[5]) until a slot frees, or until a fallback time should none be given back (a
-- lease, ARGV[1] s, for each `limit` attempts ahead of it, and one more): its delivery
-- stays open until then plus a lease, and no attempt is spent.
-- Admitted, an endpoint's message (owner field 'endpoint_id') then waits for the
-- endpoint's turn (throttle.lua: its rate_limit, a pause its receiver asked for): until
-- then it is throttled: its claim is dropped, it leaves its partner's line and waits on
-- the due set until its turn, its delivery open until then plus a lease, no attempt
-- spent and no slot held. A deferred attempt takes no turn: a partner at its limit does
-- not push its throttled endpoints' turns later.
-- KEYS: claim, body, subject record, open deliveries, due set.
-- ARGV: lease seconds, owner key prefix, node name, worker liveness key prefix, this
-- attempt's task id, owner field (default 'partner_id'), key prefix, default limit, now,
-- this attempt's due entry ('' takes no slot).
-- Returns nil, 'deferred', {'throttled', its turn}, or {record pairs, body or false,
-- partner pairs}.
--! include inflight
--! include throttle
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
local partner, partner_id = {}, ''
for i = 1, #record, 2 do
  if record[i] == (ARGV[6] or 'partner_id') and record[i + 1] ~= '' then
    partner = redis.call('HGETALL', ARGV[2] .. record[i + 1])
  end
  if record[i] == 'partner_id' then partner_id = record[i + 1] end
end
local entry, now, lease = ARGV[10] or '', tonumber(ARGV[9]), tonumber(ARGV[1])
local P = ARGV[7]
-- The partner's slot is decided first (an attempt deferred for it takes no turn of its
-- endpoint), taken last (a throttled attempt holds none).
local inflight, line = nil, nil
if entry ~= '' and partner_id ~= '' then
  inflight, line = P .. ':inflight:' .. partner_id, P .. ':deferred:' .. partner_id
  local limit = inflight_limit(P .. ':partner:' .. partner_id, ARGV[8])
  if limit > 0 and not redis.call('ZSCORE', inflight, ARGV[5]) then
    local free = inflight_free(inflight, limit, now)
    local place = redis.call('ZRANK', line, entry)
    if free > 0 and (place or redis.call('ZCARD', line)) > 0 then
      -- Those in line first: bring them forward should no ended attempt have (a worker
      -- died, the limit was raised), and drop the ones that ended.
      inflight_wake(line, KEYS[5], KEYS[4], free, now, lease)
      place = redis.call('ZRANK', line, entry)
    end
    if (place or redis.call('ZCARD', line)) >= free then
      redis.call('DEL', KEYS[1])
      redis.call('ZADD', line, 'NX', now, entry)
      local at = now + lease * (1 + math.floor(redis.call('ZRANK', line, entry) / limit))
      redis.call('ZADD', KEYS[5], at, entry)
      redis.call('ZADD', KEYS[4], at + lease, ARGV[5])
      if redis.call('TTL', line) < at - now + lease then
        redis.call('EXPIRE', line, math.ceil(at - now + lease))
      end
      return 'deferred'
    end
  end
end
if entry ~= '' and ARGV[6] == 'endpoint_id' then
  local endpoint_id = throttle_field(record, 'endpoint_id') or ''
  local rate = tonumber(throttle_field(partner, 'rate_limit') or '')
  local turn = nil
  if endpoint_id ~= '' then
    turn = throttle_turn(P .. ':endpoint:' .. endpoint_id, ARGV[5], rate, now, lease)
  end
  if turn then
    redis.call('DEL', KEYS[1])
    if inflight then
      redis.call('ZREM', line, entry)
      -- A slot taken over from a dead node is given back, and the next in line woken.
      inflight_release(inflight, line, P .. ':partner:' .. partner_id, ARGV[8], ARGV[5],
                       KEYS[5], KEYS[4], now, lease)
    end
    redis.call('ZADD', KEYS[5], turn, entry)
    redis.call('ZADD', KEYS[4], turn + lease, ARGV[5])
    return {'throttled', tostring(turn)}
  end
end
if inflight then
  redis.call('ZADD', inflight, now + lease, ARGV[5])
  redis.call('EXPIRE', inflight, ARGV[1])
  redis.call('ZREM', line, entry)
end
return {record, redis.call('GET', KEYS[2]), partner}
