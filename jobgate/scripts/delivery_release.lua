-- End an attempt that recorded nothing: with ARGV[1] 'done' (it had nothing to send) its
-- claim is marked done for ARGV[2] s and its delivery (ARGV[3]) closed; with ARGV[1] ''
-- (it failed before being recorded) its claim is dropped, so that the sweeper's new
-- message for the still-open delivery runs it without waiting for the claim to lapse,
-- and the delivery is due for the sweeper an open grace (ARGV[6]) from now (its message
-- is acknowledged: a broker apart no longer holds it, jobgate/handoff.py).
-- Either way it gives back its slot among its partner's deliveries in flight (KEYS[4],
-- '' for none), and the first attempts in the partner's line are brought forward as far
-- as slots are free (inflight.lua).
-- KEYS: claim, open deliveries, due set, partner's in-flight set, its line, its mirror.
-- ARGV: 'done' or '', the done claim's TTL, the attempt's task id, the default limit,
-- now, the open grace of an attempt brought forward.
-- Returns the due entries brought forward.
--! include inflight
if ARGV[1] == 'done' then
  redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
  if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
else
  redis.call('DEL', KEYS[1])
  if ARGV[3] ~= '' then
    redis.call('ZADD', KEYS[2], 'XX', tonumber(ARGV[5]) + tonumber(ARGV[6]), ARGV[3])
  end
end
if KEYS[4] == '' then return {} end
return inflight_release(KEYS[4], KEYS[5], KEYS[6], ARGV[4], ARGV[3], KEYS[3], KEYS[2],
                        tonumber(ARGV[5]), tonumber(ARGV[6]))
