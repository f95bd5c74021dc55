"""What happens once when a job ends: record it, tell listeners, queue its webhook.

Called from the worker (task success/failure, ``task_revoked``) and from the gateway's
revoke path. ``Store.finish_job`` is atomic and first-writer-wins, so whichever path gets
there first records the terminal state and the others do nothing: one terminal event per
job, even when ``acks_late`` redelivers a job or a revoke races its completion.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import Any

from celery import Celery
from redis.exceptions import RedisError

from gateway.store import Store
from tasks.publish import same_redis, task_message

log = logging.getLogger(__name__)

EVENT_TYPES = {"SUCCESS": "job.succeeded", "FAILURE": "job.failed", "REVOKED": "job.revoked"}
DELIVER_TASK = "jobgate.deliver_webhook"


def webhook_id(subject_id: str, event: str) -> str:
    """One id per (job or batch, event): the same on every retry and redelivery."""
    return "msg_" + hashlib.sha256(f"{subject_id}:{event}".encode()).hexdigest()[:32]


def finish_job(app: Celery, store: Store, job_id: str, status: str, **fields: Any) -> bool:
    """Record a terminal status once and fire its side effects; False if already ended."""
    ended = store.finish_job(job_id, status, webhook_message=webhook_message(app, job_id, status),
                             **fields)
    if ended is None:
        return False
    if ended["webhook_queued"]:
        log.info("queued %s for job %s", EVENT_TYPES[status], job_id, extra={"job_id": job_id})
    side_effects(app, store, ended, webhook_queued=ended["webhook_queued"])
    return True


def webhook_message(app: Celery, job_id: str, status: str) -> tuple[str, str] | None:
    """(queue, message) delivering the job's terminal event, for ``Store.finish_job`` to push
    in the script that records the end; None when the broker is not the job store's Redis
    (the message is then sent with ``send_task`` after the end is recorded)."""
    settings = getattr(app, "settings", None)
    if settings is None or not same_redis(settings.broker_url, settings.redis_url):
        return None
    queue = app.conf.get("jobgate_queue_webhooks", "webhooks")
    return queue, task_message(app, DELIVER_TASK, str(uuid.uuid4()), {}, queue,
                               args=["job", job_id, EVENT_TYPES[status]])


def finish_job_retrying(app: Celery, store: Store, job_id: str, status: str,
                        delays: tuple[float, ...] = (0.5, 1.0, 2.0), **fields: Any) -> bool:
    """``finish_job`` for the worker, which must not lose a job's end to a Redis blip.

    The task's message is acknowledged whatever happens here, so a transient error is
    retried. If a failed try may have recorded the end and only lost the reply, the side
    effects (idempotent) are replayed from the record.
    """
    failed_before = False
    for delay in (*delays, None):
        try:
            if finish_job(app, store, job_id, status, **fields):
                return True
            if failed_before:
                side_effects(app, store, store.job(job_id) or {})
            return False
        except RedisError:
            if delay is None:
                raise
            failed_before = True
            log.warning("recording the end of job %s failed; retrying in %ss", job_id, delay,
                        exc_info=True, extra={"job_id": job_id})
            time.sleep(delay)
    return False


def side_effects(app: Celery, store: Store, record: dict[str, Any], *,
                 webhook_queued: bool = False) -> None:
    """Queue the terminal webhook (unless the end's own script did) and count the batch
    member; safe to repeat.

    Repeating is how a crash between recording the end and these effects heals: the
    redelivered message (acks_late) replays this, the delivery task's per-attempt claim
    drops a second copy, and batch counting is idempotent per member.
    """
    status = record.get("status")
    if status not in EVENT_TYPES:
        return
    if record.get("callback_url") and not webhook_queued:
        enqueue_webhook(app, store, record["job_id"], EVENT_TYPES[status])
    if record.get("batch_id"):
        on_batch_member_finished(app, store, record)


def enqueue_webhook(app: Celery, store: Store, subject_id: str, event: str,
                    kind: str = "job") -> None:
    """Queue the delivery of ``event`` on the webhooks queue (never blocks a job worker)."""
    conf = app.conf
    app.send_task(DELIVER_TASK, args=[kind, subject_id, event],
                  queue=conf.get("jobgate_queue_webhooks", "webhooks"))
    log.info("queued %s for %s %s", event, kind, subject_id, extra={"job_id": subject_id})


def on_batch_member_finished(app: Celery, store: Store, record: dict[str, Any]) -> None:
    """Count the member's end in its batch (the last one fires ``batch.completed``)."""
    from gateway.batches import member_finished  # gateway.batches imports this module

    member_finished(app, store, record)
