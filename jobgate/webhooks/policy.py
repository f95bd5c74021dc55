"""When a webhook is retried: the schedule with its jitter, a receiver's ``Retry-After``
as a floor, and the delivery's state after each attempt (Svix's policy: the configured
delays, then ``failed``)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

JITTER = 0.2  # each retry delay is scaled by a uniform factor in [1 - JITTER, 1 + JITTER]
RETRY_AFTER_CAP = 3600.0  # a receiver's Retry-After is honoured up to one hour


def parse_retry_after(
    value: str | None, cap: float, *, now: datetime | None = None
) -> float | None:
    """Parse ``Retry-After`` (delta-seconds or HTTP-date) to seconds in ``[0, cap]``, else None."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # HTTP-dates are always GMT
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return float(min(max(seconds, 0.0), cap))


def retry_delay(
    attempt: int,
    delays: Sequence[float],
    *,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float | None:
    """Seconds before retry number ``attempt`` (1-based): schedule ±20 % jitter, ≥ Retry-After.

    The jitter is a uniform factor in ``[0.8, 1.2]`` on that retry's own delay (so
    receivers that failed together are not all retried in the same second); a receiver's
    ``Retry-After`` is then a floor. ``None`` once the schedule is exhausted (the delivery
    is then ``failed``).
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if attempt > len(delays):
        return None
    delay = float(delays[attempt - 1]) * (1.0 - JITTER + 2 * JITTER * rng())
    return delay if retry_after is None else max(delay, float(retry_after))


def plan(
    outcome: str, retry_number: int, delays: tuple[float, ...], retry_after: float | None = None
) -> tuple[str, float | None]:
    """The delivery state after an attempt, and the delay before retry ``retry_number``."""
    if outcome in ("delivered", "failed"):
        return outcome, None
    delay = retry_delay(retry_number, delays, retry_after=retry_after)
    return ("failed", None) if delay is None else ("retrying", delay)
