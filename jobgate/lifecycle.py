"""What happens once when a job ends: commit it, record it, tell listeners, queue its webhook.

Called from the worker (task success/failure, ``task_revoked``) and from the gateway's
revoke path. The end is committed to the job's database row first (``jobgate.ends``,
first one wins), then ``Store.finish_job`` records it in Redis with its webhook message,
atomic and first-writer-wins too: whichever path gets there first decides the terminal
state and the others record that same end or nothing. One terminal event per job, even
when ``acks_late`` redelivers a job, a revoke races its completion or Redis loses the end.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from jobgate import batches, ends, handoff
from jobgate.db import Database
from jobgate.events import (
    BATCH_COMPLETED,
    JOB_EVENTS,
    SUBJECTS,
    delivery_call,
    fan_out_task_id,
    job_event,
)
from jobgate.failpoints import failpoint
from jobgate.messages import AUTO_CHAIN, DELIVER_TASK, FAN_OUT_TASK, Messenger
from jobgate.store import Store, as_stored
from jobgate.times import utcnow

log = logging.getLogger(__name__)

# How long the worker keeps trying to record a job's end, tries included (each failed try
# also spends redis-py's own retries, a few seconds): longer than a Sentinel failover
# with its default down-after-milliseconds (30 s) plus the election.
END_RETRY_FOR = 60.0
END_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0) + (5.0,) * 11  # pauses between tries, in order


def finish_job(
    messenger: Messenger,
    store: Store,
    job_id: str,
    status: str,
    celery_meta: tuple[str, str, int | None] | None = None,
    *,
    db: Database | None = None,
    **fields: Any,
) -> bool:
    """Commit a terminal status to ``db`` (the job's row), record it in Redis once and
    fire its side effects; True if this end is the job's. An end committed earlier wins:
    that one is recorded instead, and the answer is False (a job has no row only if made
    outside the gateway). ``celery_meta`` (key, value, expires), from the worker, is
    written with the end when it is this one."""
    ours, in_row = True, False
    if db is not None:
        if "started_at" not in fields and (started := store.job_started_at(job_id)):
            # The run's start goes with the end: an event rebuilt from the row (Redis lost
            # the record) is then the one that was sent.
            fields = {**fields, "started_at": started}
        end = as_stored({"status": status, "finished_at": utcnow(), **fields})
        committed, now = ends.commit_end(db, job_id, end)
        if committed is not None:
            in_row = True
            # Committed by this call, or by an earlier try of this same end.
            same = (committed["status"], committed.get("result")) == (status, end.get("result"))
            ours = now or same
            if not ours:
                celery_meta = None
            status = committed["status"]
            fields = {k: v for k, v in committed.items() if k != "status"}
        failpoint("job.end.committed")
    event = job_event(status)
    ended = store.finish_job(
        job_id,
        status,
        webhook_message=event_message(messenger, "job", job_id, event),
        fan_out_message=fan_out_message(messenger, "job", job_id, event),
        celery_meta=celery_meta,
        committed=in_row,
        **fields,
    )
    if ended is None:
        return False
    failpoint("job.end.after")
    send_dispatched(store, messenger, ended["dispatched"])
    fan = ended.get("fan_out", "")
    if ended["webhook_queued"] or fan == "queued":
        log.info("queued %s for job %s", event, job_id, extra={"job_id": job_id})
    side_effects(messenger, store, ended, webhook_queued=ended["webhook_queued"] or bool(fan))
    return ours


def event_message(
    messenger: Messenger, kind: str, subject_id: str, event: str
) -> tuple[str, str, str] | None:
    """(queue, message, task id) of an event's first delivery attempt, for the script that
    records the end (of a job, of a batch) to push; None when the broker is not the job
    store's Redis (the message is then sent after the end is recorded)."""
    task_id, args, kwargs = delivery_call(kind, subject_id, event, AUTO_CHAIN, 0)
    return _pushed(messenger, DELIVER_TASK, task_id, args, kwargs)


def fan_out_message(
    messenger: Messenger, kind: str, subject_id: str, event: str
) -> tuple[str, str, str] | None:
    """(queue, message, task id) of an event's fan-out step to the partner's endpoints,
    for the script that records the end; None when the broker is not the store's Redis."""
    task_id = fan_out_task_id(kind, subject_id, event)
    return _pushed(messenger, FAN_OUT_TASK, task_id, [kind, subject_id, event], None)


def _pushed(
    messenger: Messenger, name: str, task_id: str, args: list[str], kwargs: dict[str, Any] | None
) -> tuple[str, str, str] | None:
    """(queue, message, task id) of a task on the webhooks queue, for a script to push;
    None when the broker is not the store's Redis."""
    if not messenger.inline:
        return None
    queue = messenger.webhooks_queue
    message = messenger.envelope(name, task_id, queue=queue, args=args, kwargs=kwargs)
    return queue, message, task_id


def finish_job_retrying(
    messenger: Messenger,
    store: Store,
    job_id: str,
    status: str,
    delays: tuple[float, ...] = END_RETRY_DELAYS,
    budget: float = END_RETRY_FOR,
    **fields: Any,
) -> bool:
    """``finish_job`` for the worker, which must not lose a job's end to a Redis or
    database outage.

    The task's message is acknowledged whatever happens here, so a transient error is
    retried, pausing ``delays`` in turn, for up to ``budget`` seconds: longer than a
    failover takes. If a failed try may have recorded the end and only lost the reply,
    the side effects (idempotent) are replayed from the record. Past the budget the end is
    not recorded in Redis, and the sweeper runs the job again; an end committed to the
    database meanwhile is the one that run records.
    """
    deadline = time.monotonic() + budget
    failed_before = False
    for delay in (*delays, None):
        try:
            if finish_job(messenger, store, job_id, status, **fields):
                return True
            if failed_before:
                side_effects(messenger, store, store.job(job_id) or {})
            return False
        except (RedisError, OperationalError, InterfaceError):
            if delay is None or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "recording the end of job %s failed; retrying in %ss",
                job_id,
                delay,
                exc_info=not failed_before,  # one traceback per outage
                extra={"job_id": job_id},
            )
            failed_before = True
            time.sleep(delay)
    return False


