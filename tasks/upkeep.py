"""Worker upkeep: what every worker does besides running tasks.

- **Fresh messages** (a thread, every visibility timeout / 10): the messages this worker
  process holds unacknowledged get a new timestamp in kombu's ``unacked_index``, so the
  broker's visibility timeout restores a message only once its worker has stopped
  refreshing it: a killed worker's jobs run again within about one timeout (30 s by
  default), and a running job is never handed to a second worker while the first runs it.
  A thread, not a consumer timer: the consumer stops first at a warm shutdown, while the
  pool finishes its jobs, and those jobs must stay fresh until they are acked. The broker's
  scores are written first and on their own, so a store Redis that fails cannot stop them.
- **Alive** (same thread): ``Store.mark_worker_alive``, a short-lived key per node that
  delivery claims check, and the set ``/readyz`` counts.
- **Due deliveries** (consumer timer, every second): ``jobgate.due.move_due``; an entry
  due before the next tick (an endpoint's next turn, ``jobgate.webhooks.throttle``) gets
  a one-shot timer at its time (the earliest after each move, ``jobgate.due.next_due``,
  and any this process's attempts put there, ``jobgate.due.wake``), so turns are not
  bunched per second.
- **Sweeper** (consumer timer, every ``JOBGATE_SWEEP_INTERVAL`` s): the worker holding a
  lease runs one ``jobgate.sweeper.sweep`` pass, in a thread so that a long pass never
  stalls the consumer's loop. A lease whose holder is no longer alive is taken over.
- **Archiver** (a thread): drains the archive stream into the database in chunks
  (``jobgate.archive``); every worker process runs one, the stream's consumer group shares
  the work. The one holding the pruner's lease also deletes history older than
  ``JOBGATE_JOB_RETENTION``, every ``PRUNE_EVERY`` s (``jobgate.retention``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state as worker_state
from redis.exceptions import WatchError

from jobgate.archive import Archiver
from jobgate.connections import redis_client
from jobgate.due import WAKERS, move_due, next_due
from jobgate.lifecycle import dispatch
from jobgate.outbox import HANDOFF_GRACE, relay
from jobgate.retention import prune
from jobgate.store import Store
from jobgate.sweeper import sweep
from jobgate.webhooks import operational
from tasks.transport import RedisQueues

log = logging.getLogger("jobgate.upkeep")


def held_delivery_tags() -> list[str]:
    """Delivery tags of every message this worker process has taken and not acked."""
    for _ in range(3):  # the consumer's thread may change the sets while we copy them
        try:
            requests = {
                *list(worker_state.requests.values()),
                *list(worker_state.reserved_requests),
                *list(worker_state.active_requests),
            }
            break
        except RuntimeError:
            continue
    else:
        return []
    tags: list[str] = []
    for request in requests:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            tags.append(str(tag))
    return tags


class Refresher(threading.Thread):
    """Keeps held messages fresh and the node alive, until the process exits."""

    def __init__(
        self,
        app: Any,
        node: str,
        unacked_index: str | None,
        slots: int = 0,
        pools: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name="jobgate-refresh", daemon=True)
        self.store = app.store
        self.node = node
        self.slots = slots  # job-pool processes, for the dispatcher's window
        self.pools = pools  # what the node runs, for the dashboard (pools_of)
        self.every = app.settings.worker_refresh_every
        self.alive_for = app.settings.worker_alive_for
        self.unacked_index = unacked_index
        self.broker: redis.Redis | None = None
        if unacked_index is not None:
            self.broker = redis_client(
                app.conf.broker_url,
                sentinel_master=app.settings.sentinel_master_for(app.conf.broker_url),
            )

    def run(self) -> None:
        while True:
            self.tick()
            time.sleep(self.every)

    def tick(self) -> None:
        now = time.time()
        tags = held_delivery_tags()
        if tags and self.broker is not None:
            try:
                # XX: only messages still unacknowledged; one acked meanwhile stays gone.
                self.broker.zadd(self.unacked_index, dict.fromkeys(tags, now), xx=True)
            except Exception:  # noqa: BLE001 - the next tick tries again
                log.warning("upkeep: refreshing %d held messages failed", len(tags), exc_info=True)
        try:
            self.store.mark_worker_alive(self.node, self.alive_for, self.slots, self.pools)
        except Exception:  # noqa: BLE001
            log.warning("upkeep: the liveness key could not be written", exc_info=True)


PRUNE_EVERY = 3600.0
ARCHIVE_LINGER = 0.5  # seconds of archive lag traded for larger chunks (docs/database.md)


def sweeper_lease_seconds(sweep_interval: float) -> float:
    """How long the sweeper's lease outlives its holder's last renewal; a worker killed
    while holding it loses it sooner, once its liveness key expires (``take_over``)."""
    return max(sweep_interval * 3, 60.0)


def take_over(store: Store, lease: str, holder: Any, node: str, ttl_ms: int) -> bool:
    """Take the sweeper's lease from ``holder`` if that worker is no longer alive (killed
    while it held it), rather than wait out the lease; False if it lives or another worker
    took the lease first."""
    if holder is None or store.redis.exists(store.alive_key(str(holder))):
        return False
    with store.redis.pipeline() as pipe:
        try:
            pipe.watch(lease)
            if pipe.get(lease) != holder:
                return False
            pipe.multi()
            pipe.set(lease, node, px=ttl_ms)
            pipe.execute()
        except WatchError:
            return False
    log.warning("sweeper: took the lease of %s, a worker no longer alive", holder)
    return True


class ArchiveThread(threading.Thread):
    """Archives until the process exits; a failing database is retried every second (the
    entries wait in the stream), with one warning a minute."""

    def __init__(self, app: Any, node: str) -> None:
        super().__init__(name="jobgate-archive", daemon=True)
        self.app = app
        self.node = node
        self.archiver = Archiver(
            app.store, app.database, consumer=node, batch=app.settings.archive_batch
        )
        self._warned = 0.0
        self._pruned = 0.0
        self._restored = 0.0
        # How often the holder of the lease looks for jobs Redis lost (30 s by default).
        self.restore_every = max(2.0, 2 * app.settings.sweep_interval)

    def run(self) -> None:
        while True:
            failed = False
            # Each step on its own: a database that refuses the archive must not stop
            # the restore of what Redis lost, nor the other way round.
            for step in (self.archive, self.maybe_restore, self.maybe_prune):
                try:
                    step()
                except Exception:  # noqa: BLE001 - the database or Redis is down: try again
                    failed = True
                    if time.monotonic() - self._warned > 60:
                        self._warned = time.monotonic()
                        log.warning("archive: an upkeep step failed; retrying", exc_info=True)
            if failed:
                time.sleep(1.0)

    def archive(self) -> None:
        """One chunk; after a chunk that was not full, wait ARCHIVE_LINGER s so that the
        next one is larger (each chunk costs a fixed few round trips, so small chunks cost
        the archiver several times the CPU per job of full ones; docs/performance.md)."""
        taken = self.archiver.run_once(block_ms=1000)
        if 0 < taken < self.archiver.batch:
            time.sleep(ARCHIVE_LINGER)

    def maybe_restore(self) -> None:
        """Jobs the database holds as unsettled and Redis does not: handed over again."""
        if time.monotonic() - self._restored < self.restore_every:
            return
        self._restored = time.monotonic()
        store, every = self.app.store, self.restore_every
        if not store.redis.set(store.key("restorer"), self.node, nx=True, px=int(every * 1000)):
            return
        older_than = max(every, HANDOFF_GRACE)
        relay(store, self.app.database, self.app.messenger, older_than=older_than)
        # Operational events committed and not handed over (or lost by Redis): the same.
        operational.relay(store, self.app.database, self.app.messenger, older_than=older_than)

    def maybe_prune(self) -> None:
        if time.monotonic() - self._pruned < PRUNE_EVERY:
            return
        self._pruned = time.monotonic()
        store = self.app.store
        if not store.redis.set(store.key("pruner"), self.node, nx=True, ex=int(PRUNE_EVERY)):
            return
        deleted = prune(self.app.database, self.app.settings.job_retention)
        if deleted:
            log.info("archive: pruned %d jobs past retention", deleted)


def job_slots(c: Any) -> int:
    """The job-pool processes of a node that consumes the jobs queue, else 0 (the
    delivery pool's slots are not the dispatcher's)."""
    queues = {queue.name for queue in getattr(c.task_consumer, "queues", ())}
    if c.app.messenger.jobs_queue not in queues:
        return 0
    return int(getattr(c.controller, "concurrency", 0) or 0)


def pools_of(c: Any) -> dict[str, Any]:
    """What a node runs, for the dashboard: its pools (``jobs`` for the jobs queue,
    ``webhooks`` for the deliveries' queue, any other queue by its name) and its slots
    (the pool's processes or greenlets)."""
    messenger = c.app.messenger
    names = {messenger.jobs_queue: "jobs", messenger.webhooks_queue: "webhooks"}
    queues = sorted(queue.name for queue in getattr(c.task_consumer, "queues", ()))
    return {
        "pools": [names.get(queue, queue) for queue in queues],
        "slots": int(getattr(c.controller, "concurrency", 0) or 0),
    }


SOON_STEP = 0.02  # seconds: the shortest wait of a one-shot due move


class Upkeep(bootsteps.StartStopStep):
    """Registered on every app ``make_celery`` builds (``app.steps["consumer"]``)."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timers: list[Any] = []
        self._refresher: Refresher | None = None
        self._archiving: ArchiveThread | None = None
        self._sweeping: threading.Thread | None = None
        self._soon: Any = None  # the one-shot move of an entry due before the next tick
        self._soon_at = 0.0  # its time
        # wake() is called from delivery slots too: threads under --delivery-pool threads.
        self._soon_lock = threading.Lock()

    def start(self, c: Any) -> None:
        app, settings = c.app, c.app.settings
        self.node = c.hostname
        if self._refresher is None:  # once per process: it outlives consumer restarts
            unacked_index = None
            if app.conf.broker_url.startswith(("redis://", "rediss://", "sentinel://")):
                unacked_index = RedisQueues.of(c.task_consumer.channel).unacked_index
            self._refresher = Refresher(app, self.node, unacked_index, job_slots(c), pools_of(c))
            self._refresher.tick()
            self._refresher.start()
            self._archiving = ArchiveThread(app, self.node)
            self._archiving.start()
        WAKERS[id(self)] = lambda at: self.wake(c, at)
        self._timers = [
            c.timer.call_repeatedly(1.0, self._guard, (self.move_due, c)),
            c.timer.call_repeatedly(1.0, self._guard, (self.dispatch, c)),
            c.timer.call_repeatedly(settings.sweep_interval, self._guard, (self.sweep, c)),
        ]

    def stop(self, c: Any) -> None:
        WAKERS.pop(id(self), None)
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None

    @staticmethod
    def _guard(step: Any, c: Any) -> None:
        """Run one upkeep step; an error is logged and the next tick tries again."""
        try:
            step(c)
        except Exception:  # noqa: BLE001 - a timer that raises would stop for good
            log.warning("upkeep: %s failed", step.__name__, exc_info=True)

    def move_due(self, c: Any) -> None:
        moved = move_due(c.app.store, c.app.messenger)
        if moved:
            log.info("upkeep: queued %d due deliveries", moved)
        due = next_due(c.app.store)
        if due is not None:
            self.wake(c, due)

    def wake(self, c: Any, at: float) -> None:
        """Move due entries at ``at`` too, when that is before the next tick (one
        one-shot timer at a time: the earliest)."""
        delay = at - time.time()
        if delay >= 1.0 or not self._timers:
            return
        with self._soon_lock:
            if self._soon is not None:
                if self._soon_at <= at:
                    return
                self._soon.cancel()
            self._soon_at = at
            self._soon = c.timer.call_after(max(delay, SOON_STEP), self._guard, (self.move_soon, c))

    def move_soon(self, c: Any) -> None:
        """The one-shot move ``move_due`` scheduled (it may schedule the next)."""
        with self._soon_lock:
            self._soon = None
        self.move_due(c)

    def dispatch(self, c: Any) -> None:
        """The dispatcher's tick: delayed jobs that are due, and a turn lost by a partner
        (jobgate/scripts/dispatch.lua); a submit and every job's end dispatch too."""
        dispatch(c.app.store, c.app.messenger)

    def sweep(self, c: Any) -> None:
        """Hold or renew the sweeper's lease; start a pass unless one still runs here."""
        app = c.app
        store, settings = app.store, app.settings
        lease = store.key("sweeper")
        ttl_ms = int(sweeper_lease_seconds(settings.sweep_interval) * 1000)
        if not store.redis.set(lease, self.node, nx=True, px=ttl_ms):
            holder = store.redis.get(lease)
            if holder != self.node and not take_over(store, lease, holder, self.node, ttl_ms):
                return  # another worker sweeps
            store.redis.pexpire(lease, ttl_ms)
        if self._sweeping is not None and self._sweeping.is_alive():
            return
        self._sweeping = threading.Thread(
            target=self._guard, args=(self._pass, c), name="jobgate-sweep", daemon=True
        )
        self._sweeping.start()

    def _pass(self, c: Any) -> None:
        app = c.app
        repairs = sweep(
            app.store,
            app.messenger,
            stale_after=app.settings.visibility_timeout + app.settings.sweep_interval,
            broker=RedisQueues.of(c.task_consumer.channel) if app.messenger.inline else None,
            db=app.database,
        )
        if repairs:
            log.warning("sweeper: repaired %s", dict(repairs))
