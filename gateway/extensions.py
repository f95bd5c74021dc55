"""The app's services, built once in ``create_app`` and reached through ``services()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import current_app

from config import Settings
from gateway.store import Store

if TYPE_CHECKING:
    from tasks.app import JobgateCelery


@dataclass
class Services:
    settings: Settings
    store: Store
    celery: JobgateCelery
    allowlist: tuple[Any, ...] = field(default_factory=tuple)


def services() -> Services:
    """The running app's settings, job store and Celery app."""
    return current_app.extensions["jobgate"]
