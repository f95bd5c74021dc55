"""Webhook bookkeeping in Redis: the stored event body, attempt claims, the attempts log.

Every key lives for the retention period. The body of an event is built once and stored,
so every retry and redelivery sends the same bytes under the same ``webhook-id``; each
attempt is appended to the subject's deliveries log and summarised (state, attempts) both
in a small summary hash and, for jobs, in the job record that ``webhook_summary`` reads.

One attempt costs two Redis round trips (three the first time, when the body is built):
``begin`` claims the attempt and reads the subject, its stored body and its partner's
secrets in one script; ``store_body`` (first time only) is one ``SET NX GET``; ``finish``
records the attempt and marks the claim done in one script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.store import Store, decode_job, secrets_of, utcnow

STATES = ("pending", "retrying", "delivered", "failed")
MAX_LOG = 200  # attempts kept per subject (oldest dropped first)

# Update the job record's webhook fields only while the record exists (never resurrect
# an expired job as a hash with no TTL).
_MIRROR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'webhook_state', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'webhook_attempts', ARGV[2]) end
return 1
"""

# Claim an attempt (SET NX EX); if taken, nil. Otherwise the subject's record (HGETALL,
# empty if gone), its stored body (or false) and its partner's hash (empty if none). The
# partner key is only known from the record, so it is built here from ARGV[2] (one Redis,
# not a cluster: jobgate never shards).
# KEYS: claim, body, subject record. ARGV: lease seconds, partner key prefix.
_BEGIN = """
if not redis.call('SET', KEYS[1], 'running', 'NX', 'EX', ARGV[1]) then return false end
local record = redis.call('HGETALL', KEYS[3])
local partner = {}
for i = 1, #record, 2 do
  if record[i] == 'partner_id' then
    if record[i + 1] ~= '' then partner = redis.call('HGETALL', ARGV[2] .. record[i + 1]) end
    break
  end
end
return {record, redis.call('GET', KEYS[2]), partner}
"""

# Record one attempt and close its claim, atomically: number it (HINCRBY), summarise it,
# append its entry (ARGV[7] is the entry's JSON up to '"attempt":', the number is added
# here), trim and expire the log, mirror state and attempts on the job record only while
# it exists (ARGV[8] == '1'), and mark the claim done (KEYS[3], '' for none).
# KEYS: summary, log, claim, job record. ARGV: state, webhook id, event, at, retention,
# max log, entry head, mirror flag.
_FINISH = """
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'webhook_id', ARGV[2], 'event', ARGV[3],
           'last_attempt_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('RPUSH', KEYS[2], ARGV[7] .. tostring(n) .. '}')
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
if ARGV[8] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'webhook_state', ARGV[1], 'webhook_attempts', tostring(n))
end
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], 'done', 'EX', ARGV[5]) end
return n
"""


@dataclass(frozen=True)
class Begun:
    """What ``Deliveries.begin`` read once it held the claim."""

    record: dict[str, str]  # the subject's raw hash; empty if the record is gone
    body: str | None  # the stored event body, None until the first attempt stores it
    partner: dict[str, str]  # the partner's raw hash; empty if none

    def job(self) -> dict[str, Any] | None:
        """The record decoded as ``Store.job`` returns it (for job subjects)."""
        return decode_job(self.record)

    def signing_secrets(self, now: float | None = None) -> list[str]:
        """The partner's signing secrets (``secrets_of``): current, previous during grace."""
        return secrets_of(self.partner, now)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def event_body(event: str, data: dict[str, Any]) -> str:
    """The JSON body of one event: ``{"type", "timestamp", "data"}``, compact."""
    return json.dumps({"type": event, "timestamp": utcnow(), "data": data},
                      separators=(",", ":"), default=str)


