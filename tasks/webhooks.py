"""The ``jobgate.deliver_webhook`` task: a thin wrapper over ``jobgate.webhooks.attempt``."""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

from celery import Celery, Task

from jobgate.messages import AUTO_CHAIN, DELIVER_TASK, FAN_OUT_TASK
from jobgate.webhooks.attempt import Call, Sender, run_attempt
from jobgate.webhooks.fanout import fan_out
from jobgate.webhooks.operational import after_attempt

# Celery's tracer reprs a task's return value whether or not it logs it (visible in
# profiles of the delivery process at WARNING): the attempt is returned only when its
# line is logged.
_TRACE_LOG = logging.getLogger("celery.app.trace")


class DeliveryTask(Task):
    """The delivery task's class: one result backend per process, not per thread.

    Celery keeps ``app.backend`` per thread; in the gevent delivery pool every task runs
    in a new greenlet, which counts as a new thread, so each delivery would build a
    ``RedisBackend`` of its own, at a cost in CPU per delivery, only to be told its result is
    ignored. The delivery task never waits on a result, so one shared instance is safe.
    """

    _process_backend: Any = None
    _creating = threading.Lock()

    @property
    def backend(self) -> Any:
        if self._process_backend is None:
            with self._creating:
                if self._process_backend is None:
                    # The first one the app gives (per thread: this greenlet's), kept for all.
                    self._process_backend = self.app.backend
        return self._process_backend

    @backend.setter
    def backend(self, value: Any) -> None:
        self._process_backend = value


def register(app: Celery) -> Any:
    """Register ``jobgate.deliver_webhook`` and ``jobgate.fan_out`` on ``app`` (each app
    built by make_celery)."""

    # shared=False: only this app gets the task (make_celery builds several apps).
    @app.task(
        name=DELIVER_TASK,
        bind=True,
        ignore_result=True,
        acks_late=True,
        shared=False,
        base=DeliveryTask,
    )
    def deliver_webhook(
        self: Any, kind: str, subject_id: str, event: str, retry: int = 0, chain: str = AUTO_CHAIN
    ) -> dict[str, Any] | None:
        """Deliver one webhook attempt (see jobgate.webhooks.attempt); the recorded attempt goes
        to the worker's log at INFO, without the request and the answer (the message log's:
        an endpoint's own headers may hold a receiver's credentials)."""
        app = self.app
        sender = Sender(
            app.settings,
            app.store,
            app.messenger,
            partner_of=app.partners.get,
            endpoints=app.endpoints,
            node=self.request.hostname or "",
            operational=partial(after_attempt, app.endpoints, app.messenger),
        )
        attempt = run_attempt(sender, Call(kind, subject_id, event, retry, chain))
        if attempt is None or not _TRACE_LOG.isEnabledFor(logging.INFO):
            return None
        return {k: v for k, v in attempt.items() if k not in ("request", "response")}

    @app.task(name=FAN_OUT_TASK, bind=True, ignore_result=True, acks_late=True, shared=False)
    def fan_out_event(self: Any, kind: str, subject_id: str, event: str) -> list[str]:
        """Queue ``event`` to every matching endpoint of the subject's partner, once
        (see jobgate.webhooks.fanout.fan_out)."""
        app = self.app
        return fan_out(app.store, app.messenger, app.endpoints, kind, subject_id, event)

    return deliver_webhook
