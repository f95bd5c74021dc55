"""Time as jobgate writes and reads it: ISO 8601 UTC with milliseconds and a ``Z`` in every
record, answer and webhook; aware datetimes for the database (SQLite keeps no zone, so a
naive time read back from it is UTC: jobgate writes UTC only)."""

from __future__ import annotations

from datetime import UTC, datetime


def format_time(value: datetime) -> str:
    """An aware time as jobgate writes every time: ISO 8601 UTC with milliseconds and a Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def utcnow() -> str:
    """Now, as jobgate writes times."""
    return format_time(datetime.now(UTC))


def now_utc() -> datetime:
    """Now, as an aware datetime (for the database)."""
    return datetime.now(UTC)


def from_timestamp(seconds: float) -> str:
    """A Unix time as jobgate writes times."""
    return format_time(datetime.fromtimestamp(seconds, UTC))


def aware(value: datetime) -> datetime:
    """A time read from the database, with its zone (UTC when it has none)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def iso_time(value: datetime | None) -> str | None:
    """A database time as jobgate writes times (None stays None)."""
    return None if value is None else format_time(aware(value))


def parse_time(text: str) -> datetime:
    """A time as jobgate writes it (``...Z``), as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def epoch(text: str) -> float:
    """Seconds since the epoch of a time as jobgate writes it."""
    return parse_time(text).timestamp()
