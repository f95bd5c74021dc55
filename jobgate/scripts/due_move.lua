-- Move due entries onto their queues: each entry is pushed only by the caller whose ZREM
-- removed it, so workers running this at the same time never queue an entry twice. The
-- caller picks the due entries (ZRANGEBYSCORE up to now); their scores are not checked here.
-- KEYS: due set, then the queue list of each entry. ARGV: entry, message, entry, message...
-- Returns how many were moved.
local moved = 0
for i = 2, #KEYS do
  if redis.call('ZREM', KEYS[1], ARGV[2 * i - 3]) == 1 then
    redis.call('LPUSH', KEYS[i], ARGV[2 * i - 2])
    moved = moved + 1
  end
end
return moved
