"""A registered endpoint's pace: its ``rate_limit`` and the pauses its receiver asks for.

An endpoint with ``rate_limit`` r takes a turn every 1/r s. Each attempt to it takes the
next turn as it begins (``delivery_begin.lua`` with ``throttle.lua``): a turn that is now
sends it; a later one is kept for it, and the attempt waits on the due set until then
(*throttled*: its claim dropped, its delivery open, no attempt spent, no slot of its
partner's ``max_inflight_deliveries`` held), so a backlog waits in Redis, never in a
worker; the worker that throttled it asks its due move to run at that turn
(``jobgate.due.wake``), so turns are kept to a few hundredths of a second, not to the
once-a-second pass. A receiver that answers ``429`` or ``503`` with ``Retry-After`` pauses its
endpoint (``pause``): every attempt to it waits until then, not only the one answered.

Everything here is a hint kept in Redis for a short time: a lost key lets one burst
through, nothing is lost or sent twice. Job ``callback_url``s have no endpoint record:
their ``Retry-After`` is only the floor of that delivery's own retry
(``jobgate.webhooks.policy``).
"""

from __future__ import annotations

import time

from jobgate.store import Store

MAX_RATE_LIMIT = 1000  # deliveries per second an endpoint's rate_limit may allow at most
PAUSING = frozenset({429, 503})  # answers whose Retry-After pauses the whole endpoint


def pause(store: Store, endpoint_id: str, seconds: float) -> None:
    """Hold every attempt to the endpoint for ``seconds`` (a longer pause in effect
    stays)."""
    now = time.time()
    store.scripts["endpoint_pause"](
        keys=[store.key("endpoint", endpoint_id, "paused")], args=[now + seconds, now]
    )


def pauses(status_code: int | None, retry_after: float | None) -> bool:
    """Does this answer pause its whole endpoint?"""
    return status_code in PAUSING and bool(retry_after)