def side_effects(
    messenger: Messenger, store: Store, record: dict[str, Any], *, webhook_queued: bool = False
) -> None:
    """Queue the terminal webhook, or the fan-out step to the partner's endpoints for a
    job without a callback (unless the end's own script did either), and count the batch
    member; safe to repeat.

    Repeating is how a crash between recording the end and these effects heals: the
    redelivered message (acks_late) replays this, the delivery task's per-attempt claim
    drops a second copy, and batch counting is idempotent per member.
    """
    status = record.get("status")
    if status not in JOB_EVENTS:
        return
    if not webhook_queued:
        enqueue = enqueue_webhook if record.get("callback_url") else enqueue_fan_out
        enqueue(store, messenger, "job", record["job_id"], job_event(status))
    if record.get("batch_id"):
        count_batch_member(messenger, store, record)


def count_batch_member(messenger: Messenger, store: Store, record: dict[str, Any]) -> None:
    """Count a member's end in its batch; the last one queues ``batch.completed`` (in the
    counting script itself when the broker is the store's Redis)."""
    failpoint("batch.count.before")
    batch_id = record["batch_id"]
    message = event_message(messenger, "batch", batch_id, BATCH_COMPLETED)
    fan = fan_out_message(messenger, "batch", batch_id, BATCH_COMPLETED)
    counted = batches.member_finished(store, record, message, fan)
    if counted == "send":
        enqueue_webhook(store, messenger, "batch", batch_id, BATCH_COMPLETED)
    elif counted == "fan_out":
        enqueue_fan_out(store, messenger, "batch", batch_id, BATCH_COMPLETED)


