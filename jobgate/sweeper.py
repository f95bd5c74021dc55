"""Repair records that disagree with the broker; one worker runs a pass at a time.

What a pass looks for, each counted in ``<prefix>:repairs`` (``/metrics``) and logged:

- ``job_requeued``: a job still live (PENDING or STARTED) whose message is nowhere, neither
  queued nor held by a worker (a worker died between taking a message and recording it,
  or Redis lost it): its message is queued again, from the params kept in the record. A
  job whose worker died while running it is the broker's to redeliver (the visibility
  timeout, see tasks.upkeep) and is found here only if that message is gone too.
- ``job_failed_lost``: the same, for a record too old to carry its params: it ends FAILURE.
- ``delivery_requeued``: a delivery attempt queued or scheduled but never recorded whose
  message is nowhere (lost with a worker, or the attempt died on a Redis error): queued
  again under the same task id; the attempt's claim stops a second send. The same for
  an event's fan-out step to its partner's endpoints (``fan:…``), which creates each
  endpoint's message once however often it runs.
- ``batch_member_counted``: an ended member a batch never counted; counting it may
  complete the batch and queue ``batch.completed``.

With the broker on the store's Redis (``messenger.inline``), "nowhere" is decided from
the broker itself: the queues (the job's own, from its record, and the messenger's), the
messages workers hold unacknowledged (both read through a ``Broker``: the worker's upkeep
gives ``tasks.transport.RedisQueues``, which knows kombu's keys) and the due set, each
snapshot taken in one MULTI, and a second snapshot a second later before anything is
repaired. Deliveries
are looked for on the messenger's webhooks queue: deployments (and test worlds) that use
other queue names use their own key prefix too. A pass reads every queued message, so its
cost grows with the backlog (about 1 s per 100 000 queued messages here); it runs in a
thread of its own, off the worker's consumer loop.

With another broker (RabbitMQ) the sweeper cannot look inside it, and need not: once a
publish is confirmed the broker keeps the message, and gives a dead consumer's back. What
it repairs is a message its sender never handed over (``jobgate.handoff``): a job
dispatched ``stale_after`` ago, not started, whose send has no handed mark, is sent again
under a new token (``job_requeued``); a delivery open past its deadline (the handoff
grace, or the handed grace) and not on the due set is sent again (``delivery_requeued``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, cast

from sqlalchemy.exc import SQLAlchemyError

from jobgate import handoff, lifecycle
from jobgate.batches import batch_record, member_ids
from jobgate.db import Database
from jobgate.ends import committed_ends
from jobgate.events import delivery_call, parse_delivery_task_id, parse_fan_out_task_id
from jobgate.messages import DELIVER_TASK, FAN_OUT_TASK, Messenger
from jobgate.status import TERMINAL
from jobgate.store import Store

log = logging.getLogger("jobgate.sweeper")

REPAIR_KINDS = (
    "job_requeued",
    "job_failed_lost",
    "delivery_requeued",
    "batch_member_counted",
    "restored",  # by jobgate.archive.restore, after Redis lost its data
)
LIMIT = 1000  # candidates of each kind looked at per pass


class Broker(Protocol):
    """The broker's messages when it is the store's Redis, as the sweeper reads them; its
    layout is the transport's (``tasks.transport.RedisQueues``), never the domain's."""

    def read(self, pipe: Any, queues: Sequence[str]) -> None:
        """Add to ``pipe`` the reads of the messages queued on ``queues`` and held
        unacknowledged by workers."""

    def task_ids(self, replies: Sequence[Any]) -> set[str]:
        """The task ids of the messages in ``read``'s replies."""
        ...

    def push_next(self, redis: Any, queue: str, message: str) -> None:
        """Queue ``message`` on ``queue`` where a worker takes it next."""