class Deliveries:
    """The delivery records of one Redis job store (jobs and batches alike)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis
        self._mirror = self.redis.register_script(_MIRROR)
        self._begin = self.redis.register_script(_BEGIN)
        self._finish = self.redis.register_script(_FINISH)

    def _key(self, subject_id: str, *parts: str) -> str:
        return self.store.key("webhook", subject_id, *parts)

    def log_key(self, subject_id: str) -> str:
        return self.store.key("deliveries", subject_id)

    def body_key(self, subject_id: str, event: str) -> str:
        return self._key(subject_id, event, "body")

    def claim_key(self, subject_id: str, token: str) -> str:
        return self._key(subject_id, "claim", token)

    # ------------------------------------------------------------------ body
    def store_body(self, subject_id: str, event: str, built: str) -> str:
        """Store ``built`` unless a body is stored already; returns the stored one.

        One round trip (``SET NX GET``, Redis 7): the first writer wins, and every later
        attempt sends the first writer's bytes.
        """
        earlier = self.redis.set(self.body_key(subject_id, event), built, nx=True,
                                 ex=self.store.retention, get=True)
        return built if earlier is None else earlier

    # ----------------------------------------------------------------- attempt
    def begin(self, subject_id: str, token: str, lease: float, event: str,
              record_key: str) -> Begun | None:
        """Claim attempt ``token`` (like ``claim``) and read what the attempt needs.

        None if the attempt runs or ran elsewhere; otherwise the record at ``record_key``,
        the stored body of ``event`` and the record's partner, all in one round trip.
        """
        found = self._begin(keys=[self.claim_key(subject_id, token),
                                  self.body_key(subject_id, event), record_key],
                            args=[max(1, int(lease) + 1), self.store.key("partner", "")])
        if not found:
            return None
        record, body, partner = found
        return Begun(_pairs(record), body, _pairs(partner))

    # ---------------------------------------------------------------- claims
    def claim(self, subject_id: str, token: str, lease: float) -> bool:
        """Take attempt ``token`` for ``lease`` s; False if it runs or ran elsewhere.

        A duplicate message (acks_late, an ETA retry redelivered after the visibility
        timeout) finds the claim and sends nothing; a worker that died mid-attempt lets
        the lease lapse, so the broker's redelivery can try again.
        """
        key = self.claim_key(subject_id, token)
        return bool(self.redis.set(key, "running", nx=True, ex=max(1, int(lease) + 1)))

    def complete(self, subject_id: str, token: str) -> None:
        """Mark attempt ``token`` done for the retention period."""
        self.redis.set(self.claim_key(subject_id, token), "done", ex=self.store.retention)

    # --------------------------------------------------------------- attempts
    def record(self, subject_id: str, entry: dict[str, Any], state: str,
               kind: str = "job", token: str | None = None) -> int:
        """Append one attempt, update the summary (and job record); returns attempts so far.

        The entry is stored with ``"attempt"`` (its number) added last. With ``token``,
        that attempt's claim is marked done in the same call. One round trip.
        """
        head = json.dumps(entry, separators=(",", ":"))
        head = (head[:-1] + ',"attempt":') if entry else '{"attempt":'
        keys = [self._key(subject_id), self.log_key(subject_id),
                self.claim_key(subject_id, token) if token is not None else "",
                self.store.key("job", subject_id)]
        args = [state, entry["webhook_id"], entry["event"], entry["at"], self.store.retention,
                MAX_LOG, head, "1" if kind == "job" else "0"]
        return int(self._finish(keys=keys, args=args))

    def set_state(self, subject_id: str, state: str, kind: str = "job") -> None:
        """Set the delivery state without an attempt (e.g. ``pending`` on redelivery)."""
        summary = self._key(subject_id)
        pipe = self.redis.pipeline()
        pipe.hset(summary, "state", state)
        pipe.expire(summary, self.store.retention)
        pipe.execute()
        if kind == "job":
            self._mirror(keys=[self.store.key("job", subject_id)], args=[state, ""])

    def attempts(self, subject_id: str) -> list[dict[str, Any]]:
        """Every recorded attempt, oldest first."""
        return [json.loads(raw) for raw in self.redis.lrange(self.log_key(subject_id), 0, -1)]

    def summary(self, subject_id: str, has_callback: bool = True) -> dict[str, Any]:
        """``{"state", "attempts"}`` as the job view shows it (also for batches)."""
        if not has_callback:
            return {"state": "none", "attempts": 0}
        raw = self.redis.hgetall(self._key(subject_id))
        return {"state": raw.get("state") or "pending", "attempts": int(raw.get("attempts") or 0)}
