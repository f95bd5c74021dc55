"""How the domain queues Celery tasks without importing the Celery app: a ``Messenger``.

The worker and the gateway each hand the domain a messenger built from their Celery app
(``tasks.publish.CeleryMessenger``). When the broker is the job store's own Redis the
messenger is ``inline``: the domain writes a task's broker message inside its own Lua
scripts and transactions (the job and its message, a job's end and its webhook), so the
two exist together or not at all. With another broker (RabbitMQ) the message is sent
after the script, and ``jobgate.handoff`` marks it handed once the broker has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

DELIVER_TASK = "jobgate.deliver_webhook"
FAN_OUT_TASK = "jobgate.fan_out"  # an event to every matching endpoint of its partner
AUTO_CHAIN = "auto"  # the retry chain an event's first delivery starts; redeliveries get their own


class Messenger(Protocol):
    """Queues Celery tasks for the domain."""

    inline: bool  # envelopes can be pushed in the store's own scripts (same Redis)
    jobs_queue: str
    webhooks_queue: str

    def envelope(
        self,
        name: str,
        task_id: str,
        *,
        queue: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> str:
        """The broker message ``send`` would push, as the Redis list entry (inline only)."""
        ...

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
        """Publish the task through the broker (``countdown`` s from now), with ``headers``
        added to the message's; returns once the broker confirmed it (RabbitMQ: publisher
        confirms)."""
        ...
