"""Celery task messages for the Redis broker, written in the same transaction as the job.

``send_task`` costs the gateway a kombu publish of its own (a large share of a submit's
CPU) and a second write after the job record, with a window where one exists without the
other. When the broker is the job store's Redis, the gateway instead builds the message
with Celery's own ``create_task_message`` and kombu's serializer, shaped exactly as
kombu's Redis transport stores it (an ``LPUSH`` of a JSON envelope onto the queue's
list, see ``kombu.transport.redis.Channel._put``), and pushes it in the MULTI/EXEC that
creates the record: one round trip, and the job and its message exist together or not
at all. ``tests/integration/test_publish.py`` pins the envelope to what kombu itself
writes.

``state_meta`` does the same for a task's result meta: the start, progress and end
scripts write Celery's ``STARTED``, ``PROCESSING`` and ``SUCCESS`` in the round trip that
records them, byte for byte what Celery would have written with round trips of its own;
``revoked_meta`` gives an admin revoke's end its ``REVOKED``.
"""

from __future__ import annotations

import json
import uuid
from base64 import b64encode
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task, states
from celery.app.task import Context
from celery.exceptions import TaskRevokedError
from celery.utils.saferepr import saferepr
from kombu.serialization import dumps

REPR_MAX = 1024  # Celery's argsrepr_maxsize and kwargsrepr_maxsize


def short_repr(value: Any, maxsize: int = REPR_MAX) -> str:
    """``argsrepr``/``kwargsrepr`` for a message (shown by Flower and ``inspect``): plain
    ``repr`` cut to ``maxsize``. Celery's ``saferepr`` walks the value item by item, which
    showed in profiles of the gateway's submit; JSON-decoded arguments cannot hold a cycle, and one
    nested too deep for ``repr`` falls back to ``saferepr``."""
    try:
        text = repr(value)
    except RecursionError:
        return saferepr(value, maxsize)
    return text if len(text) <= maxsize else text[: maxsize - 3] + "..."


def same_redis(broker_url: str, redis_url: str) -> bool:
    """True when tasks can be queued in the job store's own transactions."""
    # sentinel:// (one master name for all URLs, config.Settings) is the same Redis too.
    return broker_url == redis_url and broker_url.startswith(
        ("redis://", "rediss://", "sentinel://")
    )


def task_message(
    app: Celery,
    name: str,
    task_id: str,
    kwargs: dict[str, Any],
    queue: str,
    args: Sequence[Any] = (),
) -> str:
    """The message ``send_task(name, args, kwargs, task_id=task_id, queue=queue)`` pushes.

    Protocol 2 headers and body come from Celery; the envelope (base64 body, delivery
    info for the default exchange, persistent delivery mode, priority 0) from kombu's
    virtual transport. Priority 0 means the plain queue list, no priority suffix.
    """
    message = app.amqp.create_task_message(
        task_id,
        name,
        args,
        kwargs,
        root_id=task_id,
        reply_to=app.thread_oid,
        ignore_result=None,
        argsrepr=short_repr(args),
        kwargsrepr=short_repr(kwargs),
    )
    content_type, encoding, body = dumps(message.body, serializer="json")
    if isinstance(body, str):
        body = body.encode(encoding)
    properties = {
        **message.properties,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    return json.dumps(
        {
            "body": b64encode(body).decode(),
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": message.headers,
            "properties": properties,
        }
    )


def task_id_of(message: Any) -> str:
    """The task id of a message ``task_message`` shaped (its JSON text, or decoded): the
    ``id`` of Celery's protocol 2 headers; "" for anything else."""
    try:
        envelope = json.loads(message) if isinstance(message, str | bytes) else message
        return str(envelope["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""


def state_meta(
    task: Task, state: str, meta: Any, request: Any = None
) -> tuple[str, str, int | None]:
    """(key, value, expires) that ``task.backend.store_result(id, meta, state,
    request=task.request)`` writes to a Redis result backend (``update_state``, the
    tracer's STARTED and SUCCESS): the encoded meta under ``celery-task-meta-<id>``, kept
    for ``result_expires`` (``tests/integration/test_publish.py`` pins it to Celery's
    write). ``request`` stands for ``task.request`` in a thread that does not run the
    task (Celery's request stack is per thread).
    """
    request = request if request is not None else task.request
    return result_meta(task.backend, request.id, state, meta, request)


def result_meta(
    backend: Any, task_id: str, state: str, meta: Any, request: Any = None
) -> tuple[str, str, int | None]:
    """(key, value, expires) of ``backend.store_result(task_id, meta, state,
    request=request)``, without writing it."""
    full = backend._get_result_meta(
        result=backend.encode_result(meta, state),
        state=state,
        traceback=None,
        request=request,
    )
    full["task_id"] = task_id
    return backend.get_key_for_task(task_id).decode(), backend.encode(full), backend.expires


def revoked_meta(
    app: Celery, record: dict[str, Any], reason: str, queue: str
) -> tuple[str, str, int | None] | None:
    """Celery's ``REVOKED`` meta for job ``record``, as ``backend.mark_as_revoked`` writes
    it for the job's task (its request rebuilt from the record: name, params, worker and
    queue, ``queue`` if the record names none), for the revoke's end script:
    ``AsyncResult`` then says REVOKED as the API does, also for a job that stops at its
    next progress report, where Celery writes nothing. None when Celery writes the job
    tasks' metas itself."""
    if not getattr(app, "meta_in_scripts", False):
        return None
    request = Context(
        id=record["task_id"],
        task=record.get("task"),
        args=[],
        kwargs=record.get("params") or {},
        hostname=record.get("worker") or None,
        retries=0,
        delivery_info={"routing_key": record.get("queue") or queue},
    )
    return result_meta(
        app.backend, record["task_id"], states.REVOKED, TaskRevokedError(reason), request
    )


def script_meta(
    task: Task, state: str, meta: Any, request: Any = None
) -> tuple[str, str, int | None] | None:
    """``state_meta`` for jobgate's scripts to write with the job record; None when Celery
    writes the task's meta itself (``JobgateCelery.meta_in_scripts`` is false)."""
    if not getattr(getattr(task, "app", None), "meta_in_scripts", False):
        return None
    return state_meta(task, state, meta, request)


class CeleryMessenger:
    """The domain's ``Messenger`` over a Celery app (``jobgate.messages``)."""

    def __init__(self, app: Celery, *, jobs_queue: str, webhooks_queue: str, inline: bool) -> None:
        self.app = app
        self.jobs_queue = jobs_queue
        self.webhooks_queue = webhooks_queue
        self.inline = inline

    def envelope(
        self,
        name: str,
        task_id: str,
        *,
        queue: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> str:
        return task_message(self.app, name, task_id, kwargs or {}, queue, args=args)

    def send(
        self,
        name: str,
        *,
        queue: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        task_id: str | None = None,
        countdown: float | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.app.send_task(
            name,
            args=list(args),
            kwargs=kwargs or {},
            queue=queue,
            task_id=task_id,
            countdown=countdown,
            headers=headers,
        )
