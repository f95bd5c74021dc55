-- Take a lease for one open stream (an SSE stream or a held ?wait= read) of a partner,
-- unless it has its limit of them open. KEYS[1] is the partner's ZSET of stream id ->
-- lease expiry (epoch seconds); expired entries (their gateway process died or stopped
-- refreshing them) are dropped first, so they never count.
-- KEYS: the partner's streams. ARGV: now, lease expiry, limit (0: none), stream id,
-- key TTL seconds.
-- Returns 1 (taken) or 0 (the partner has its limit open).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
