"""The Celery apps ``bench.ceiling`` drains: jobgate's settings, or Celery's defaults.

Both carry one task, ``bench.noop``, that does nothing, so what a worker spends on it is
Celery's own cost per task. ``celery -A bench.ceiling_app worker`` picks the app named
by ``BENCH_CEILING_MODE`` (``jobgate`` by default).
"""

from __future__ import annotations

import os

from celery import Celery

from config import Settings
from tasks.app import make_celery

MODES = {
    "jobgate": "jobgate's Celery settings: results, track_started, result_extended, "
    "acks_late + reject_on_worker_lost, prefetch 1",
    "celery defaults": "no result backend, ack on receipt, prefetch 4",
}


def noop() -> None:
    """Nothing: the worker's whole cost for this task is Celery's."""


def build(mode: str, settings: Settings | None = None) -> Celery:
    """The app for ``mode`` (a key of MODES), with ``bench.noop`` registered."""
    settings = settings or Settings.from_env()
    if mode == "jobgate":
        app = make_celery(settings)
    elif mode == "celery defaults":
        app = Celery("ceiling", broker=settings.broker_url, set_as_current=False)
    else:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    app.task(name="bench.noop", shared=False)(noop)
    return app


app = build(os.environ.get("BENCH_CEILING_MODE", "jobgate"))
