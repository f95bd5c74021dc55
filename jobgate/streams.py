"""A partner's open streams (SSE ``/events`` and held ``?wait=`` reads), counted in Redis.

Each open stream holds a lease: an entry of the partner's ZSET ``<prefix>:streams:<id>``
(stream id -> expiry), taken against the partner's ``max_open_streams`` in one script
(``stream_open.lua``), refreshed while the stream lives and removed when it ends. A
gateway process that dies leaves its entries behind; they stop counting once their
lease runs out (``LEASE``), so a crash never keeps a partner's share.
"""

from __future__ import annotations

import time
import uuid

from redis.exceptions import RedisError

from jobgate.store import Store

LEASE = 30.0  # seconds an open stream counts unless refreshed
REFRESH = 10.0  # seconds between a live stream's refreshes (well inside LEASE)


class StreamLease:
    """One open stream's entry; ``refresh`` while it lives, ``release`` once (idempotent)."""

    def __init__(self, store: Store, partner_id: str, stream_id: str, lease: float) -> None:
        self.store = store
        self.partner_id = partner_id
        self.stream_id = stream_id
        self.lease = lease
        self.refreshed = time.monotonic()
        self.released = False

    @property
    def key(self) -> str:
        return streams_key(self.store, self.partner_id)

    def due(self) -> float:
        """Seconds until the next refresh is due (0: now)."""
        return max(0.0, self.refreshed + min(REFRESH, self.lease / 3) - time.monotonic())

    def refresh(self) -> None:
        """Extend the lease (only an entry still held: a released one stays released)."""
        if self.released:
            return
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.zadd(self.key, {self.stream_id: time.time() + self.lease}, xx=True)
        pipe.expire(self.key, int(self.lease * 2) + 1)
        pipe.execute()
        self.refreshed = time.monotonic()

    def release(self) -> None:
        if not self.released:
            self.released = True
            try:
                self.store.redis.zrem(self.key, self.stream_id)
            except RedisError:
                pass  # Redis unreachable: the lease runs out on its own (LEASE)


def streams_key(store: Store, partner_id: str) -> str:
    return store.key("streams", partner_id)


def take(
    store: Store, partner_id: str, limit: int, lease: float | None = None
) -> StreamLease | None:
    """A lease for one more open stream of the partner, None if it has ``limit`` open
    (0: no limit)."""
    lease = LEASE if lease is None else lease
    stream_id = uuid.uuid4().hex
    now = time.time()
    taken = store.scripts["stream_open"](
        keys=[streams_key(store, partner_id)],
        args=[now, now + lease, limit, stream_id, int(lease * 2) + 1],
    )
    return StreamLease(store, partner_id, stream_id, lease) if taken else None


def count(store: Store, partner_id: str) -> int:
    """The partner's open streams whose lease has not run out."""
    return int(store.redis.zcount(streams_key(store, partner_id), f"({time.time()}", "+inf"))
