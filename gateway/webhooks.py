"""Webhook bookkeeping in Redis: the stored event body, attempt claims, the attempts log.

Every key lives for the retention period. The body of an event is built once and stored,
so every retry and redelivery sends the same bytes under the same ``webhook-id``; each
attempt is appended to the subject's deliveries log and summarised (state, attempts) both
in a small summary hash and, for jobs, in the job record that ``webhook_summary`` reads.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.store import Store, utcnow

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

    def _key(self, subject_id: str, *parts: str) -> str:
        return self.store.key("webhook", subject_id, *parts)

    def log_key(self, subject_id: str) -> str:
        return self.store.key("deliveries", subject_id)

    # ------------------------------------------------------------------ body
    def body(self, subject_id: str, event: str, build: Any) -> str:
        """The stored body of ``event``; ``build()`` makes it the first time (first wins)."""
        key = self._key(subject_id, event, "body")
        stored = self.redis.get(key)
        if stored is not None:
            return stored
        self.redis.set(key, build(), nx=True, ex=self.store.retention)
        return self.redis.get(key)

    # ---------------------------------------------------------------- claims
    def claim(self, subject_id: str, token: str, lease: float) -> bool:
        """Take attempt ``token`` for ``lease`` s; False if it runs or ran elsewhere.

        A duplicate message (acks_late, an ETA retry redelivered after the visibility
        timeout) finds the claim and sends nothing; a worker that died mid-attempt lets
        the lease lapse, so the broker's redelivery can try again.
        """
        key = self._key(subject_id, "claim", token)
        return bool(self.redis.set(key, "running", nx=True, ex=max(1, int(lease) + 1)))

    def complete(self, subject_id: str, token: str) -> None:
        """Mark attempt ``token`` done for the retention period."""
        self.redis.set(self._key(subject_id, "claim", token), "done", ex=self.store.retention)

    # --------------------------------------------------------------- attempts
    def record(self, subject_id: str, entry: dict[str, Any], state: str,
               kind: str = "job") -> int:
        """Append one attempt, update the summary (and job record); returns attempts so far."""
        summary = self._key(subject_id)
        log = self.log_key(subject_id)
        attempts = int(self.redis.hincrby(summary, "attempts", 1))
        entry = {**entry, "attempt": attempts}
        pipe = self.redis.pipeline()
        pipe.hset(summary, mapping={"state": state, "webhook_id": entry["webhook_id"],
                                    "event": entry["event"], "last_attempt_at": entry["at"]})
        pipe.expire(summary, self.store.retention)
        pipe.rpush(log, json.dumps(entry, separators=(",", ":")))
        pipe.ltrim(log, -MAX_LOG, -1)
        pipe.expire(log, self.store.retention)
        pipe.execute()
        if kind == "job":
            self._mirror(keys=[self.store.key("job", subject_id)], args=[state, str(attempts)])
        return attempts

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
