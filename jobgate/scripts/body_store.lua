-- Store an event's body unless one is stored already (SET NX EX), and return the stored
-- one: the first writer wins, and every later attempt sends the first writer's bytes.
-- (SET NX GET is Redis 7's; jobgate runs on 6.2 too.) The GET runs only when the body was
-- there: a first attempt costs one SET.
-- KEYS: body. ARGV: the built body, its TTL in seconds. Returns the stored body.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1])
