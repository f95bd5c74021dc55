"""The app's services, built once in ``create_app`` and reached through ``services()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import current_app

from config import Settings
from jobgate.db import Database
from jobgate.endpoints import Endpoints
from jobgate.partners import Partners
from jobgate.store import Store

if TYPE_CHECKING:
    from tasks.app import JobgateCelery
    from tasks.publish import CeleryMessenger


@dataclass
class Services:
    settings: Settings
    store: Store
    db: Database
    partners: Partners
    celery: JobgateCelery
    allowlist: tuple[Any, ...] = field(default_factory=tuple)
    endpoints: Endpoints | None = None
    # Client addresses whose authentication failed in this process lately, and until when
    # (monotonic): only their requests read the count of failures (gateway.auth).
    suspects: dict[str, float] = field(default_factory=dict)

    @property
    def registry(self) -> Endpoints:
        """Registered webhook endpoints (built with the partners' store and database)."""
        if self.endpoints is None:
            self.endpoints = Endpoints(
                self.store,
                self.db,
                self.partners,
                disable_after=self.settings.endpoint_disable_after,
                messenger=self.messenger,
            )
        return self.endpoints

    @property
    def messenger(self) -> CeleryMessenger:
        """How the domain queues tasks from the gateway (see jobgate.messages)."""
        return self.celery.messenger


def services() -> Services:
    """The running app's settings, job store, database, partners and Celery app."""
    return current_app.extensions["jobgate"]
