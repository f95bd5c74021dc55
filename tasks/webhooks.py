"""The ``jobgate.deliver_webhook`` task: a thin wrapper over ``jobgate.attempts``."""

from __future__ import annotations

from typing import Any

from celery import Celery

from jobgate.attempts import run_attempt
from jobgate.messages import AUTO_CHAIN, DELIVER_TASK


def register(app: Celery) -> Any:
    """Register ``jobgate.deliver_webhook`` on ``app`` (each app built by make_celery)."""

    # shared=False: only this app gets the task (make_celery builds several apps).
    @app.task(name=DELIVER_TASK, bind=True, ignore_result=True, acks_late=True, shared=False)
    def deliver_webhook(self: Any, kind: str, subject_id: str, event: str, retry: int = 0,
                        chain: str = AUTO_CHAIN) -> dict[str, Any] | None:
        """Deliver one webhook attempt (see jobgate.attempts)."""
        app = self.app
        return run_attempt(app.settings, app.store, app.messenger, kind, subject_id, event,
                           retry=retry, chain=chain, node=self.request.hostname or "")

    return deliver_webhook