def inflight_ids(store: Store, broker: Broker | None, queues: Sequence[str]) -> set[str]:
    """Task ids of every message queued on ``queues`` or held unacknowledged by a worker
    (``broker``'s; None: the due set only), or scheduled on the due set: one snapshot
    (MULTI), so a message moving between two of them while they are read is not missed."""
    pipe = store.redis.pipeline(transaction=True)
    pipe.zrange(store.due_key, 0, -1)
    if broker is not None:
        broker.read(pipe, queues)
    due, *replies = pipe.execute()
    found = broker.task_ids(replies) if broker is not None else set()
    for row in due:
        try:
            found.add(str(json.loads(row)["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return found


def sweep(
    store: Store,
    messenger: Messenger,
    *,
    stale_after: float,
    now: float | None = None,
    recheck_after: float = 1.0,
    broker: Broker | None = None,
    db: Database | None = None,
) -> Counter[str]:
    """One pass; returns the repairs made by kind. An end it gives a job is committed to
    ``db`` first, as every end is (``lifecycle.finish_job``). ``broker`` is required when
    the messenger is ``inline`` (the broker is the store's Redis).

    What looks lost in a first snapshot is looked for again ``recheck_after`` s later: a
    worker takes a message with ``BRPOP`` and records it as unacknowledged in a second
    step, and a message between the two is in neither.
    """
    now = time.time() if now is None else now
    repairs: Counter[str] = Counter()
    _count_batches(store, messenger, now - stale_after, repairs)
    if not messenger.inline:
        _resend(store, messenger, now, stale_after, repairs, db)
        return _recorded(store, repairs)
    if broker is None:
        raise TypeError("sweep: an inline messenger's broker is the store's Redis: give it")
    live = _older(store, store.key("live"), now - stale_after)  # dispatched long ago
    overdue = _older(store, store.open_key, now)
    if not live and not overdue:
        return _recorded(store, repairs)
    queues = sorted(
        {
            messenger.jobs_queue,
            messenger.webhooks_queue,
            *(r["queue"] for r in store.jobs(live) if r and r.get("queue")),
        }
    )
    seen = inflight_ids(store, broker, queues)
    missing_jobs = [job_id for job_id in live if job_id not in seen]
    missing_deliveries = [task_id for task_id in overdue if task_id not in seen]
    if missing_jobs or missing_deliveries:
        time.sleep(recheck_after)
        seen = inflight_ids(store, broker, queues)
        lost = [j for j in missing_jobs if j not in seen]
        lost_deliveries = [t for t in missing_deliveries if t not in seen]
        _repair_jobs(store, messenger, broker, lost, repairs, db)
        _repair_deliveries(store, messenger, broker, lost_deliveries, repairs)
    # Overdue but found queued (a backlog) or just repaired: look again a grace later.
    if overdue:
        store.redis.zadd(store.open_key, dict.fromkeys(overdue, now + store.open_grace), xx=True)
    return _recorded(store, repairs)


def _older(store: Store, key: str, before: float) -> list[str]:
    """The members of the sorted set ``key`` scored ``before`` or less (at most LIMIT): live
    jobs by dispatch time, open deliveries by deadline, live batches by creation."""
    return cast("list[str]", store.redis.zrangebyscore(key, "-inf", before, start=0, num=LIMIT))


def _still_live(store: Store, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The records of ``job_ids`` that are live; one expired or ended leaves the live set."""
    live = {}
    for job_id, record in zip(job_ids, store.jobs(job_ids), strict=True):
        if record is None or record.get("status") in TERMINAL:
            store.redis.zrem(store.key("live"), job_id)
        else:
            live[job_id] = record
    return live


def _end_lost(
    store: Store, messenger: Messenger, job_id: str, db: Database | None, repairs: Counter[str]
) -> None:
    """End a job whose message is gone and whose record cannot make another (no params)."""
    log.warning(
        "job %s: its message was lost and its record has no params; ending it",
        job_id,
        extra={"job_id": job_id},
    )
    lifecycle.finish_job(
        messenger,
        store,
        job_id,
        "FAILURE",
        db=db,
        error="lost: the job's message was lost before it ended.",
    )
    repairs["job_failed_lost"] += 1


@contextmanager
def _alone(kind: str, subject_id: str) -> Iterator[None]:
    """One repair whose failure (Redis or the database unreachable for it) is logged and
    leaves the pass to the next ones: the next pass tries it again."""
    try:
        yield
    except Exception:  # noqa: BLE001 - any repair's failure; the next pass retries it
        log.warning("sweeper: repairing %s %s failed", kind, subject_id, exc_info=True)


def _recorded(store: Store, repairs: Counter[str]) -> Counter[str]:
    if repairs:
        pipe = store.redis.pipeline()
        for kind, count in repairs.items():
            pipe.hincrby(store.key("repairs"), kind, count)
        pipe.execute()
    return repairs


def _repair_jobs(
    store: Store,
    messenger: Messenger,
    broker: Broker,
    job_ids: list[str],
    repairs: Counter[str],
    db: Database | None = None,
) -> None:
    for job_id, record in _still_live(store, job_ids).items():
        if "params" not in record:
            with _alone("job", job_id):
                _end_lost(store, messenger, job_id, db, repairs)
            continue
        queue = record.get("queue") or messenger.jobs_queue
        message = messenger.envelope(
            record["task"], record["task_id"], queue=queue, kwargs=record["params"]
        )
        broker.push_next(store.redis, queue, message)  # the repaired job runs next
        log.warning(
            "job %s (%s) had no message anywhere; queued it again",
            job_id,
            "started" if record.get("started_at") else "pending",
            extra={"job_id": job_id},
        )
        repairs["job_requeued"] += 1


def _delivery_task(task_id: str) -> tuple[str, str, list[Any], dict[str, Any]] | None:
    """(task name, subject id, args, kwargs) of an open delivery's message; None for a
    task id that names none."""
    parsed = parse_delivery_task_id(task_id)
    if parsed is not None:
        kind, subject_id, event, chain, retry = parsed
        _, args, kwargs = delivery_call(kind, subject_id, event, chain, retry)
        return DELIVER_TASK, subject_id, list(args), kwargs
    fan = parse_fan_out_task_id(task_id)
    if fan is not None:  # an event's fan-out step to its partner's endpoints
        return FAN_OUT_TASK, fan[1], list(fan), {}
    return None


def _repair_deliveries(
    store: Store, messenger: Messenger, broker: Broker, task_ids: list[str], repairs: Counter[str]
) -> None:
    queue = messenger.webhooks_queue
    for task_id in task_ids:
        task = _delivery_task(task_id)
        if task is None:
            store.redis.zrem(store.open_key, task_id)
            continue
        name, subject_id, args, kwargs = task
        message = messenger.envelope(name, task_id, queue=queue, args=args, kwargs=kwargs)
        broker.push_next(store.redis, queue, message)
        log.warning(
            "delivery %s had no message anywhere; queued it again",
            task_id,
            extra={"job_id": subject_id},
        )
        repairs["delivery_requeued"] += 1


def _resend(
    store: Store,
    messenger: Messenger,
    now: float,
    stale_after: float,
    repairs: Counter[str],
    db: Database | None = None,
) -> None:
    """A broker apart: send again what no sender handed over (``jobgate.handoff``), and
    record the committed end of a started job that Redis never took (its worker's end
    retries ran out: the broker has acknowledged its message, so no run comes again)."""
    records = _still_live(store, _older(store, store.key("live"), now - stale_after))
    started = [j for j, r in records.items() if r.get("started_at")]
    ended: dict[str, dict[str, Any]] = {}
    if db is not None and started:
        try:
            ended = committed_ends(db, started)
        except SQLAlchemyError:  # the database down: the re-sends need Redis only
            log.warning("sweeper: the committed ends could not be read", exc_info=True)
    for job_id, record in records.items():
        with _alone("job", job_id):
            if end := ended.get(job_id):
                fields = {k: v for k, v in end.items() if k != "status"}
                lifecycle.finish_job(messenger, store, job_id, end["status"], db=db, **fields)
                log.warning(
                    "job %s: its committed end (%s) was never recorded; recorded it",
                    job_id,
                    end["status"],
                    extra={"job_id": job_id},
                )
                repairs["job_end_recorded"] += 1
            elif not handoff.unsent(record):
                continue
            elif "params" not in record:
                _end_lost(store, messenger, job_id, db, repairs)
            elif handoff.send_job(store, messenger, record):
                log.warning(
                    "job %s was dispatched and never handed to the broker; sent it again",
                    job_id,
                    extra={"job_id": job_id},
                )
                repairs["job_requeued"] += 1
    overdue = _older(store, store.open_key, now)
    if not overdue:
        return
    waiting = inflight_ids(store, None, [])  # the due set: retries and deferred attempts
    for task_id in overdue:
        task = _delivery_task(task_id)
        if task is None:
            store.redis.zrem(store.open_key, task_id)
        elif task_id in waiting:  # its message is written when it is due: look again later
            store.redis.zadd(store.open_key, {task_id: now + store.open_grace}, xx=True)
        else:
            name, subject_id, args, kwargs = task
            with _alone("delivery", task_id):
                handoff.send_delivery(store, messenger, name, task_id, args=args, kwargs=kwargs)
                log.warning(
                    "delivery %s was open and not handed to the broker; sent it again",
                    task_id,
                    extra={"job_id": subject_id},
                )
                repairs["delivery_requeued"] += 1


def _count_batches(
    store: Store, messenger: Messenger, before: float, repairs: Counter[str]
) -> None:
    live_key = store.key("batches", "live")
    for batch_id in _older(store, live_key, before):
        record = batch_record(store, batch_id)
        if record is None or record.get("finished_at"):
            store.redis.zrem(live_key, batch_id)
            continue
        ids = member_ids(store, batch_id)
        counted = store.redis.smismember(store.key("batch", batch_id, "done"), ids) if ids else []
        for job_id, done, job in zip(ids, counted, store.jobs(ids), strict=True):
            if done or job is None or job.get("status") not in TERMINAL:
                continue
            lifecycle.count_batch_member(messenger, store, job)
            log.warning(
                "batch %s never counted member %s; counted it",
                batch_id,
                job_id,
                extra={"batch_id": batch_id, "job_id": job_id},
            )
            repairs["batch_member_counted"] += 1
