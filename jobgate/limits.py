"""Per-partner limits: their names, their defaults (settings) and a partner's own values.

One place for the concept: the partner routes show and change them, the gateway enforces
the ones at its door, and the partner's Redis mirror carries the ones Lua scripts read:
the dispatcher's (``weight``, ``max_running_jobs``) and the delivery attempt's
(``max_inflight_deliveries``). A value of 0 switches a limit off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config import Settings

# limit -> the setting that holds its default (None: a fixed default of its own)
DEFAULTS: dict[str, str | None] = {
    "max_running_jobs": "max_running_jobs",
    "max_queued_jobs": "max_queued_jobs",
    "submit_per_minute": "rate_limit",
    "max_open_streams": "max_open_streams",
    "max_endpoints": "max_endpoints",
    "max_inflight_deliveries": "max_inflight_deliveries",
    "weight": None,
}
FIXED = {"weight": 1}
HIGHEST = {"weight": 100}  # any other limit: up to 10 000 000
# Limits scripts read from the partner's mirror (jobgate/scripts/dispatch.lua; inflight.lua,
# whose callers pass the default along).
MIRRORED = ("max_running_jobs", "weight", "max_inflight_deliveries")


def defaults(settings: Settings) -> dict[str, int]:
    """Every limit's default under ``settings``."""
    return {
        name: int(getattr(settings, attr)) if attr else FIXED[name]
        for name, attr in DEFAULTS.items()
    }


def effective(settings: Settings, own: Mapping[str, Any] | None) -> dict[str, int]:
    """Every limit's value for a partner whose own values are ``own`` (unset: default)."""
    values = defaults(settings)
    for name, value in (own or {}).items():
        if name in values and value is not None:
            values[name] = int(value)
    return values


def check(changes: Mapping[str, Any]) -> dict[str, list[str]]:
    """Errors by limit name for a change (``None`` resets a limit to its default)."""
    errors: dict[str, list[str]] = {}
    for name, value in changes.items():
        if name not in DEFAULTS:
            errors[name] = [f"Unknown limit. Known: {', '.join(DEFAULTS)}."]
        elif value is None:
            continue
        elif isinstance(value, bool) or not isinstance(value, int):
            errors[name] = ["Must be a whole number or null (the default)."]
        elif not (1 if name == "weight" else 0) <= value <= HIGHEST.get(name, 10_000_000):
            low = 1 if name == "weight" else 0
            errors[name] = [f"Must be from {low} to {HIGHEST.get(name, 10_000_000)}."]
    return errors
