"""Messages sent from Python to a broker other than the store's Redis (RabbitMQ), marked
once the broker has them, so that the sweeper sends again what a dead sender never handed.

With such a broker (``messenger.inline`` false) a script records a job's dispatch or a
delivery's opening, and the message goes out after it: a sender killed between the two
leaves a record with no message. So every such send is followed by a *handed* mark,
written once the publish returned (publisher confirms: the broker then keeps it and gives
a dead consumer's unacknowledged messages back), and ``jobgate.sweeper`` sends again what
has no mark a grace after its record:

- a job: its record's ``send`` is a fresh token for each send of a job not yet started,
  carried in the message (header ``jobgate_send``), and ``sent`` the token the broker
  took. The start script refuses a message whose token is not the record's: a second
  message (sender killed after the publish and before the mark) is then harmless.
- a delivery (first attempt, fan-out step, due retry): its open entry's deadline moves
  from ``Store.handoff_grace`` to ``Store.handed_grace`` ahead; a second message is
  harmless already (the attempt's claim).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from jobgate.failpoints import failpoint
from jobgate.messages import Messenger
from jobgate.store import Store

SEND_HEADER = "jobgate_send"  # the job message's token: only the record's may start it


def send_job(store: Store, messenger: Messenger, record: dict[str, Any]) -> bool:
    """Send a dispatched job's message under a new token and mark it handed; False when
    the job has started, ended or lost its record (its message is the broker's then)."""
    job_id = record["job_id"]
    token = uuid.uuid4().hex[:16]
    if not store.scripts["job_send"](keys=[store.key("job", job_id)], args=[token]):
        return False
    failpoint("job.dispatched")
    messenger.send(
        record["task"],
        kwargs=record.get("params"),
        task_id=record["task_id"],
        queue=record.get("queue") or messenger.jobs_queue,
        headers={SEND_HEADER: token},
    )
    store.scripts["job_sent"](keys=[store.key("job", job_id)], args=[token])
    return True


def unsent(record: dict[str, Any]) -> bool:
    """A live job no broker is known to hold a message of: not started, and its last
    send (if any) not marked handed."""
    return not record.get("started_at") and (
        not record.get("send") or record.get("sent") != record.get("send")
    )


def opening(store: Store, messenger: Messenger, task_id: str) -> None:
    """Mark a delivery open before its message is sent from here: with a broker apart, the
    sweeper sends it again if no handed mark follows within ``handoff_grace``."""
    grace = store.open_grace if messenger.inline else store.handoff_grace
    store.mark_open(task_id, time.time() + grace)


def send_delivery(
    store: Store,
    messenger: Messenger,
    name: str,
    task_id: str,
    *,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Send a delivery's task (an attempt, a fan-out step) on the webhooks queue, then mark
    it handed (a broker apart)."""
    failpoint("delivery.queued")
    messenger.send(name, args=args, kwargs=kwargs, queue=messenger.webhooks_queue, task_id=task_id)
    handed(store, messenger, task_id)


def handed(store: Store, messenger: Messenger, task_id: str) -> None:
    """The broker (not the store's Redis) holds this delivery's message: the sweeper need
    not look at it before ``handed_grace``; an attempt that fails unrecorded brings the
    deadline back (``delivery_release.lua``)."""
    if not messenger.inline:
        store.redis.zadd(store.open_key, {task_id: time.time() + store.handed_grace}, xx=True)
