-- How many worker nodes gave a sign of life (worker_alive) in the last ARGV[1] s, by
-- Redis's clock.
-- KEYS: workers set. ARGV: seconds. Returns the number of nodes.
local now = tonumber(redis.call('TIME')[1])
return redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
