-- Fair dispatch (docs/api.md#partner-limits): a job waits in its partner's queue until the dispatch
-- window has room; then the ready partner with the lowest virtual time gives its next job
-- (highest priority, then oldest) to Celery's queue. Each job costs its partner 1/weight
-- of virtual time, and a partner that comes back from idle starts at the clock, so it can
-- neither bank turns nor be starved. Included by the scripts that queue, end and tick.
-- Every key is under the prefix P:
--   P:waiting:<partner>   zset job -> order ((9 - priority) * 1e13 + sequence)
--   P:dispatch:msg        hash job -> "<queue>\n<Celery message>" ('' : the caller sends)
--   P:dispatch:ready      zset partner -> virtual time (partners with a job it may start)
--   P:dispatch:vt         hash partner -> the virtual time of its next job
--   P:dispatch:clock      the virtual time served last
--   P:dispatch:running    hash partner -> jobs dispatched and not ended
--   P:dispatch:delayed    hash partner -> jobs waiting for their run_at
--   P:dispatch:slots      hash worker node -> job-pool slots (auto window)
--   P:live                zset job -> dispatch time: dispatched and not ended
--   P:delayed             zset job -> run_at (epoch seconds)
--   P:partner:<id>        the partner's mirror (weight, max_running_jobs)
local ORDER_STEP = 1e13

local function dispatch_order(P, priority)
  local seq = redis.call('INCR', P .. ':dispatch:seq')
  return (9 - priority) * ORDER_STEP + seq
end

-- A partner with waiting jobs takes its place among the ready ones (no-op if there).
local function dispatch_activate(P, partner)
  if redis.call('ZCARD', P .. ':waiting:' .. partner) == 0 then return end
  local clock = tonumber(redis.call('GET', P .. ':dispatch:clock')) or 0
  local own = tonumber(redis.call('HGET', P .. ':dispatch:vt', partner)) or 0
  redis.call('ZADD', P .. ':dispatch:ready', 'NX', math.max(clock, own), partner)
end

-- A job waits in its partner's queue (or in the delayed set until run_at).
local function dispatch_queue(P, partner, job, priority, run_at, message, now)
  if message ~= '' then redis.call('HSET', P .. ':dispatch:msg', job, message) end
  if run_at ~= '' and tonumber(run_at) > now then
    redis.call('ZADD', P .. ':delayed', run_at, job)
    redis.call('HINCRBY', P .. ':dispatch:delayed', partner, 1)
    return
  end
  redis.call('ZADD', P .. ':waiting:' .. partner, dispatch_order(P, priority), job)
  dispatch_activate(P, partner)
end

-- Delayed jobs whose time has come join their partner's queue (at most 1000 a call).
local function dispatch_due(P, now)
  local due = redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', now, 'LIMIT', 0, 1000)
  for _, job in ipairs(due) do
    redis.call('ZREM', P .. ':delayed', job)
    local found = redis.call('HMGET', P .. ':job:' .. job, 'partner_id', 'priority', 'status')
    local partner = found[1] or ''
    redis.call('HINCRBY', P .. ':dispatch:delayed', partner, -1)
    if found[1] and not found[3] then
      redis.call('ZADD', P .. ':waiting:' .. partner,
                 dispatch_order(P, tonumber(found[2]) or 5), job)
      dispatch_activate(P, partner)
    else
      redis.call('HDEL', P .. ':dispatch:msg', job)
    end
  end
end

-- Jobs a partner has waiting (queued or delayed), what max_queued_jobs counts.
local function dispatch_waiting(P, partner)
  return redis.call('ZCARD', P .. ':waiting:' .. partner)
    + (tonumber(redis.call('HGET', P .. ':dispatch:delayed', partner)) or 0)
end

-- The window: fixed (> 0), or the job-pool slots of the live worker nodes. No more: with
-- acks_late and a prefetch of one, a worker takes no message past its slots, and an end
-- pushes the next message before its own ack, so slack would only queue a partner's new
-- job behind others' already dispatched.
local function dispatch_window(P, fixed)
  if fixed > 0 then return fixed end
  local slots = redis.call('HGETALL', P .. ':dispatch:slots')
  local total = 0
  for i = 1, #slots, 2 do
    if redis.call('EXISTS', P .. ':worker:' .. slots[i]) == 1 then
      total = total + (tonumber(slots[i + 1]) or 0)
    else
      redis.call('HDEL', P .. ':dispatch:slots', slots[i])
    end
  end
  return total
end

-- Dispatch while the window has room. A dispatched job goes on the live set, counts as
-- running for its partner, and its message is pushed; returns the ids dispatched without
-- a stored message (another broker: the caller sends them).
local function dispatch(P, fixed_window, default_max_running, now)
  dispatch_due(P, now)
  local window = dispatch_window(P, fixed_window)
  local live, ready = P .. ':live', P .. ':dispatch:ready'
  local unsent = {}
  local inflight = redis.call('ZCARD', live)
  while inflight < window do
    local top = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
    if #top == 0 then break end
    local partner, vt = top[1], tonumber(top[2])
    local waiting = P .. ':waiting:' .. partner
    local mirror = redis.call('HMGET', P .. ':partner:' .. partner, 'max_running_jobs', 'weight')
    local cap = tonumber(mirror[1]) or default_max_running
    local running = tonumber(redis.call('HGET', P .. ':dispatch:running', partner)) or 0
    local head = redis.call('ZRANGE', waiting, 0, 0)
    if #head == 0 or (cap > 0 and running >= cap) then
      redis.call('ZREM', ready, partner)  -- nothing waits, or parked until a job of its ends
    else
      local job = head[1]
      redis.call('ZREM', waiting, job)
      local message = redis.call('HGET', P .. ':dispatch:msg', job)
      redis.call('HDEL', P .. ':dispatch:msg', job)
      local found = redis.call('HMGET', P .. ':job:' .. job, 'job_id', 'status')
      if found[1] and not found[2] then  -- ended (revoked) or expired jobs are dropped
        redis.call('ZADD', live, now, job)
        redis.call('HINCRBY', P .. ':dispatch:running', partner, 1)
        inflight = inflight + 1
        if message then
          local cut = string.find(message, '\n', 1, true)
          redis.call('LPUSH', string.sub(message, 1, cut - 1), string.sub(message, cut + 1))
        else
          unsent[#unsent + 1] = job
        end
        local weight = tonumber(mirror[2]) or 1
        if weight <= 0 then weight = 1 end
        redis.call('SET', P .. ':dispatch:clock', vt)
        redis.call('HSET', P .. ':dispatch:vt', partner, vt + 1 / weight)
        if redis.call('ZCARD', waiting) > 0 then
          redis.call('ZADD', ready, 'XX', vt + 1 / weight, partner)
        else
          redis.call('ZREM', ready, partner)
        end
      end
    end
  end
  return unsent
end

-- A job leaves the dispatcher for good (it ended): out of its queue, the delayed set or
-- the live set; a slot of its partner frees, and the partner may start its next job.
local function dispatch_done(P, partner, job)
  redis.call('HDEL', P .. ':dispatch:msg', job)
  if redis.call('ZREM', P .. ':waiting:' .. partner, job) == 1 then return end
  if redis.call('ZREM', P .. ':delayed', job) == 1 then
    redis.call('HINCRBY', P .. ':dispatch:delayed', partner, -1)
    return
  end
  if redis.call('ZREM', P .. ':live', job) == 1 then
    if redis.call('HINCRBY', P .. ':dispatch:running', partner, -1) < 0 then
      redis.call('HSET', P .. ':dispatch:running', partner, 0)
    end
    dispatch_activate(P, partner)
  end
end
