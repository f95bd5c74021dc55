"""A Celery execution strategy that runs a task's messages without Celery's request and
tracer: the delivery pool's, where that wrapping cost more than the webhook's HTTP send.

Celery's default strategy builds a ``Request`` per message, and its tracer runs the task
inside signals, state bookkeeping and a result backend call (ignored here). For a task
whose class names this strategy (``Strategy = "tasks.direct:strategy"``) and defines
``direct(node, *args, **kwargs)``, each message is decoded, run by ``direct`` in the
worker's own pool, and acknowledged once it returns or raises (as ``acks_late``: a raised
error is logged; jobgate's open deliveries and the sweeper cover what it left undone). A
run ended by a ``BaseException`` (its greenlet killed) leaves its message unacknowledged,
for the broker to restore. Messages taken and not yet acknowledged are in ``held``, which
``tasks.upkeep`` keeps fresh in the broker's unacked index.

What is given up: task events, task signals, ``inspect active``, ETAs, rate limits and
time limits. Celery's own strategy is kept where one of those is wanted or the pool runs
tasks in other processes: a worker sending task events (``-E``), an autoscaled one
(``--autoscale``: its autoscaler counts each request), one with a time limit, or any pool
but gevent, eventlet, threads and solo. The choice is made when the consumer starts
(again after a broker reconnect): events turned on later by remote control reach the
delivery pool from its next start.

Shutdown: a warm one lets running deliveries finish, as before. A cold one (SIGQUIT) does
too, where Celery would cancel its requests: each delivery is bounded by the webhook
timeout, and ending it mid-send would only have it sent again. SIGKILL stops it at once
(the broker then restores its messages after the visibility timeout).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.strategy import default

log = logging.getLogger(__name__)

# Pools that run a task in the worker's own process (a prefork pool pickles its work).
IN_PROCESS_POOLS = frozenset(
    {
        "celery.concurrency.gevent",
        "celery.concurrency.eventlet",
        "celery.concurrency.thread",
        "celery.concurrency.solo",
    }
)

# Messages taken by this strategy and not acknowledged yet, in this process.
held: set[Any] = set()


def sends_task_events(events: Any) -> bool:
    """Whether a consumer's event dispatcher sends task events: an enabled one may send
    only worker events (heartbeats, gossip), its ``groups`` then being ``{"worker"}``."""
    return bool(events and events.enabled and (not events.groups or "task" in events.groups))


def runs_direct(pool: Any, events: Any) -> bool:
    """Whether a worker with ``pool`` and event dispatcher ``events`` takes the direct
    path: its pool runs tasks in-process, with no time limit (which Celery's request
    handles), and it sends no task events."""
    return (
        type(pool).__module__ in IN_PROCESS_POOLS
        and not getattr(pool, "timeout", None)
        and not sends_task_events(events)
    )


def strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's strategy hook: the direct handler, or Celery's default (see above)."""
    celery_default = default(task, app, consumer, **options)
    if not runs_direct(consumer.pool, consumer.event_dispatcher):
        return celery_default
    node = consumer.hostname or ""
    apply = consumer.pool.apply_async
    errors = consumer.connection_errors

    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> None:
        if callbacks:  # an autoscaler's, which take Celery's request
            return celery_default(message, body, ack, reject, callbacks)
        args, kwargs, _embed = message.decode()  # Celery's protocol 2 body
        held.add(message)
        apply(_run, (task, node, message, ack, errors, args, kwargs), callback=_ignore)
        return None

    return on_message


def _run(task: Any, node: str, message: Any, ack: Any, errors: Any, args: Any, kwargs: Any) -> None:
    try:
        task.direct(node, *args, **kwargs)
    except Exception:
        log.exception("task %s[%s] raised", task.name, message.headers.get("id"))
    except BaseException:  # its greenlet killed: unacknowledged, for the broker to restore
        held.discard(message)
        raise
    held.discard(message)
    ack(log, errors)  # what Celery's request does: message.ack_log_error(logger, errors)


def _ignore(_: Any) -> None:
    """The pool's result callback: nothing is returned anywhere."""
