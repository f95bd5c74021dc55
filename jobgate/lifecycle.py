"""What happens once when a job ends: record it, tell listeners, queue its webhook.

Called from the worker (task success/failure, ``task_revoked``) and from the gateway's
revoke path. ``Store.finish_job`` is atomic and first-writer-wins, so whichever path gets
there first records the terminal state and the others do nothing: one terminal event per
job, even when ``acks_late`` redelivers a job or a revoke races its completion.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from redis.exceptions import RedisError

from jobgate import batches
from jobgate.events import BATCH_COMPLETED, JOB_EVENTS, job_event
from jobgate.messages import DELIVER_TASK, Messenger
from jobgate.store import Store

log = logging.getLogger(__name__)


def finish_job(messenger: Messenger, store: Store, job_id: str, status: str,
               **fields: Any) -> bool:
    """Record a terminal status once and fire its side effects; False if already ended."""
    ended = store.finish_job(job_id, status,
                             webhook_message=webhook_message(messenger, job_id, status),
                             **fields)
    if ended is None:
        return False
    if ended["webhook_queued"]:
        log.info("queued %s for job %s", job_event(status), job_id, extra={"job_id": job_id})
    side_effects(messenger, store, ended, webhook_queued=ended["webhook_queued"])
    return True


def webhook_message(messenger: Messenger, job_id: str,
                    status: str) -> tuple[str, str] | None:
    """(queue, message) delivering the job's terminal event, for ``Store.finish_job`` to push
    in the script that records the end; None when the broker is not the job store's Redis
    (the message is then sent after the end is recorded)."""
    if not messenger.inline:
        return None
    queue = messenger.webhooks_queue
    return queue, messenger.envelope(DELIVER_TASK, str(uuid.uuid4()), queue=queue,
                                     args=["job", job_id, job_event(status)])


def finish_job_retrying(messenger: Messenger, store: Store, job_id: str, status: str,
                        delays: tuple[float, ...] = (0.5, 1.0, 2.0), **fields: Any) -> bool:
    """``finish_job`` for the worker, which must not lose a job's end to a Redis blip.

    The task's message is acknowledged whatever happens here, so a transient error is
    retried. If a failed try may have recorded the end and only lost the reply, the side
    effects (idempotent) are replayed from the record.
    """
    failed_before = False
    for delay in (*delays, None):
        try:
            if finish_job(messenger, store, job_id, status, **fields):
                return True
            if failed_before:
                side_effects(messenger, store, store.job(job_id) or {})
            return False
        except RedisError:
            if delay is None:
                raise
            failed_before = True
            log.warning("recording the end of job %s failed; retrying in %ss", job_id, delay,
                        exc_info=True, extra={"job_id": job_id})
            time.sleep(delay)
    return False


def side_effects(messenger: Messenger, store: Store, record: dict[str, Any], *,
                 webhook_queued: bool = False) -> None:
    """Queue the terminal webhook (unless the end's own script did) and count the batch
    member; safe to repeat.

    Repeating is how a crash between recording the end and these effects heals: the
    redelivered message (acks_late) replays this, the delivery task's per-attempt claim
    drops a second copy, and batch counting is idempotent per member.
    """
    status = record.get("status")
    if status not in JOB_EVENTS:
        return
    if record.get("callback_url") and not webhook_queued:
        enqueue_webhook(messenger, record["job_id"], job_event(status))
    if record.get("batch_id") and batches.member_finished(store, record):
        batch = batches.batch_record(store, record["batch_id"]) or {}
        if batch.get("callback_url"):
            enqueue_webhook(messenger, record["batch_id"], BATCH_COMPLETED, kind="batch")


def enqueue_webhook(messenger: Messenger, subject_id: str, event: str,
                    kind: str = "job") -> None:
    """Queue the delivery of ``event`` on the webhooks queue (never blocks a job worker)."""
    messenger.send(DELIVER_TASK, args=[kind, subject_id, event],
                   queue=messenger.webhooks_queue)
    log.info("queued %s for %s %s", event, kind, subject_id, extra={"job_id": subject_id})
