-- The dispatcher's tick (every worker, once a second) and a partner's limits changing:
-- give the partners named in ARGV[5..] back their turn (their running count or limit may
-- have changed), move delayed jobs that are due, and dispatch what the window has room for.
-- KEYS: none; every key is under the prefix ARGV[1] (see dispatch.lua).
-- ARGV: prefix, now, fixed window (0 auto), default max running (0 none), partners...
-- (none: every partner that has run a job, the once-a-second repair of a lost turn).
-- Returns the ids dispatched without a stored message (the caller sends them).
--! include dispatch
local P, now = ARGV[1], tonumber(ARGV[2])
if #ARGV == 4 then
  for _, partner in ipairs(redis.call('HKEYS', P .. ':dispatch:vt')) do
    dispatch_activate(P, partner)
  end
end
for i = 5, #ARGV do dispatch_activate(P, ARGV[i]) end
return dispatch(P, tonumber(ARGV[3]), tonumber(ARGV[4]), now)