def enqueue_webhook(
    store: Store,
    messenger: Messenger,
    kind: str,
    subject_id: str,
    event: str,
    chain: str = AUTO_CHAIN,
) -> None:
    """Queue the first attempt of ``event`` (of ``chain``) on the webhooks queue, marked
    open first so that a crash before the send leaves it for the sweeper."""
    task_id, args, kwargs = delivery_call(kind, subject_id, event, chain, 0)
    handoff.opening(store, messenger, task_id)
    handoff.send_delivery(store, messenger, DELIVER_TASK, task_id, args=args, kwargs=kwargs)
    log.info("queued %s for %s %s", event, kind, subject_id, extra={"job_id": subject_id})


def enqueue_fan_out(
    store: Store, messenger: Messenger, kind: str, subject_id: str, event: str
) -> None:
    """Queue the fan-out step of ``event`` (marked open first), unless the partner's
    mirror says it has no endpoint (a disabled one counts: it gets held messages)."""
    record_key = SUBJECTS[kind].record_key(store, subject_id)
    partner_id = store.redis.hget(record_key, "partner_id")
    partner_key = store.key("partner", str(partner_id))
    if not partner_id or store.redis.hget(partner_key, "endpoints") == "0":
        return
    task_id = fan_out_task_id(kind, subject_id, event)
    handoff.opening(store, messenger, task_id)
    handoff.send_delivery(store, messenger, FAN_OUT_TASK, task_id, args=[kind, subject_id, event])
    log.info("queued the fan-out of %s for %s %s", event, kind, subject_id)


def queue_job(
    store: Store, messenger: Messenger, record: dict[str, Any], *, queued_limit: int = 0
) -> None:
    """Store a job whose row is committed (``jobgate.outbox``) and queue it in its
    partner's queue (``jobgate/scripts/dispatch.lua``): a submit, and a job restored
    after Redis lost it. Raises
    ``jobgate.store.QueueFull`` (nothing stored) past ``queued_limit`` waiting jobs.

    With the broker on the job store's Redis the job's Celery message is stored with it
    and pushed by the script that dispatches it, so a job and its message are never
    apart. Otherwise the jobs a step dispatches are sent right after it
    (``send_dispatched``).
    """
    message = job_message(messenger, record)
    dispatched = store.create_job(record, message, queued_limit=queued_limit, committed=True)
    send_dispatched(store, messenger, dispatched)


def job_message(messenger: Messenger, record: dict[str, Any]) -> tuple[str, str] | None:
    """(queue, Celery message) of a job's task, for its dispatch to push; None when the
    broker is not the store's Redis."""
    if not messenger.inline:
        return None
    queue = record.get("queue") or messenger.jobs_queue
    return queue, messenger.envelope(
        record["task"], record["task_id"], queue=queue, kwargs=record.get("params")
    )


def dispatch(store: Store, messenger: Messenger, partners: tuple[str, ...] = ()) -> int:
    """The dispatcher's tick: due delayed jobs, and whatever the window has room for
    (``partners`` get their turn back after their limits changed); how many were sent
    from here (another broker)."""
    ids = store.dispatch(partners)
    send_dispatched(store, messenger, ids)
    return len(ids)


def send_dispatched(store: Store, messenger: Messenger, job_ids: list[str]) -> None:
    """Send the Celery message of jobs dispatched without one (a broker other than the
    store's Redis), marked handed once sent (``jobgate.handoff``). A send that fails (the
    broker or Redis unreachable) is left unmarked: the sweeper sends it again, as it does
    for a sender that died, so an accepted job is never ended for an outage."""
    if not job_ids:
        return
    for job_id, record in zip(job_ids, store.jobs(job_ids), strict=True):
        if record is None:
            continue
        try:
            handoff.send_job(store, messenger, record)
        except Exception:  # noqa: BLE001 - the broker's own errors vary by transport
            log.warning(
                "job %s: its message could not be sent; the sweeper sends it again",
                job_id,
                exc_info=True,
                extra={"job_id": job_id},
            )
