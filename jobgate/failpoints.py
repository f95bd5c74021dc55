"""Named points where the fault suite breaks a real process (failpoints, as FreeBSD's
``fail(9)`` or TiKV's ``fail-rs``), so a test can kill a worker at one exact step.

Off unless ``JOBGATE_FAILPOINTS`` names some, e.g. ``job.end.before=kill``; the variable
is read once per process and each point fires at most once per process. Actions:
``kill`` SIGKILLs the process group (a whole worker: main process and pool children, or a
whole gunicorn), ``redis_error`` raises ``redis.exceptions.ConnectionError`` there.
"""

from __future__ import annotations

import os
import signal
from functools import cache

from redis.exceptions import ConnectionError as RedisConnectionError

POINTS = (
    "job.started",
    "job.progress",
    "job.end.before",
    "job.end.committed",
    "job.end.after",
    "batch.count.before",
    "delivery.begun",
    "delivery.sent",
    "batch.create.before",
    "job.dispatched",  # a job's message about to be sent to a broker apart (jobgate.handoff)
    "delivery.queued",  # a delivery's message about to be sent from Python
    "delivery.due",  # a due retry taken off the due set, about to be sent from Python
)
ACTIONS = ("kill", "redis_error")
_fired: set[str] = set()


@cache
def configured() -> dict[str, str]:
    """The points ``JOBGATE_FAILPOINTS`` arms, name -> action (checked, read once)."""
    armed: dict[str, str] = {}
    for item in filter(None, os.environ.get("JOBGATE_FAILPOINTS", "").split(",")):
        name, _, action = item.strip().partition("=")
        if name not in POINTS or action not in ACTIONS:
            raise ValueError(
                f"JOBGATE_FAILPOINTS: {item!r} is not <point>=<action> "
                f"(points {', '.join(POINTS)}; actions {', '.join(ACTIONS)})"
            )
        armed[name] = action
    return armed


def failpoint(name: str) -> None:
    """Break here if the fault suite armed ``name`` (a dict lookup otherwise)."""
    action = configured().get(name)
    if action is None or name in _fired:
        return
    _fired.add(name)
    if action == "kill":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    raise RedisConnectionError(f"failpoint {name}: injected Redis error")
