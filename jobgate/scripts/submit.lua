-- A submit (a job, or a batch and all its members), atomic: unless the partner would then
-- have more than ARGV[6] jobs waiting (0: no limit), store each job's record (held for
-- ARGV[7] s), count it, put it in its partner's queue (or the delayed set) and, unless the
-- rows are committed already (ARGV[8] '1': the gateway's and the relay's submits), on the
-- archive stream (a batch too), then dispatch what the window has room for. Refused: nothing is written.
-- A batch (ARGV[9] its id, '' none) gets its hash (ARGV[10] its field count, then pairs)
-- and member list written with its members. A job or batch whose record exists already
-- is left as it is: a job handed to Redis twice (by its gateway and by the relay that
-- repairs hand-offs from the database, jobgate.outbox) is queued once.
-- KEYS: none; every key is under the prefix ARGV[1] (see dispatch.lua).
-- ARGV: prefix, now, fixed window (0 auto), default max running (0 none), partner,
-- queued limit, record TTL, rows committed ('1' or ''), batch id, batch field count,
-- batch pairs..., then per job: job id, priority, run_at ('' none), message ('' none),
-- field count, field/value pairs.
-- Returns {0, waiting} refused (the partner's waiting jobs), else {1, unsent ids...}.
--! include dispatch
local P, now, partner = ARGV[1], tonumber(ARGV[2]), ARGV[5]
local limit, ttl, committed, batch = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1', ARGV[9]
local i = 11 + 2 * tonumber(ARGV[10])
local jobs = {}
while i <= #ARGV do
  local count = tonumber(ARGV[i + 4])
  jobs[#jobs + 1] = {i, count}
  i = i + 5 + 2 * count
end
local waiting = dispatch_waiting(P, partner)
if limit > 0 and waiting + #jobs > limit then return {0, waiting} end
if batch ~= '' and redis.call('EXISTS', P .. ':batch:' .. batch) == 0 then
  local key, members = P .. ':batch:' .. batch, P .. ':batch:' .. batch .. ':jobs'
  redis.call('HSET', key, unpack(ARGV, 11, 10 + 2 * tonumber(ARGV[10])))
  for _, job in ipairs(jobs) do redis.call('RPUSH', members, ARGV[job[1]]) end
  redis.call('EXPIRE', key, ttl)
  redis.call('EXPIRE', members, ttl)
  redis.call('ZADD', P .. ':batches:live', now, batch)
  if not committed then redis.call('XADD', P .. ':archive', '*', 's', 'batch:' .. batch) end
end
for _, job in ipairs(jobs) do
  local at, count = job[1], job[2]
  local id, key = ARGV[at], P .. ':job:' .. ARGV[at]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, unpack(ARGV, at + 5, at + 4 + 2 * count))
    redis.call('EXPIRE', key, ttl)
    redis.call('HINCRBY', P .. ':stats', 'submitted', 1)
    if not committed then  -- a job made outside the gateway: the archiver writes its row
      redis.call('XADD', P .. ':archive', '*', 's', 'job:' .. id, 'a', '0')  -- no attempt yet
    end
    dispatch_queue(P, partner, id, tonumber(ARGV[at + 1]) or 5, ARGV[at + 2], ARGV[at + 3], now)
  end
end
local unsent = dispatch(P, tonumber(ARGV[3]), tonumber(ARGV[4]), now)
return {1, unpack(unsent)}
