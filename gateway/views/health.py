"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from gateway.extensions import services
from gateway.metrics import database_answers
from gateway.openapi import ok, operation
from gateway.schemas import HealthSchema
from jobgate.archive import lag as archive_lag

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@operation("Process is alive", ok(200, "Alive", HealthSchema), tag="operations", secured=False)
def healthz():
    """The process answers; says nothing about Redis or workers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@operation(
    "Redis reachable and a worker alive; database and archive lag reported",
    {**ok(200, "Ready", HealthSchema), **ok(503, "Not ready", HealthSchema)},
    tag="operations",
    secured=False,
)
def readyz():
    """Ready when Redis answers and at least one worker gave a sign of life recently.

    Workers mark themselves alive every ``visibility_timeout / 10`` s (``tasks.upkeep``,
    by Redis's clock); one counts for ``Settings.worker_alive_for`` s after that, so a
    worker busy for a moment does not take the gateway out of its load balancer, as a
    broadcast ping with a 1 s timeout did. Only when none counts is that ping asked, for
    workers of an older release during a rolling upgrade.

    The database and the archive lag are reported, not required: with the database down
    jobs are still taken, run and delivered, and archiving catches up when it returns
    (``status`` says ``degraded`` meanwhile).
    """
    svc = services()
    checks: dict[str, Any] = {"redis": False, "workers": 0}
    try:
        checks["redis"] = bool(svc.store.redis.ping())
        checks["workers"] = svc.store.live_workers(svc.settings.worker_alive_for)
        if not checks["workers"]:
            # Workers of a release without the set (gateways upgraded first): ask them.
            checks["workers"] = len(svc.celery.control.ping(timeout=1.0) or [])
        backlog, lag = archive_lag(svc.store)
        checks["archive_backlog"], checks["archive_lag_seconds"] = backlog, round(lag, 3)
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        checks["error"] = type(exc).__name__
    checks["database"] = database_answers(svc)
    ready = checks["redis"] and checks["workers"] > 0
    status = "unavailable" if not ready else ("ready" if checks["database"] else "degraded")
    return jsonify({"status": status, "checks": checks}), (200 if ready else 503)
