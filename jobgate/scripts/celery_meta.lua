-- Celery's result meta as its Redis backend writes it: SET (with the result expiry) and
-- PUBLISH on the same key, for AsyncResult and its result consumers. value '' writes
-- nothing; keep_success leaves a SUCCESS in place (Celery's store_result never
-- overwrites one). Included by the scripts that write a job's Celery state in the same
-- round trip as its record.
local function write_celery_meta(key, value, expires, keep_success)
  if value == '' then return end
  if keep_success then
    local ok, meta = pcall(cjson.decode, redis.call('GET', key) or 'null')
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return end
  end
  if expires ~= '' then
    redis.call('SET', key, value, 'EX', expires)
  else
    redis.call('SET', key, value)
  end
  redis.call('PUBLISH', key, value)
end
