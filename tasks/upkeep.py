"""Worker upkeep: a consumer bootstep with timers in every worker's main process.

- **Fresh messages** (every visibility timeout / 6): the messages this worker holds
  unacknowledged get a new timestamp in kombu's ``unacked_index``, so the broker's
  visibility timeout restores a message only once its worker has stopped refreshing it:
  a killed worker's jobs run again within about one timeout (30 s by default), and a
  long job is never handed to a second worker while the first still runs it.
- **Alive** (same timer): ``<prefix>:worker:<node name>`` with a short TTL.
- **Due deliveries** (every second): ``jobgate.due.move_due`` queues due retries.
- **Sweeper** (every ``JOBGATE_SWEEP_INTERVAL`` s): the worker holding a short lease runs
  one ``jobgate.sweeper.sweep`` pass.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state as worker_state

from jobgate.due import move_due
from jobgate.sweeper import sweep

log = logging.getLogger("jobgate.upkeep")


def held_delivery_tags() -> list[str]:
    """Delivery tags of every message this worker process has taken and not acked."""
    requests = {*list(worker_state.requests.values()), *list(worker_state.active_requests)}
    tags = []
    for request in requests:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            tags.append(str(tag))
    return tags


class Upkeep(bootsteps.StartStopStep):
    """Registered on every app ``make_celery`` builds (``app.steps["consumer"]``)."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timers: list[Any] = []
        self._broker: redis.Redis | None = None
        self._unacked_index = "unacked_index"

    def start(self, c: Any) -> None:
        app, settings = c.app, c.app.settings
        self.node = c.hostname
        self.every = max(1.0, settings.visibility_timeout / 6)
        if app.conf.broker_url.startswith(("redis://", "rediss://")):
            self._broker = redis.Redis.from_url(app.conf.broker_url, decode_responses=True,
                                                socket_timeout=5, socket_connect_timeout=2)
            channel = c.task_consumer.channel
            self._unacked_index = (getattr(channel, "global_keyprefix", "") or "") + \
                channel.unacked_index_key
        self._timers = [
            c.timer.call_repeatedly(self.every, self._guard, (self.refresh, c)),
            c.timer.call_repeatedly(1.0, self._guard, (self.move_due, c)),
            c.timer.call_repeatedly(settings.sweep_interval, self._guard, (self.sweep, c)),
        ]
        self._guard(self.refresh, c)

    def stop(self, c: Any) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self._broker is not None:
            self._broker.close()

    @staticmethod
    def _guard(step: Any, c: Any) -> None:
        """Run one upkeep step; an error is logged and the next tick tries again."""
        try:
            step(c)
        except Exception:  # noqa: BLE001 - a timer that raises would stop for good
            log.warning("upkeep: %s failed", step.__name__, exc_info=True)

    def refresh(self, c: Any) -> None:
        store, now = c.app.store, time.time()
        store.redis.set(store.key("worker", self.node), now, ex=int(self.every * 3) + 1)
        tags = held_delivery_tags()
        if tags and self._broker is not None:
            # XX: only messages still unacknowledged; one acked meanwhile stays gone.
            self._broker.zadd(self._unacked_index, dict.fromkeys(tags, now), xx=True)

    def move_due(self, c: Any) -> None:
        moved = move_due(c.app.store, c.app.messenger)
        if moved:
            log.info("upkeep: queued %d due deliveries", moved)

    def sweep(self, c: Any) -> None:
        app = c.app
        store, settings = app.store, app.settings
        lease = store.key("sweeper")
        ttl_ms = int(settings.sweep_interval * 2000)
        if not store.redis.set(lease, self.node, nx=True, px=ttl_ms):
            if store.redis.get(lease) != self.node:
                return  # another worker sweeps
            store.redis.pexpire(lease, ttl_ms)
        repairs = sweep(store, app.messenger,
                        stale_after=settings.visibility_timeout + settings.sweep_interval)
        if repairs:
            log.warning("sweeper: repaired %s", dict(repairs))
